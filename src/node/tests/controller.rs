//! The controller enforces the role policy and validation itself, whatever front end calls it,
//! and audits mutations with the actor.

use control::{Actor, ErrorCode, Reply, Request, Role, Via};
use node::{Node, NodeConfig};

fn actor(role: Role) -> Actor {
    Actor {
        user: format!("{role:?}").to_lowercase(),
        role,
        via: Via::Api,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_validation_are_enforced_in_one_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::new(dir.path().join("data"));
    cfg.disk_count = 2;
    cfg.disk_size_bytes = 128 << 20;
    cfg.api_listen = None;
    let n = Node::start(cfg).await.unwrap();
    let ctl = n.controller();
    let create = |name: &str| Request::VdiskCreate {
        name: name.into(),
        size_bytes: 256 << 20,
    };

    let e = ctl
        .execute(actor(Role::ReadOnly), create("ro"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);
    let e = ctl
        .execute(
            actor(Role::Operator),
            Request::DiskAdd {
                path: "/tmp/x.img".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);
    let e = ctl
        .execute(actor(Role::Admin), create("a b"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);

    let r = ctl
        .execute(actor(Role::Operator), create("op"))
        .await
        .unwrap();
    assert!(matches!(r, Reply::Vdisk(ref v) if v.name == "op"), "{r:?}");
    let r = ctl
        .execute(actor(Role::ReadOnly), Request::VdiskList)
        .await
        .unwrap();
    assert!(matches!(r, Reply::Vdisks(ref v) if v.len() == 1), "{r:?}");

    n.shutdown().await.unwrap();
    let audit = std::fs::read_to_string(dir.path().join("data/audit.log")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines
        .iter()
        .any(|l| l["user"] == "operator" && l["action"] == "vdisk_create" && l["ok"] == true));
    assert!(lines
        .iter()
        .any(|l| l["user"] == "readonly" && l["code"] == "forbidden" && l["via"] == "api"));
}
