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

/// Two members, a (created) and b (joined), with b leading when `b_leads` (else a), and
/// "before" committed. An election started by the one that should lead can lose (the other's
/// lease, a split vote), so it is tried again.
async fn two_members(
    dir: &std::path::Path,
    ips: [&str; 2],
    b_leads: bool,
) -> (Arc<ClusterNode>, Arc<ClusterNode>) {
    let a = ClusterNode::create(config(dir, ips[0], "a"))
        .await
        .expect("create");
    let t = a
        .issue_join_token(Role::Data, Duration::from_secs(60))
        .await
        .unwrap();
    let b = ClusterNode::join(config(dir, ips[1], "b"), &t, a.cfg_join_addr())
        .await
        .expect("join");
    let want = if b_leads { &b } else { &a };
    let mut tries = 0;
    while wait_leader(&[&a, &b], Duration::from_secs(20)).await != want.id() {
        tries += 1;
        assert!(tries <= 10, "{} never won an election", want.id());
        want.raft()
            .trigger()
            .elect()
            .await
            .expect("trigger an election");
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_secs(3) && a.leader() != Some(want.id()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(b.propose(vdisk("before")).await.unwrap(), CommandResult::Ok);
    (a, b)
}

/// Two members (the appliance's smallest cluster): the one that joined is powered off, the
/// other keeps trying to commit (so its log may run ahead with entries no quorum has), and
/// the powered-off one comes back on a new address. Neither can make a quorum alone and the
/// one that stayed reaches the other only at the old address: the returning member must still
/// get its new address committed, and both commit again afterwards. `was_leader`: the
/// returning member led the cluster when it went away (the other then campaigns in vain).
async fn back_on_a_new_address_after_a_power_off(was_leader: bool, ips: [&str; 3]) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_members(dir.path(), [ips[0], ips[1]], was_leader).await;
    let id = b.id();

    // Power off: b stops; a goes on trying to commit (the attempt cannot reach a quorum).
    let mut cfg = b.cfg().clone();
    b.shutdown().await;
    drop(b);
    let a2 = a.clone();
    let pending = tokio::spawn(async move { a2.propose(vdisk("while-away")).await });
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Power on with another lease.
    cfg.rpc_addr = free_addr(ips[2]);
    cfg.join_addr = free_addr(ips[2]);
    let new_addr = cfg.rpc_addr.to_string();
    let back = ClusterNode::open(cfg).await.expect("reopen");
    let want = (Some(new_addr.clone()), Some(new_addr.clone()));
    wait_for(
        "both members knowing the new address",
        Duration::from_secs(60),
        || known_at(&a, id) == want && known_at(&back, id) == want,
    )
    .await;
    assert!(!back.address_is_stale());
    // Whether the attempt made while b was away committed is up to timing (it may have
    // given up first); it must not hang.
    let _ = pending.await;
    assert_eq!(
        back.propose(vdisk("from-moved")).await.unwrap(),
        CommandResult::Ok
    );
    assert_eq!(
        a.propose(vdisk("after-move")).await.unwrap(),
        CommandResult::Ok
    );
    wait_for(
        "both commands on both members",
        Duration::from_secs(30),
        || {
            [&a, &back].iter().all(|n| {
                n.read(|s| {
                    s.vdisks.contains_key("after-move") && s.vdisks.contains_key("from-moved")
                })
            })
        },
    )
    .await;
    let leaders = (a.leader(), back.leader());
    assert!(
        leaders.0.is_some() && leaders.0 == leaders.1,
        "one leader both agree on: {leaders:?}"
    );
    back.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_members_a_follower_comes_back_on_a_new_address() {
    back_on_a_new_address_after_a_power_off(false, ["127.0.0.81", "127.0.0.82", "127.0.0.83"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_members_the_leader_comes_back_on_a_new_address() {
    back_on_a_new_address_after_a_power_off(true, ["127.0.0.84", "127.0.0.85", "127.0.0.86"]).await;
}

/// Two members after a site power cut: the one that led had appended an entry no quorum has
/// (its partner was already off), both go down, and the partner comes back on a new address.
/// The partner, first back and reaching nobody, does not campaign (its term would only depose
/// the other later). The one that stayed comes back leading, at the partner's old address: it
/// must learn the new address from the partner itself, replicate there through the stream it
/// already runs, and then commit the announce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_members_the_one_behind_comes_back_on_a_new_address_after_both_went_down() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_members(dir.path(), ["127.0.0.87", "127.0.0.88"], false).await;
    let id = b.id();

    // b goes off; a appends an entry that cannot commit, then goes off too.
    let mut b_cfg = b.cfg().clone();
    let term = b.raft().metrics().borrow().current_term;
    b.shutdown().await;
    drop(b);
    let a2 = a.clone();
    let pending = tokio::spawn(async move { a2.propose(vdisk("while-away")).await });
    wait_for(
        "a's log holding an entry no quorum has",
        Duration::from_secs(20),
        || {
            let m = a.raft().metrics().borrow().clone();
            m.last_log_index > m.last_applied.map(|l| l.index)
        },
    )
    .await;
    let a_cfg = a.cfg().clone();
    a.shutdown().await;
    pending.abort();
    drop(a);

    // Power returns: b first, on a new address; reaching nobody, it does not raise its term.
    // Then a.
    b_cfg.rpc_addr = free_addr("127.0.0.89");
    b_cfg.join_addr = free_addr("127.0.0.89");
    let new_addr = b_cfg.rpc_addr.to_string();
    let back = ClusterNode::open(b_cfg).await.expect("reopen b");
    // Several election timeouts (400-800 ms each); its term is the one it went down with.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        back.raft().metrics().borrow().current_term,
        term,
        "b campaigned while it reached no other voter"
    );
    let a = ClusterNode::open(a_cfg).await.expect("reopen a");
    let want = (Some(new_addr.clone()), Some(new_addr.clone()));
    wait_for(
        "both members knowing b's new address",
        Duration::from_secs(60),
        || known_at(&a, id) == want && known_at(&back, id) == want,
    )
    .await;
    assert_eq!(
        back.propose(vdisk("from-moved")).await.unwrap(),
        CommandResult::Ok
    );
    wait_for(
        "every command on both members",
        Duration::from_secs(30),
        || {
            [&a, &back].iter().all(|n| {
                n.read(|s| {
                    ["before", "while-away", "from-moved"]
                        .iter()
                        .all(|v| s.vdisks.contains_key(*v))
                })
            })
        },
    )
    .await;
    back.shutdown().await;
    a.shutdown().await;
}
