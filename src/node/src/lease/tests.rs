use super::*;

#[test]
fn a_lease_is_needed_only_where_the_others_could_commit_a_takeover() {
    // Two data members, no witness: the survivor alone is no majority.
    assert!(!others_could_take_over(2, 1));
    // Two data members and a witness, or three data members.
    assert!(others_could_take_over(3, 2));
    assert!(others_could_take_over(4, 3));
    // Four voters: the other three are a majority; a learner (not a voter) always needs one.
    assert!(others_could_take_over(4, 4));
    assert!(!others_could_take_over(1, 0));
    assert!(needs_lease(true, 2, 3, 2));
    assert!(!needs_lease(false, 2, 3, 2), "a witness");
    assert!(!needs_lease(true, 0, 1, 0), "a single data member");
    assert!(!needs_lease(true, 1, 2, 1), "two data members, no witness");
}

#[tokio::test(start_paused = true)]
async fn a_closed_gate_waits_then_fails_with_eio_and_an_opening_lets_requests_through() {
    let g = Gate::new();
    assert!(g.pass().await.is_ok(), "a new gate is open");
    g.close();
    let started = Instant::now();
    let e = g.pass().await.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert!(
        started.elapsed() >= wait_limit(),
        "gave up before the wait limit"
    );

    let waiter = {
        let g = g.clone();
        tokio::spawn(async move { g.pass().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "passed a closed gate");
    g.open_until(None);
    assert!(waiter.await.unwrap().is_ok());
}

#[test]
fn the_gate_shuts_by_itself_when_the_lease_ends() {
    let g = Gate::new();
    assert!(g.is_open() && g.always());
    let now = std::time::Instant::now();
    g.open_until(Some(now + Duration::from_secs(3600)));
    assert!(g.is_open() && !g.always());
    // A lease that ended while nobody closed the gate (a node waking from a freeze).
    g.open_until(Some(now));
    assert!(!g.is_open());
    g.open_until(Some(now - Duration::from_secs(1)));
    assert!(!g.is_open());
    g.close();
    assert!(!g.is_open());
}

#[tokio::test(start_paused = true)]
async fn an_adopted_disk_is_held_for_the_lease_plus_the_margin_from_first_sight() {
    let lease = Lease::default();
    let m = |ids: &[&str]| -> Vec<(String, String)> {
        ids.iter()
            .map(|i| (i.to_string(), format!("n-{i}")))
            .collect()
    };
    let hold = hold_for(lease.length());
    assert!(lease.held_back(m(&["1/a"])).is_empty());
    let st = lease.state();
    assert_eq!(st.waiting.len(), 1);
    assert_eq!(
        (st.waiting[0].0.as_str(), st.waiting[0].1.as_str()),
        ("1/a", "n-1/a")
    );
    assert_eq!(st.waiting[0].2, hold);
    tokio::time::sleep(hold - Duration::from_millis(10)).await;
    assert!(lease.held_back(m(&["1/a"])).is_empty());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(lease.held_back(m(&["1/a"])), m(&["1/a"]));
    // Not missing for a while: seen again later, the hold starts again.
    assert!(lease.held_back(m(&["1/b"])).is_empty());
    assert!(lease.held_back(m(&["1/a", "1/b"])).is_empty());
    assert!(hold > lease.length() + Duration::from_secs(1));
}

#[test]
fn the_clusters_lease_length_wins_over_this_nodes_setting() {
    let s = Duration::from_secs;
    // No cluster value (a cluster created before it was recorded, or no cluster yet): the
    // node's own setting, else the default.
    assert_eq!(resolve_length(None, 0), (DEFAULT_LENGTH, false));
    assert_eq!(resolve_length(Some(s(3)), 0), (s(3), false));
    // The cluster's value, and whether the node's setting disagrees.
    assert_eq!(resolve_length(None, 7000), (s(7), false));
    assert_eq!(resolve_length(Some(s(7)), 7000), (s(7), false));
    assert_eq!(resolve_length(Some(s(3)), 7000), (s(7), true));
    // Bounded like the setting.
    assert_eq!(resolve_length(None, 10), (MIN_LENGTH, false));
    assert_eq!(resolve_length(None, u64::MAX), (MAX_LENGTH, false));

    let lease = Lease::default();
    assert_eq!(lease.refresh_length(9000), s(9));
    assert_eq!(lease.length(), s(9));
    assert_eq!(hold_for(s(9)), s(9) + Duration::from_millis(4500));
    let st = lease.state();
    assert!(!st.needed && st.remaining.is_none() && st.waiting.is_empty());
    lease
        .gate
        .open_until(Some(std::time::Instant::now() + s(60)));
    let left = lease
        .state()
        .remaining
        .expect("a lease in force has time left");
    assert!(left > s(50) && left <= s(60), "{left:?}");
    lease.gate.close();
    assert_eq!(lease.state().remaining, None);
}

#[test]
fn a_disk_handed_over_on_purpose_is_not_lost_unless_still_used_here() {
    let def = |id: &str, name: &str| cluster::VdiskDef {
        id: id.into(),
        name: name.into(),
        size_bytes: 1 << 20,
        parent_snapshot: None,
    };
    let mut s = cluster::ClusterState::default();
    s.vdisks.insert("1/u".into(), def("1/u", "u"));
    s.vdisks.insert("2/t".into(), def("2/t", "t"));
    s.vdisks.insert("2/x".into(), def("2/x", "x"));
    let local = ["t".to_string(), "u".to_string(), "x".to_string()];
    let none = HashSet::new();
    // No record: t and x were taken over from this node (it was cut off): lost.
    assert_eq!(lost_disks(&s, 1, &local, &none), ["t", "x"]);
    // This node handed t over itself; x went by a takeover, or by another member's move.
    s.handed_over.insert("2/t".into(), 1);
    s.handed_over.insert("2/x".into(), 3);
    assert_eq!(lost_disks(&s, 1, &local, &none), ["x"]);
    // The rule reads only the replicated state: a restarted node (state reloaded from its
    // snapshot, nothing in memory) decides the same.
    let reloaded: cluster::ClusterState =
        serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(lost_disks(&reloaded, 1, &local, &none), ["x"]);
    // Still exported (or under a guest) here: its old copy would be served stale.
    let used: HashSet<String> = ["t".to_string()].into();
    assert_eq!(lost_disks(&s, 1, &local, &used), ["t", "x"]);
    // The new owner's own disks are never lost to it.
    let theirs = ["t".to_string(), "x".to_string()];
    assert!(lost_disks(&s, 2, &theirs, &used).is_empty());
}
