//! The API of one member manages the whole cluster: two real nodes in one cluster (a with the
//! API, a follower; b without, the leader), and through a's API the virtual disks and VMs b holds are listed (naming
//! b), read, changed and deleted — carried out by b, as b's own controller then shows.

mod common;

use common::Harness;
use common::{err_has, kvm_usable};
use control::{Actor, Controller, Reply, Request};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `req` (as JSON) on b's own controller, as its local CLI would ask.
async fn on_b(b: &Arc<dyn Controller>, req: Value) -> Reply {
    let req: Request = serde_json::from_value(req).expect("a request");
    b.execute(Actor::local_cli(), req)
        .await
        .unwrap_or_else(|e| panic!("b refused: {e}"))
}

async fn b_snapshots(b: &Arc<dyn Controller>, vdisk: &str) -> Vec<String> {
    match on_b(b, json!({"action": "snapshot_list", "vdisk": vdisk})).await {
        Reply::Snapshots(s) => s.into_iter().map(|s| s.name).collect(),
        other => panic!("snapshot list answered {other:?}"),
    }
}

async fn b_vdisks(b: &Arc<dyn Controller>) -> Vec<String> {
    match on_b(b, json!({"action": "vdisk_list"})).await {
        Reply::Vdisks(v) => v.into_iter().map(|v| v.name).collect(),
        other => panic!("vdisk list answered {other:?}"),
    }
}

