//! A member whose host address changed: reopened on the new address, it announces it, the
//! leader updates raft's membership node and the cluster state, and raft reaches it there.
mod common;

use std::sync::Arc;
use std::time::Duration;

use cluster::{ClusterNode, ClusterState, Command, CommandResult, Role, VdiskDef};
use common::{config, free_addr, wait_for, wait_leader};

fn vdisk(name: &str) -> Command {
    Command::CreateVdisk(VdiskDef {
        id: name.into(),
        name: name.into(),
        size_bytes: 1 << 30,
        parent_snapshot: None,
    })
}

/// Where `of` is known: (cluster state address, raft membership address) as `on` sees it.
fn known_at(on: &ClusterNode, of: u64) -> (Option<String>, Option<String>) {
    let state = on.read(|s| s.members.get(&of).map(|m| m.addr.clone()));
    let raft = on
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&of)
        .map(|n| n.addr.clone());
    (state, raft)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_reopened_on_a_new_address_is_reached_there() {
    let dir = tempfile::tempdir().unwrap();
    let n1 = ClusterNode::create(config(dir.path(), "127.0.0.71", "n1"))
        .await
        .expect("create");
    let mut nodes = vec![n1.clone()];
    for (ip, name) in [("127.0.0.72", "n2"), ("127.0.0.73", "n3")] {
        let t = n1
            .issue_join_token(Role::Data, Duration::from_secs(60))
            .await
            .unwrap();
        let n = ClusterNode::join(config(dir.path(), ip, name), &t, n1.cfg_join_addr())
            .await
            .expect("join");
        nodes.push(n);
    }
    let all: Vec<&Arc<ClusterNode>> = nodes.iter().collect();
    let leader = wait_leader(&all, Duration::from_secs(20)).await;
    let moved = nodes.iter().find(|n| n.id() != leader).unwrap().clone();
    let id = moved.id();
    assert!(!moved.address_is_stale());

    // The host's address changes: the member stops and comes back on the new one.
    let mut cfg = moved.cfg().clone();
    moved.shutdown().await;
    drop(moved);
    cfg.rpc_addr = free_addr("127.0.0.74");
    cfg.join_addr = free_addr("127.0.0.74");
    let new_addr = cfg.rpc_addr.to_string();
    let back = ClusterNode::open(cfg).await.expect("reopen");
    assert!(
        back.address_is_stale(),
        "the cluster still has the old address"
    );
    let others: Vec<Arc<ClusterNode>> = nodes.iter().filter(|n| n.id() != id).cloned().collect();
    let want = (Some(new_addr.clone()), Some(new_addr.clone()));
    wait_for(
        "every member knowing the new address",
        Duration::from_secs(60),
        || {
            others
                .iter()
                .chain([&back])
                .all(|n| known_at(n, id) == want)
        },
    )
    .await;
    assert!(!back.address_is_stale());

    // Raft reaches it there: a command committed now is applied on the moved member, and one
    // it proposes (forwarded to the leader from its new address) commits.
    assert_eq!(
        others[0].propose(vdisk("after-move")).await.unwrap(),
        CommandResult::Ok
    );
    assert_eq!(
        back.propose(vdisk("from-moved")).await.unwrap(),
        CommandResult::Ok
    );
    wait_for(
        "both commands on every member",
        Duration::from_secs(30),
        || {
            others.iter().chain([&back]).all(|n| {
                n.read(|s| {
                    s.vdisks.contains_key("after-move") && s.vdisks.contains_key("from-moved")
                })
            })
        },
    )
    .await;
    back.shutdown().await;
    for n in &others {
        n.shutdown().await;
    }
}

#[test]
fn a_member_address_must_be_ip_and_port() {
    let mut s = ClusterState::default();
    let first = cluster::Member {
        id: 1,
        name: "n1".into(),
        addr: "127.0.0.1:1".into(),
        join_addr: "127.0.0.1:2".into(),
        role: Role::Data,
        state: cluster::MemberState::Active,
    };
    s.members.insert(1, first);
    let set = |id, addr: &str| Command::SetMemberAddr {
        id,
        addr: addr.into(),
        join_addr: "10.0.0.2:8445".into(),
    };
    assert!(matches!(
        s.apply(&set(1, "10.0.0.2")),
        CommandResult::Rejected(m) if m.contains("ip:port")
    ));
    assert!(matches!(
        s.apply(&set(2, "10.0.0.2:8444")),
        CommandResult::Rejected(m) if m.contains("no such member")
    ));
    assert_eq!(
        s.members[&1].addr, "127.0.0.1:1",
        "a rejected command changes nothing"
    );
    assert_eq!(s.apply(&set(1, "10.0.0.2:8444")), CommandResult::Ok);
    assert_eq!(s.members[&1].addr, "10.0.0.2:8444");
    assert_eq!(s.members[&1].join_addr, "10.0.0.2:8445");
}
