//! Three-member clusters on 127.0.0.x (two data nodes and a witness), in one process with each
//! member on its own addresses, data directory and raft instance: create, join with tokens
//! (through a follower), leader loss and re-election, restart from disk, removal.
mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cluster::{ClusterNode, Command, CommandResult, MemberState, NodeHealth, Role, VdiskDef};
use common::{config, wait_for, wait_leader};

fn vdisk(name: &str) -> Command {
    Command::CreateVdisk(VdiskDef {
        id: name.into(),
        name: name.into(),
        size_bytes: 1 << 30,
        parent_snapshot: None,
    })
}

fn voters(n: &ClusterNode) -> BTreeSet<u64> {
    n.raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

async fn three_nodes(
    dir: &std::path::Path,
) -> (Arc<ClusterNode>, Arc<ClusterNode>, Arc<ClusterNode>) {
    let n1 = ClusterNode::create(config(dir, "127.0.0.21", "n1"))
        .await
        .expect("create");
    assert_eq!(n1.id(), 1);
    let t2 = n1
        .issue_join_token(Role::Data, Duration::from_secs(60))
        .await
        .unwrap();
    let n2 = ClusterNode::join(config(dir, "127.0.0.22", "n2"), &t2, n1.cfg_join_addr())
        .await
        .expect("join n2");
    // The witness joins through n2, a follower: admission is forwarded to the leader.
    let t3 = n1
        .issue_join_token(Role::Witness, Duration::from_secs(60))
        .await
        .unwrap();
    let n3 = ClusterNode::join(config(dir, "127.0.0.23", "n3"), &t3, n2.cfg_join_addr())
        .await
        .expect("join n3");
    (n1, n2, n3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_join_witness_failover_restart_remove() {
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2, n3) = three_nodes(dir.path()).await;
    assert_eq!((n2.id(), n3.id()), (2, 3));
    assert_eq!(n3.role(), Role::Witness);
    assert_eq!(voters(&n1), BTreeSet::from([1, 2, 3]));
    wait_for("all members active", Duration::from_secs(10), || {
        n3.read(|s| {
            s.members.values().all(|m| m.state == MemberState::Active) && s.members.len() == 3
        })
    })
    .await;
    assert_eq!(n1.read(|s| s.members[&3].role), Role::Witness);
    assert_eq!(n1.cluster_id(), n3.cluster_id());

    // Writes from any member (followers forward to the leader).
    for (i, n) in [&n1, &n2, &n3].iter().enumerate() {
        assert_eq!(
            n.propose(vdisk(&format!("d{i}"))).await.unwrap(),
            CommandResult::Ok
        );
    }
    assert!(matches!(
        n2.propose(vdisk("d0")).await.unwrap(),
        CommandResult::Rejected(_)
    ));
    // A witness holds no disks.
    let r = n1
        .propose(Command::SetNodeDisks {
            node: 3,
            disks: vec![],
        })
        .await
        .unwrap();
    assert!(matches!(r, CommandResult::Rejected(_)));

    // Health: everyone sees everyone up.
    wait_for("heartbeats", Duration::from_secs(10), || {
        n1.status()
            .members
            .iter()
            .all(|m| m.health == NodeHealth::Up)
    })
    .await;

    // Kill the leader: the other two elect a new one, and the state is intact.
    let nodes = [n1.clone(), n2.clone(), n3.clone()];
    let leader = wait_leader(&[&n1, &n2, &n3], Duration::from_secs(10)).await;
    let dead = nodes.iter().find(|n| n.id() == leader).unwrap().clone();
    let dead_cfg = dead.cfg().clone();
    dead.shutdown().await;
    drop(dead);
    let alive: Vec<Arc<ClusterNode>> = nodes.iter().filter(|n| n.id() != leader).cloned().collect();
    let new_leader = wait_leader(&[&alive[0], &alive[1]], Duration::from_secs(15)).await;
    assert_ne!(new_leader, leader);
    assert_eq!(
        alive[0].propose(vdisk("after-failover")).await.unwrap(),
        CommandResult::Ok
    );
    for n in &alive {
        wait_for("state replicated", Duration::from_secs(10), || {
            n.read(|s| {
                ["d0", "d1", "d2", "after-failover"]
                    .iter()
                    .all(|d| s.vdisks.contains_key(*d))
            })
        })
        .await;
    }
    wait_for("dead node reported down", Duration::from_secs(10), || {
        alive[0]
            .status()
            .members
            .iter()
            .any(|m| m.id == leader && m.health == NodeHealth::Down)
    })
    .await;

    // Restart the old leader from its data directory: it catches up with what it missed.
    let back = ClusterNode::open(dead_cfg).await.expect("restart");
    wait_for("restarted node caught up", Duration::from_secs(15), || {
        back.read(|s| s.vdisks.contains_key("after-failover") && s.vdisks.len() == 4)
    })
    .await;
    let all = [&alive[0], &alive[1], &back];
    wait_leader(&all, Duration::from_secs(10)).await;

    // Remove the witness.
    let witness = all.iter().find(|n| n.role() == Role::Witness).unwrap();
    let data = all.iter().find(|n| n.role() == Role::Data).unwrap();
    data.remove_member(witness.id())
        .await
        .expect("remove witness");
    wait_for("witness removed", Duration::from_secs(10), || {
        voters(data) == BTreeSet::from([1, 2]) && data.read(|s| !s.members.contains_key(&3))
    })
    .await;
    assert_eq!(
        data.propose(vdisk("after-remove")).await.unwrap(),
        CommandResult::Ok
    );
    for n in all {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_single_use_and_bound_to_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let n1 = ClusterNode::create(config(dir.path(), "127.0.0.31", "n1"))
        .await
        .unwrap();
    let token = n1
        .issue_join_token(Role::Data, Duration::from_secs(60))
        .await
        .unwrap();
    let n2 = ClusterNode::join(
        config(dir.path(), "127.0.0.32", "n2"),
        &token,
        n1.cfg_join_addr(),
    )
    .await
    .unwrap();
    // Second use of the same token.
    let again = ClusterNode::join(
        config(dir.path(), "127.0.0.33", "n3"),
        &token,
        n1.cfg_join_addr(),
    )
    .await;
    assert!(again.is_err(), "token reused");
    // A well-formed token the cluster never issued.
    let fake = cluster::JoinToken::parse(&token).unwrap();
    let fake = cluster::JoinToken {
        secret_hex: "00".repeat(32),
        ..fake
    }
    .encode();
    let r = ClusterNode::join(
        config(dir.path(), "127.0.0.33", "n4"),
        &fake,
        n1.cfg_join_addr(),
    )
    .await;
    assert!(r.is_err(), "unknown token accepted");
    // An expired token.
    let short = n1
        .issue_join_token(Role::Data, Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = ClusterNode::join(
        config(dir.path(), "127.0.0.33", "n5"),
        &short,
        n1.cfg_join_addr(),
    )
    .await;
    assert!(r.is_err(), "expired token accepted");
    // A token from another cluster: the joiner refuses this cluster's member (CA mismatch).
    let other = ClusterNode::create(config(dir.path(), "127.0.0.34", "o1"))
        .await
        .unwrap();
    let foreign = other
        .issue_join_token(Role::Data, Duration::from_secs(60))
        .await
        .unwrap();
    let r = ClusterNode::join(
        config(dir.path(), "127.0.0.33", "n6"),
        &foreign,
        n1.cfg_join_addr(),
    )
    .await;
    assert!(r.is_err(), "joined through a member of another cluster");
    // Only n1 and n2 are members; the failed attempts left no trace but the consumed tokens.
    assert_eq!(
        n1.read(|s| s.members.keys().copied().collect::<Vec<_>>()),
        vec![1, 2]
    );
    assert_eq!(voters(&n1), BTreeSet::from([1, 2]));
    for n in [n1, n2, other] {
        n.shutdown().await;
    }
}

/// A member that was down while the others snapshotted and purged their logs catches up by
/// snapshot install over the transport, then by log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_member_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let small = |ip: &str, name: &str| {
        let mut c = config(dir.path(), ip, name);
        c.timings.snapshot_every_entries = 20;
        c.timings.keep_log_entries = 5;
        c
    };
    let n1 = ClusterNode::create(small("127.0.0.24", "n1"))
        .await
        .unwrap();
    let t = n1
        .issue_join_token(Role::Data, Duration::from_secs(60))
        .await
        .unwrap();
    let n2 = ClusterNode::join(small("127.0.0.25", "n2"), &t, n1.cfg_join_addr())
        .await
        .unwrap();
    let t = n1
        .issue_join_token(Role::Witness, Duration::from_secs(60))
        .await
        .unwrap();
    let n3 = ClusterNode::join(small("127.0.0.26", "n3"), &t, n1.cfg_join_addr())
        .await
        .unwrap();
    wait_leader(&[&n1, &n2, &n3], Duration::from_secs(10)).await;
    let leader = [&n1, &n2, &n3]
        .into_iter()
        .find(|n| n.leader() == Some(n.id()))
        .unwrap()
        .clone();
    let lagger = [&n1, &n2, &n3]
        .into_iter()
        .find(|n| n.id() != leader.id())
        .unwrap()
        .clone();
    let lag_cfg = lagger.cfg().clone();
    lagger.shutdown().await;
    drop(lagger);
    for i in 0..80 {
        assert_eq!(
            leader.propose(vdisk(&format!("s{i}"))).await.unwrap(),
            CommandResult::Ok
        );
    }
    wait_for("leader snapshot and purge", Duration::from_secs(10), || {
        let m = leader.raft().metrics().borrow().clone();
        m.snapshot.is_some_and(|s| s.index >= 60) && m.purged.is_some_and(|p| p.index >= 50)
    })
    .await;
    let back = ClusterNode::open(lag_cfg).await.unwrap();
    wait_for("snapshot installed", Duration::from_secs(20), || {
        back.read(|s| (0..80).all(|i| s.vdisks.contains_key(&format!("s{i}"))))
    })
    .await;
    let snap = back.raft().metrics().borrow().snapshot;
    assert!(
        snap.is_some_and(|s| s.index >= 60),
        "caught up without a snapshot: {snap:?}"
    );
    assert_eq!(
        back.propose(vdisk("after")).await.unwrap(),
        CommandResult::Ok
    );
    for n in [&n1, &n2, &n3] {
        if n.id() != back.id() {
            n.shutdown().await;
        }
    }
    back.shutdown().await;
}

/// Replacing a dead node: remove it while the other two keep a quorum, then join a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_a_dead_node() {
    let dir = tempfile::tempdir().unwrap();
    let n1 = ClusterNode::create(config(dir.path(), "127.0.0.27", "n1"))
        .await
        .unwrap();
    let t = n1
        .issue_join_token(Role::Data, Duration::from_secs(60))
        .await
        .unwrap();
    let n2 = ClusterNode::join(
        config(dir.path(), "127.0.0.28", "n2"),
        &t,
        n1.cfg_join_addr(),
    )
    .await
    .unwrap();
    let t = n1
        .issue_join_token(Role::Witness, Duration::from_secs(60))
        .await
        .unwrap();
    let n3 = ClusterNode::join(
        config(dir.path(), "127.0.0.29", "n3"),
        &t,
        n1.cfg_join_addr(),
    )
    .await
    .unwrap();
    assert_eq!(n1.propose(vdisk("keep")).await.unwrap(), CommandResult::Ok);
    // n2 dies for good.
    n2.shutdown().await;
    n1.remove_member(2).await.expect("remove dead node");
    wait_for("dead node out", Duration::from_secs(10), || {
        voters(&n1) == BTreeSet::from([1, 3]) && n3.read(|s| !s.members.contains_key(&2))
    })
    .await;
    // A fresh node takes its place (new id: ids are never reused).
    let t = n3
        .issue_join_token(Role::Data, Duration::from_secs(60))
        .await
        .unwrap();
    let n4 = ClusterNode::join(
        config(dir.path(), "127.0.0.30", "n4"),
        &t,
        n3.cfg_join_addr(),
    )
    .await
    .unwrap();
    assert_eq!(n4.id(), 4);
    assert_eq!(voters(&n1), BTreeSet::from([1, 3, 4]));
    wait_for("new node has the state", Duration::from_secs(10), || {
        n4.read(|s| s.vdisks.contains_key("keep"))
    })
    .await;
    assert_eq!(n4.propose(vdisk("new")).await.unwrap(), CommandResult::Ok);
    for n in [n1, n3, n4] {
        n.shutdown().await;
    }
}