/// The item named `name` in a's list at `path`, once it is there (the cluster records b's
/// creates shortly after them).
async fn listed(a: &common::Client, path: &str, name: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let r = a.get(path).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let hit = r.json["items"]
            .as_array()
            .and_then(|l| l.iter().find(|x| x["name"] == name).cloned());
        if let Some(x) = hit {
            return x;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{name} never in {path}: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until a's view of the cluster records `name` among its `what` (`vdisks`, `vms`): what
/// a passes on goes by that record.
async fn recorded(a: &common::Client, what: &str, name: &str) {
    let t0 = Instant::now();
    while !a.get("/api/v1/cluster").await.json[what]
        .as_array()
        .is_some_and(|v| v.iter().any(|n| n == name))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{name} never recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// b's VM bv started through a, its live console read and typed on through a's port (the one
/// a's console WebSocket uses), a read-only user's port watching only; stopped through a.
async fn console_through_a(h: &Harness, a: &common::Client) {
    let r = a.post("/api/v1/vms/bv/start", json!({})).await;
    assert!(r.status < 300, "{}", r.text);
    let ctl = h.node.as_ref().unwrap().controller();
    let api_actor = |role| Actor {
        user: "admin".into(),
        role,
        via: control::Via::Api,
    };
    let port = ctl
        .console_port(api_actor(control::Role::Operator), "bv")
        .expect("a console port on b's VM through a");
    assert!(port.can_type());
    let t0 = Instant::now();
    let mut text = String::new();
    while !text.contains("ok pvh-magic") {
        let p = port.clone();
        let chunks = tokio::task::spawn_blocking(move || p.output_since(&[], 1 << 20))
            .await
            .unwrap()
            .expect("reads by place")
            .expect("the output from b");
        text = chunks
            .iter()
            .map(|c| String::from_utf8_lossy(&c.bytes).into_owned())
            .collect();
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no guest output through a: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = port.clone();
    let typed = tokio::task::spawn_blocking(move || p.input(b"hello"))
        .await
        .unwrap();
    assert!(typed.is_ok(), "{typed:?}");
    let ro = ctl
        .console_port(api_actor(control::Role::ReadOnly), "bv")
        .unwrap();
    assert!(!ro.can_type());
    let typed = tokio::task::spawn_blocking(move || ro.input(b"x"))
        .await
        .unwrap();
    assert_eq!(typed.unwrap_err().code, control::ErrorCode::Forbidden);
    let r = a.post("/api/v1/vms/bv/stop", json!({"force": true})).await;
    assert!(r.status < 300, "{}", r.text);
    if r.status == 202 {
        let t = a.wait_task(r.json["id"].as_u64().unwrap()).await;
        assert_eq!(t["state"], "succeeded", "{t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_api_manages_what_another_member_holds() {
    let h = Harness::start().await.unwrap();
    let a = h.admin().await;
    // b: a second node in the same process, without an API, joined to a's cluster.
    let dir_b = tempfile::tempdir().unwrap();
    let mut cfg = node::NodeConfig::new(dir_b.path().join("data"));
    cfg.disk_count = 2;
    cfg.disk_size_bytes = node::MIN_DISK_SIZE_BYTES.max(128 << 20);
    cfg.api_listen = None;
    cfg.node_name = Some("b".into());
    let nb = node::Node::start(cfg).await.unwrap();
    let b = nb.controller();
    // a joins b's cluster: a follower, whose view of the cluster may lag a commit on b.
    let Reply::ClusterToken(t) = on_b(&b, json!({"action": "cluster_token"})).await else {
        panic!("no token from b");
    };
    let ctl_a = h.node.as_ref().unwrap().controller();
    let join = json!({"action": "cluster_join", "address": t.address, "token": t.token});
    ctl_a
        .execute(Actor::local_cli(), serde_json::from_value(join).unwrap())
        .await
        .expect("a joins b's cluster");
    on_b(
        &b,
        json!({"action": "vdisk_create", "name": "bd", "size_bytes": 8 << 20}),
    )
    .await;
    on_b(
        &b,
        json!({"action": "snapshot_create", "vdisk": "bd", "name": "s1"}),
    )
    .await;
    assert_eq!(
        a.post("/api/v1/vdisks", json!({"name": "ad", "size": "8M"}))
            .await
            .status,
        201
    );

    recorded(&a, "vdisks", "bd").await;
    // The list names b's disk and its member; a's own names none.
    let bd = listed(&a, "/api/v1/vdisks", "bd").await;
    assert_eq!(bd["node"], "b", "{bd}");
    assert_eq!(bd["size_bytes"], 8 << 20, "{bd}");
    let ad = listed(&a, "/api/v1/vdisks", "ad").await;
    assert!(ad.get("node").is_none(), "{ad}");
    // a's live samples are a's own: its disk, not b's (b's samples are b's).
    let t0 = Instant::now();
    loop {
        let st = a.get("/api/v1/stats").await;
        let names: Vec<&str> = st.json["vdisks"]
            .as_array()
            .map(|v| v.iter().filter_map(|d| d["name"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            !names.contains(&"bd"),
            "b's disk in a's samples: {}",
            st.text
        );
        if names.contains(&"ad") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", st.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let g = a.get("/api/v1/vdisks/bd").await;
    assert_eq!(g.status, 200, "{}", g.text);
    assert_eq!(g.json["node"], "b", "{}", g.text);

    // A file export is of the host of the member that holds the disk: refused here, now.
    err_has(
        &a.post(
            "/api/v1/vdisks/bd/export",
            json!({"file": "/tmp/never-written.img"}),
        )
        .await,
        409,
        "virtual disk bd is on member b: export it there",
    );

    // Snapshots of b's disk, through a: listed, taken and deleted on b.
    let s = a.get("/api/v1/vdisks/bd/snapshots").await;
    assert_eq!(s.status, 200, "{}", s.text);
    assert!(s.text.contains("\"s1\""), "{}", s.text);
    let r = a
        .post("/api/v1/vdisks/bd/snapshots", json!({"name": "s2"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(b_snapshots(&b, "bd").await, ["s1", "s2"]);
    let r = a.delete("/api/v1/vdisks/bd/snapshots/s1").await;
    assert!(r.status == 200 || r.status == 204, "{}", r.text);
    assert_eq!(b_snapshots(&b, "bd").await, ["s2"]);
    // b's refusals come back as b gave them.
    err_has(
        &a.post("/api/v1/vdisks/bd/snapshots", json!({"name": "s2"}))
            .await,
        409,
        "s2",
    );
    // Grown on b.
    let r = a.patch("/api/v1/vdisks/bd", json!({"size": "16M"})).await;
    assert!(r.status < 300, "{}", r.text);
    if r.status == 202 {
        let t = a.wait_task(r.json["id"].as_u64().unwrap()).await;
        assert_eq!(t["state"], "succeeded", "{t}");
    }
    match on_b(&b, json!({"action": "vdisk_get", "name": "bd"})).await {
        Reply::Vdisk(v) => assert_eq!(v.size_bytes, 16 << 20),
        other => panic!("{other:?}"),
    }

    // A clone of b's disk is made on b; acted on through a at once (a catches up with the
    // cluster when a name is new to it).
    let r = a
        .post(
            "/api/v1/vdisks/bd/clone",
            json!({"name": "bd-c", "snapshot": "s2"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let t = a.wait_task(r.json["id"].as_u64().unwrap()).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    assert!(b_vdisks(&b).await.contains(&"bd-c".to_string()));
    let r = a
        .post("/api/v1/vdisks/bd-c/snapshots", json!({"name": "c1"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(b_snapshots(&b, "bd-c").await, ["c1"]);
    let r = a.delete("/api/v1/vdisks/bd-c").await;
    assert!(r.status < 300, "{}", r.text);
    if r.status == 202 {
        let t = a.wait_task(r.json["id"].as_u64().unwrap()).await;
        assert_eq!(t["state"], "succeeded", "{t}");
    }

    // The role is checked on a (and again on b): a read-only user reads but changes nothing.
    let ro = h.user_with_token(&a, "rita", "read_only").await;
    assert_eq!(ro.get("/api/v1/vdisks/bd").await.status, 200);
    assert_eq!(
        ro.post("/api/v1/vdisks/bd/snapshots", json!({"name": "s3"}))
            .await
            .status,
        403
    );
    assert_eq!(b_snapshots(&b, "bd").await, ["s2"]);

    // A VM goes where its disks are: created through a on bd, it is b's. One on disks of two
    // members is refused in words.
    let vm = |disks: Value| {
        json!({"name": "bv", "vcpus": 1, "memory_mib": 64, "disks": disks,
            "kernel": test_guests::guest_elf_path()})
    };
    err_has(
        &a.post("/api/v1/vms", vm(json!(["bd", "ad"]))).await,
        409,
        "bd on member b, ad on this node",
    );
    let r = a.post("/api/v1/vms", vm(json!(["bd"]))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["node"], "b", "{}", r.text);
    // Listed through a, changed and deleted on b.
    let bv = listed(&a, "/api/v1/vms", "bv").await;
    assert_eq!(bv["node"], "b", "{bv}");
    // VM names are the cluster's: another bv, on a's disk, is refused (once a's view of the
    // cluster records b's).
    recorded(&a, "vms", "bv").await;
    err_has(
        &a.post("/api/v1/vms", vm(json!(["ad"]))).await,
        409,
        "a VM named bv exists on member b",
    );
    // A VM of a's cannot take b's disk: said in words.
    let mut av = vm(json!(["ad"]));
    av["name"] = json!("av");
    let r = a.post("/api/v1/vms", av).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.json.get("node").is_none(), "{}", r.text);
    err_has(
        &a.post("/api/v1/vms/av/disks", json!({"vdisk": "bd"})).await,
        409,
        "virtual disk bd is on member b and VM av runs on this node",
    );
    let r = a.delete("/api/v1/vms/av").await;
    assert!(r.status < 300, "{}", r.text);
    let r = a
        .patch("/api/v1/vms/bv", json!({"description": "set through a"}))
        .await;
    assert!(r.status < 300, "{}", r.text);
    match on_b(&b, json!({"action": "vm_get", "name": "bv"})).await {
        Reply::Vm(v) => assert_eq!(v.description, "set through a"),
        other => panic!("{other:?}"),
    }
    if kvm_usable() {
        console_through_a(&h, &a).await;
    } else {
        println!("skipped: the console part (no usable /dev/kvm here)");
    }
    let r = a.delete("/api/v1/vms/bv").await;
    assert!(r.status < 300, "{}", r.text);
    if r.status == 202 {
        let t = a.wait_task(r.json["id"].as_u64().unwrap()).await;
        assert_eq!(t["state"], "succeeded", "{t}");
    }
    match on_b(&b, json!({"action": "vm_list"})).await {
        Reply::Vms(v) => assert!(v.is_empty(), "{v:?}"),
        other => panic!("{other:?}"),
    }

    // Deleted on b; a's own disk stays.
    let r = a.delete("/api/v1/vdisks/bd").await;
    assert!(r.status < 300, "{}", r.text);
    if r.status == 202 {
        let t = a.wait_task(r.json["id"].as_u64().unwrap()).await;
        assert_eq!(t["state"], "succeeded", "{t}");
    }
    assert_eq!(b_vdisks(&b).await, Vec::<String>::new());
    assert_eq!(a.get("/api/v1/vdisks/ad").await.status, 200);

    // One of b's own disks, as a's pool lists it (a keeps copies there), removed through a: b
    // drains it.
    let Reply::Disks(own_b) = on_b(&b, json!({"action": "disk_list"})).await else {
        panic!("no disk list from b");
    };
    let b_disk = own_b
        .iter()
        .find(|d| !d.remote)
        .expect("b has disks")
        .clone();
    let t0 = Instant::now();
    let listed_on_a = loop {
        let l = a.get("/api/v1/disks").await;
        let hit = l.json["items"]
            .as_array()
            .and_then(|v| v.iter().find(|d| d["id"] == b_disk.id.as_str()).cloned());
        if let Some(d) = hit {
            break d;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", l.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(listed_on_a["remote"], true, "{listed_on_a}");
    let name_on_a = listed_on_a["name"].as_str().unwrap().to_string();
    assert_ne!(name_on_a, b_disk.name, "a names b's disk after its host");
    // By the name a gives it (passed on by id: b names it by its path alone).
    let r = a
        .post(
            "/api/v1/control",
            json!({"action": "disk_remove", "disk": name_on_a}),
        )
        .await;
    assert!(r.status < 300, "{}", r.text);
    let Reply::Disks(after) = on_b(&b, json!({"action": "disk_list"})).await else {
        panic!("no disk list from b");
    };
    let state = &after.iter().find(|d| d.id == b_disk.id).unwrap().state;
    assert!(state == "draining" || state == "removed", "{state}");
    nb.shutdown().await.unwrap();
    h.stop().await;
}
