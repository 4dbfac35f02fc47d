//! Proposals under a silent (packet-dropping) leader: a follower's forward must not wait on
//! the cut-off leader but retry against the new one, and a retried proposal must apply once.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{ClusterNode, Command, CommandResult, Role, StateMachineStore, VdiskDef};
use common::{config, wait_for, wait_leader};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

fn vdisk(name: &str) -> Command {
    Command::CreateVdisk(VdiskDef {
        id: name.into(),
        name: name.into(),
        size_bytes: 1 << 30,
        parent_snapshot: None,
    })
}

/// A cluster of three data members on the given loopback addresses (n1 creates, n2 and n3 join).
async fn three_data_members(dir: &std::path::Path, ips: [&str; 3]) -> Vec<Arc<ClusterNode>> {
    let n1 = ClusterNode::create(config(dir, ips[0], "n1"))
        .await
        .expect("create");
    let mut nodes = vec![n1.clone()];
    for (ip, name) in [(ips[1], "n2"), (ips[2], "n3")] {
        let t = n1
            .issue_join_token(Role::Data, Duration::from_secs(60))
            .await
            .unwrap();
        let n = ClusterNode::join(config(dir, ip, name), &t, n1.cfg_join_addr())
            .await
            .expect("join");
        nodes.push(n);
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_commits_soon_after_a_silent_leader_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_data_members(dir.path(), ["127.0.0.51", "127.0.0.52", "127.0.0.53"]).await;
    let all: Vec<&Arc<ClusterNode>> = nodes.iter().collect();
    let leader = wait_leader(&all, Duration::from_secs(20)).await;
    let old = nodes.iter().find(|n| n.id() == leader).unwrap().clone();
    let via = nodes.iter().find(|n| n.id() != leader).unwrap().clone();

    // The leader's link goes dead: nothing it is sent gets an answer.
    old.set_silent(true);
    assert_eq!(
        via.leader(),
        Some(leader),
        "the follower still follows the old leader"
    );
    let t = Instant::now();
    let r = via.propose(vdisk("during")).await;
    let took = t.elapsed();
    assert_eq!(
        r.expect("committed through the majority"),
        CommandResult::Ok
    );
    // Before per-attempt forwarding this waited out a 30 s call timeout on the old leader.
    assert!(
        took < Duration::from_secs(12),
        "the proposal waited on the cut-off leader for {took:?}"
    );
    assert_ne!(via.leader(), Some(leader));

    old.set_silent(false);
    wait_for(
        "the old leader catching up",
        Duration::from_secs(20),
        || old.read(|s| s.vdisks.contains_key("during")),
    )
    .await;
    for n in &nodes {
        assert_eq!(n.read(|s| s.vdisks.len()), 1, "applied exactly once");
        n.shutdown().await;
    }
}

/// A follower cut off from the others (its link dropping everything) stops campaigning once
/// its pings fail (the election gate, a stand-in for raft's pre-vote): its term stays where
/// it was instead of rising at every election timeout, so when the link heals it does not
/// depose the leader with a higher term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_does_not_keep_raising_its_term() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_data_members(dir.path(), ["127.0.0.54", "127.0.0.55", "127.0.0.56"]).await;
    let all: Vec<&Arc<ClusterNode>> = nodes.iter().collect();
    let leader = wait_leader(&all, Duration::from_secs(20)).await;
    let lead = nodes.iter().find(|n| n.id() == leader).unwrap().clone();
    let cut = nodes.iter().find(|n| n.id() != leader).unwrap().clone();
    wait_for("the follower following", Duration::from_secs(20), || {
        cut.leader() == Some(leader)
    })
    .await;
    let before = cut.raft().metrics().borrow().current_term;

    cut.set_silent(true);
    // About ten election timeouts (400-800 ms each, after the 800 ms lease).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = cut.raft().metrics().borrow().current_term;
    assert!(
        after <= before + 1,
        "the cut-off follower went from term {before} to {after}"
    );
    assert_eq!(
        lead.leader(),
        Some(leader),
        "the leader kept its place meanwhile"
    );

    cut.set_silent(false);
    assert_eq!(
        cut.propose(vdisk("after-the-cut")).await.unwrap(),
        CommandResult::Ok
    );
    wait_for("every member applying it", Duration::from_secs(20), || {
        nodes
            .iter()
            .all(|n| n.read(|s| s.vdisks.contains_key("after-the-cut")))
    })
    .await;
    for n in &nodes {
        n.shutdown().await;
    }
}

fn entry(index: u64, cmd: Command) -> cluster::Entry {
    cluster::Entry {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
        payload: openraft::EntryPayload::Normal(cmd),
    }
}

