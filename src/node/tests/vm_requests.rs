//! VM requests through the node's controller: role policy, bad input refused with nothing
//! created, definitions persisted across a restart, and a VM's disk protected from deletion.
//! Needs no KVM: nothing here starts a guest.

use control::{Actor, ErrorCode, Reply, Request, Role, Via};
use node::{Node, NodeConfig};

fn actor(role: Role) -> Actor {
    Actor {
        user: format!("{role:?}").to_lowercase(),
        role,
        via: Via::Api,
    }
}

fn cfg(dir: &std::path::Path) -> NodeConfig {
    let mut cfg = NodeConfig::new(dir.join("data"));
    cfg.disk_count = 2;
    cfg.disk_size_bytes = 128 << 20;
    cfg.api_listen = None;
    cfg
}

fn create(name: &str, vcpus: u8, mem: u64, disks: &[&str], kernel: &str) -> Request {
    Request::VmCreate {
        name: name.into(),
        vcpus,
        memory_mib: mem,
        disks: disks.iter().map(|d| d.to_string()).collect(),
        kernel: kernel.into(),
        cmdline: Some("hello".into()),
        nics: Vec::new(),
    }
}

async fn vm_names(ctl: &std::sync::Arc<dyn control::Controller>) -> Vec<String> {
    match ctl
        .execute(actor(Role::ReadOnly), Request::VmList)
        .await
        .unwrap()
    {
        Reply::Vms(v) => v.into_iter().map(|v| v.name).collect(),
        r => panic!("{r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_roles_bad_input_persistence_and_busy_disks() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("kernel.elf");
    std::fs::write(&kernel, b"\x7fELF not really").unwrap();
    let k = kernel.to_str().unwrap();
    let n = Node::start(cfg(dir.path())).await.unwrap();
    let ctl = n.controller();
    ctl.execute(
        actor(Role::Operator),
        Request::VdiskCreate {
            name: "d1".into(),
            size_bytes: 64 << 20,
        },
    )
    .await
    .unwrap();

    // Read-only may not create, start, stop, pause, resume or delete.
    for req in [
        create("vm1", 1, 128, &["d1"], k),
        Request::VmStart { name: "vm1".into() },
        Request::VmStop {
            name: "vm1".into(),
            force: true,
            timeout_ms: None,
        },
        Request::VmPause { name: "vm1".into() },
        Request::VmResume { name: "vm1".into() },
        Request::VmDelete { name: "vm1".into() },
    ] {
        let e = ctl
            .execute(actor(Role::ReadOnly), req.clone())
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden, "{req:?}");
    }

    // Bad input: clear error, nothing created.
    let missing = dir.path().join("nope.elf");
    for (req, code, words) in [
        (
            create("vm1", 1, 128, &["ghost"], k),
            ErrorCode::NotFound,
            "ghost",
        ),
        (
            create("vm1", 0, 128, &["d1"], k),
            ErrorCode::InvalidArgument,
            "vCPU",
        ),
        (
            create("vm1", 1, 1 << 40, &["d1"], k),
            ErrorCode::InvalidArgument,
            "memory",
        ),
        (
            create("vm1", 1, 128, &["d1"], missing.to_str().unwrap()),
            ErrorCode::InvalidArgument,
            "nope.elf",
        ),
        (
            create("vm1", 1, 128, &["d1"], dir.path().to_str().unwrap()),
            ErrorCode::InvalidArgument,
            "regular file",
        ),
        (
            create("bad name", 1, 128, &["d1"], k),
            ErrorCode::InvalidArgument,
            "name",
        ),
    ] {
        let e = ctl
            .execute(actor(Role::Operator), req.clone())
            .await
            .unwrap_err();
        assert_eq!(e.code, code, "{req:?}: {e:?}");
        assert!(e.message.contains(words), "{req:?}: {}", e.message);
    }
    assert!(vm_names(&ctl).await.is_empty());
    assert!(!dir.path().join("data/vms.json").exists());

    // Operator creates; read-only may see it and read its (empty) console.
    let r = ctl
        .execute(actor(Role::Operator), create("vm1", 2, 64, &["d1"], k))
        .await
        .unwrap();
    assert!(
        matches!(r, Reply::Vm(ref v) if v.state == "defined" && v.vcpus == 2),
        "{r:?}"
    );
    let e = ctl
        .execute(actor(Role::Operator), create("vm1", 1, 64, &["d1"], k))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::AlreadyExists);
    let r = ctl
        .execute(actor(Role::ReadOnly), Request::VmGet { name: "vm1".into() })
        .await
        .unwrap();
    assert!(matches!(r, Reply::Vm(ref v) if v.disks == ["d1"]), "{r:?}");
    let r = ctl
        .execute(
            actor(Role::ReadOnly),
            Request::VmConsole {
                name: "vm1".into(),
                max_bytes: None,
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(r, Reply::Console(ref c) if c.total_bytes == 0),
        "{r:?}"
    );
    // Stopping a VM that never ran is a conflict, not a crash.
    let e = ctl
        .execute(
            actor(Role::Operator),
            Request::VmStop {
                name: "vm1".into(),
                force: false,
                timeout_ms: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict, "{e:?}");

    // The VM's disk cannot be deleted while the VM exists.
    let e = ctl
        .execute(
            actor(Role::Operator),
            Request::VdiskDelete { name: "d1".into() },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert!(e.message.contains("vm1"), "{}", e.message);

    // Definitions survive a restart.
    n.shutdown().await.unwrap();
    let n = Node::start(cfg(dir.path())).await.unwrap();
    let ctl = n.controller();
    assert_eq!(vm_names(&ctl).await, ["vm1"]);
    ctl.execute(
        actor(Role::Operator),
        Request::VmDelete { name: "vm1".into() },
    )
    .await
    .unwrap();
    assert!(vm_names(&ctl).await.is_empty());
    ctl.execute(
        actor(Role::Operator),
        Request::VdiskDelete { name: "d1".into() },
    )
    .await
    .unwrap();
    n.shutdown().await.unwrap();
}

/// A node told its default bridge (the appliance's, named by PID 1) puts NICs that name no
/// bridge on it, so a NIC with only a VLAN is accepted; a NIC's own bridge is kept, and a NIC
/// on bridge `none` keeps a plain tap (a host-only network). The definition (and so `vm show`)
/// says which bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nics_without_a_bridge_join_the_nodes_default_bridge() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("kernel.elf");
    std::fs::write(&kernel, b"\x7fELF not really").unwrap();
    let mut c = cfg(dir.path());
    c.vm_bridge = Some("cairn0".into());
    let n = Node::start(c).await.unwrap();
    let ctl = n.controller();
    let nic = |tap: &str, bridge: Option<&str>, vlan: Option<u16>| control::VmNicSpec {
        tap: tap.into(),
        mac: None,
        bridge: bridge.map(Into::into),
        vlan,
    };
    let mut req = create("web", 1, 64, &[], kernel.to_str().unwrap());
    if let Request::VmCreate { nics, .. } = &mut req {
        *nics = vec![
            nic("tap0", None, None),
            nic("tap1", None, Some(10)),
            nic("tap2", Some("br9"), None),
            nic("tap3", Some(control::NO_BRIDGE), None),
        ];
    }
    let v = match ctl.execute(actor(Role::Operator), req).await.unwrap() {
        Reply::Vm(v) => v,
        r => panic!("{r:?}"),
    };
    let bridges = |v: &control::VmView| -> Vec<(Option<String>, Option<u16>)> {
        v.nics.iter().map(|n| (n.bridge.clone(), n.vlan)).collect()
    };
    let cairn0 = Some("cairn0".to_string());
    assert_eq!(
        bridges(&v),
        [
            (cairn0.clone(), None),
            (cairn0.clone(), Some(10)),
            (Some("br9".into()), None),
            (None, None)
        ]
    );

    // An edit that sends the plain tap back as none keeps it plain; left out, it would join
    // the default bridge, which is why the edit forms send none for it.
    let update = |nics: Vec<control::VmNicSpec>| Request::VmUpdate {
        name: "web".into(),
        new_name: None,
        description: None,
        vcpus: None,
        memory_mib: None,
        cmdline: None,
        disks: None,
        nics: Some(nics),
    };
    let kept = update(vec![nic("tap3", Some("none"), None)]);
    let v = match ctl.execute(actor(Role::Operator), kept).await.unwrap() {
        Reply::Vm(v) => v,
        r => panic!("{r:?}"),
    };
    assert_eq!(bridges(&v), [(None, None)]);
    let e = ctl
        .execute(
            actor(Role::Operator),
            update(vec![nic("tap3", Some("none"), Some(10))]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(e.message.contains("its bridge is none"), "{}", e.message);
    let joined = update(vec![nic("tap3", None, None)]);
    let v = match ctl.execute(actor(Role::Operator), joined).await.unwrap() {
        Reply::Vm(v) => v,
        r => panic!("{r:?}"),
    };
    assert_eq!(bridges(&v), [(cairn0, None)]);
    n.shutdown().await.unwrap();
}

/// Whether the test's "appliance" has made its bridge yet (read by `live_bridge`).
static BRIDGE_UP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn live_bridge() -> Option<String> {
    BRIDGE_UP
        .load(std::sync::atomic::Ordering::SeqCst)
        .then(|| "cairn0".to_string())
}

/// A node whose default bridge can appear while it runs (the appliance makes its bridge when
/// the uplink is configured, also later from the console) asks for it at each request: a NIC
/// created before the bridge exists stays a plain tap, one created after joins it, and an
/// edit after joins it too. Nothing needs a restart of the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_bridge_is_asked_for_at_each_request() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("kernel.elf");
    std::fs::write(&kernel, b"\x7fELF not really").unwrap();
    let mut c = cfg(dir.path());
    c.vm_bridge = Some("ignored-when-a-source-is-set".into());
    c.vm_bridge_source = Some(live_bridge);
    let n = Node::start(c).await.unwrap();
    let ctl = n.controller();
    let with_nic = |name: &str| {
        let mut req = create(name, 1, 64, &[], kernel.to_str().unwrap());
        if let Request::VmCreate { nics, .. } = &mut req {
            *nics = vec![control::VmNicSpec {
                tap: format!("t-{name}"),
                mac: None,
                bridge: None,
                vlan: None,
            }];
        }
        req
    };
    let bridge_of = |r: Reply| match r {
        Reply::Vm(v) => v.nics[0].bridge.clone(),
        r => panic!("{r:?}"),
    };
    let before = ctl.execute(actor(Role::Operator), with_nic("a")).await;
    assert_eq!(bridge_of(before.unwrap()), None);
    BRIDGE_UP.store(true, std::sync::atomic::Ordering::SeqCst);
    let after = ctl.execute(actor(Role::Operator), with_nic("b")).await;
    assert_eq!(bridge_of(after.unwrap()), Some("cairn0".into()));
    let edit = Request::VmUpdate {
        name: "a".into(),
        new_name: None,
        description: None,
        vcpus: None,
        memory_mib: None,
        cmdline: None,
        disks: None,
        nics: Some(vec![control::VmNicSpec {
            tap: "t-a".into(),
            mac: None,
            bridge: None,
            vlan: None,
        }]),
    };
    let edited = ctl.execute(actor(Role::Operator), edit).await;
    assert_eq!(bridge_of(edited.unwrap()), Some("cairn0".into()));
    n.shutdown().await.unwrap();
}