#[tokio::test]
async fn a_request_id_applies_once_and_survives_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachineStore::open(dir.path()).unwrap();
    let once = |id: &str, cmd: Command| Command::Once {
        request: id.into(),
        cmd: Box::new(cmd),
    };
    let r = sm
        .apply(vec![
            entry(1, once("r1", vdisk("a"))),
            // The same proposal again (a retry whose first copy also committed).
            entry(2, once("r1", vdisk("a"))),
            // A different request for the same name is a new command: rejected.
            entry(3, once("r2", vdisk("a"))),
            entry(4, once("", vdisk("b"))),
            entry(5, once("r3", once("r4", vdisk("c")))),
        ])
        .await
        .unwrap();
    assert_eq!(r[0], CommandResult::Ok);
    assert_eq!(
        r[1],
        CommandResult::Ok,
        "the retry answers the first result"
    );
    assert!(matches!(r[2], CommandResult::Rejected(_)), "{:?}", r[2]);
    assert!(matches!(r[3], CommandResult::Rejected(_)), "empty id");
    assert!(matches!(r[4], CommandResult::Rejected(_)), "nested ids");
    assert_eq!(
        sm.reader().read().state.vdisks.keys().collect::<Vec<_>>(),
        vec!["a"]
    );

    let mut b = sm.get_snapshot_builder().await;
    b.build_snapshot().await.unwrap();
    drop(sm);
    let mut sm = StateMachineStore::open(dir.path()).unwrap();
    let r = sm
        .apply(vec![entry(6, once("r1", vdisk("a")))])
        .await
        .unwrap();
    assert_eq!(r[0], CommandResult::Ok, "remembered across the snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_read_on_a_follower_sees_what_the_leader_just_committed() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_data_members(dir.path(), ["127.0.0.54", "127.0.0.55", "127.0.0.56"]).await;
    let all: Vec<&Arc<ClusterNode>> = nodes.iter().collect();
    let leader = wait_leader(&all, Duration::from_secs(20)).await;
    let lead = nodes.iter().find(|n| n.id() == leader).unwrap().clone();
    let followers: Vec<_> = nodes.iter().filter(|n| n.id() != leader).cloned().collect();
    // A follower learns of a commit only with the leader's next message, so a plain read right
    // after the leader's acknowledgement usually misses it; a fresh read never may.
    for i in 0..10 {
        let name = format!("fresh{i}");
        assert_eq!(lead.propose(vdisk(&name)).await.unwrap(), CommandResult::Ok);
        for f in &followers {
            let seen = f
                .read_fresh(|s| s.vdisks.contains_key(&name))
                .await
                .expect("fresh read");
            assert!(seen, "{name} committed but not in a follower's fresh read");
        }
    }
    let seen = lead
        .read_fresh(|s| s.vdisks.len())
        .await
        .expect("fresh read on the leader");
    assert_eq!(seen, 10);
    for n in &nodes {
        n.shutdown().await;
    }
}

/// The fence that settles an unknown outcome (`ClusterNode::settle`): a tagged command whose
/// id was settled first never applies, however late its copy arrives; one that applied first
/// answers with its own result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_request_never_applies_later_and_an_applied_one_answers_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = three_data_members(dir.path(), ["127.0.0.57", "127.0.0.58", "127.0.0.59"]).await;
    let all: Vec<&Arc<ClusterNode>> = nodes.iter().collect();
    let leader = wait_leader(&all, Duration::from_secs(20)).await;
    let via = nodes.iter().find(|n| n.id() != leader).unwrap().clone();
    let once = |id: &str, cmd: Command| Command::Once {
        request: id.into(),
        cmd: Box::new(cmd),
    };

    // Settled before its command ever reached a leader: the late copy is a no-op.
    let late = ClusterNode::request_id();
    assert_eq!(via.settle(&late).await.unwrap(), CommandResult::Ok);
    assert_eq!(
        via.propose(once(&late, vdisk("late"))).await.unwrap(),
        CommandResult::Ok,
        "the late copy answers the fence's result"
    );
    // Applied first: settling answers the command's own result, and changes nothing.
    assert_eq!(
        via.propose(vdisk("taken")).await.unwrap(),
        CommandResult::Ok
    );
    let dup = ClusterNode::request_id();
    let refused = via.propose(once(&dup, vdisk("taken"))).await.unwrap();
    assert!(matches!(refused, CommandResult::Rejected(_)), "{refused:?}");
    assert_eq!(via.settle(&dup).await.unwrap(), refused);
    assert_eq!(
        via.settle(&dup).await.unwrap(),
        refused,
        "settles alike twice"
    );
    for n in &nodes {
        let names = n
            .read_fresh(|s| s.vdisks.keys().cloned().collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(names, vec!["taken".to_string()], "member {}", n.id());
    }
    for n in &nodes {
        n.shutdown().await;
    }
}
