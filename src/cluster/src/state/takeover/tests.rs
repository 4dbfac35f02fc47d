//! The takeover and planned-move commands, applied to small states.
use super::super::tests::{init, member, vdisk};
use super::super::*;

/// Why a command was rejected; None when it was applied.
fn rejection(r: &CommandResult) -> Option<&str> {
    match r {
        CommandResult::Rejected(m) => Some(m),
        _ => None,
    }
}

/// The placement map's new version when a command moved it on.
fn placement_version(r: &CommandResult) -> Option<u64> {
    match r {
        CommandResult::PlacementVersion(v) => Some(*v),
        _ => None,
    }
}

#[test]
fn move_vdisk_hands_one_disk_over_and_leaves_the_owner_its_others() {
    let mut s = init();
    s.members.insert(2, member(2, Role::Data));
    s.members.insert(3, member(3, Role::Witness));
    s.apply(&Command::CreateVdisk(vdisk("1/a")));
    s.apply(&Command::CreateVdisk(vdisk("1/b")));
    s.apply(&Command::CreateVdisk(vdisk("2/b")));
    s.apply(&Command::CreateSnapshot(SnapshotDef {
        id: "1/a@s".into(),
        vdisk: "1/a".into(),
        name: "s".into(),
    }));
    s.apply(&Command::PutVm(VmDef {
        id: "vm".into(),
        name: "vm".into(),
        vcpus: 1,
        memory_mib: 64,
        vdisks: vec!["1/a".into(), "1/b".into()],
        node: Some(1),
        power: VmPower::Stopped,
    }));
    let v0 = s.placement.version;
    let before = s.clone();
    for bad in [
        Command::MoveVdisk {
            id: "1/a".into(),
            to: 3,
            record: true,
            unused_outdated: vec![],
        },
        Command::MoveVdisk {
            id: "1/a".into(),
            to: 1,
            record: true,
            unused_outdated: vec![],
        },
        Command::MoveVdisk {
            id: "1/a".into(),
            to: 9,
            record: true,
            unused_outdated: vec![],
        },
        Command::MoveVdisk {
            id: "1/x".into(),
            to: 2,
            record: true,
            unused_outdated: vec![],
        },
        Command::MoveVdisk {
            id: "nonsense".into(),
            to: 2,
            record: true,
            unused_outdated: vec![],
        },
        // 2 already has a disk with b's key.
        Command::MoveVdisk {
            id: "1/b".into(),
            to: 2,
            record: true,
            unused_outdated: vec![],
        },
    ] {
        let rejected = rejection(&s.apply(&bad)).is_some();
        assert!(rejected, "{bad:?} must be rejected");
    }
    assert_eq!(s, before, "a rejected move changes nothing");
    s.outdated.insert((1, 2));
    assert!(rejection(&s.apply(&Command::MoveVdisk {
        id: "1/a".into(),
        to: 2,
        record: true,
        unused_outdated: vec![],
    }))
    .is_some());
    s.outdated.clear();
    assert_eq!(
        s.apply(&Command::MoveVdisk {
            id: "1/a".into(),
            to: 2,
            record: true,
            unused_outdated: vec![],
        }),
        CommandResult::PlacementVersion(v0 + 1)
    );
    assert!(s.vdisks.contains_key("2/a") && !s.vdisks.contains_key("1/a"));
    assert!(
        s.vdisks.contains_key("1/b"),
        "the owner keeps its other disks"
    );
    assert_eq!(s.snapshots["2/a@s"].vdisk, "2/a");
    assert_eq!(
        s.vms["vm"].vdisks,
        vec!["2/a".to_string(), "1/b".to_string()]
    );
    assert_eq!(
        s.vms["vm"].node,
        Some(1),
        "a planned move leaves VMs where they are"
    );
    assert!(
        !s.taken_over.contains_key(&1),
        "the owner was not taken over: it may still write alone"
    );
    assert_eq!(
        s.apply(&Command::Outdate {
            owner: 1,
            holder: 2,
            epoch: 0
        }),
        CommandResult::Ok
    );
}

#[test]
fn move_vdisks_hands_a_members_disks_snapshots_and_vms_over() {
    let mut s = init();
    s.members.insert(2, member(2, Role::Data));
    s.members.insert(3, member(3, Role::Witness));
    s.apply(&Command::CreateVdisk(vdisk("1/a")));
    s.apply(&Command::CreateVdisk(vdisk("2/b")));
    s.apply(&Command::CreateSnapshot(SnapshotDef {
        id: "1/a@s".into(),
        vdisk: "1/a".into(),
        name: "s".into(),
    }));
    s.apply(&Command::PutVm(VmDef {
        id: "vm".into(),
        name: "vm".into(),
        vcpus: 1,
        memory_mib: 64,
        vdisks: vec!["1/a".into(), "2/b".into()],
        node: Some(1),
        power: VmPower::Running,
    }));
    let v0 = s.placement.version;
    let before = s.clone();
    for bad in [
        Command::MoveVdisks { from: 1, to: 3 },
        Command::MoveVdisks { from: 1, to: 1 },
        Command::MoveVdisks { from: 4, to: 2 },
    ] {
        let rejected = rejection(&s.apply(&bad)).is_some();
        assert!(rejected, "{bad:?} must be rejected");
    }
    assert_eq!(s, before, "a rejected takeover changes nothing");
    assert_eq!(
        s.apply(&Command::MoveVdisks { from: 1, to: 2 }),
        CommandResult::PlacementVersion(v0 + 1)
    );
    assert!(s.vdisks.contains_key("2/a") && !s.vdisks.contains_key("1/a"));
    assert_eq!(s.vdisks["2/a"].name, "1/a");
    assert_eq!(s.snapshots["2/a@s"].vdisk, "2/a");
    assert!(!s.snapshots.contains_key("1/a@s"));
    assert_eq!(
        s.vms["vm"].vdisks,
        vec!["2/a".to_string(), "2/b".to_string()]
    );
    assert_eq!(s.vms["vm"].node, Some(2));
    assert!(rejection(&s.apply(&Command::MoveVdisks { from: 1, to: 2 })).is_some());
    // The old incarnation (epoch before the takeover) may not write alone any more; a
    // later one may.
    assert!(rejection(&s.apply(&Command::Outdate {
        owner: 1,
        holder: 2,
        epoch: v0
    }))
    .is_some());
    assert_eq!(
        s.apply(&Command::Outdate {
            owner: 1,
            holder: 2,
            epoch: v0 + 2
        }),
        CommandResult::Ok
    );
    // An outdated holder cannot take over; once resynced it can.
    s.apply(&Command::CreateVdisk(vdisk("1/c")));
    assert!(rejection(&s.apply(&Command::MoveVdisks { from: 1, to: 2 })).is_some());
    s.apply(&Command::ClearOutdated {
        owner: 1,
        holder: 2,
    });
    assert!(placement_version(&s.apply(&Command::MoveVdisks { from: 1, to: 2 })).is_some());
    assert_eq!(vdisk_owner("12/x/y"), Some(12));
    assert_eq!(vdisk_owner("x"), None);
}

#[test]
fn take_over_is_refused_while_any_holder_is_outdated() {
    let mut s = init();
    s.members.insert(2, member(2, Role::Data));
    s.members.insert(3, member(3, Role::Data));
    s.apply(&Command::CreateVdisk(vdisk("1/a")));
    s.apply(&Command::PutVm(VmDef {
        id: "vm".into(),
        name: "vm".into(),
        vcpus: 1,
        memory_mib: 64,
        vdisks: vec!["1/a".into()],
        node: Some(1),
        power: VmPower::Running,
    }));
    let v0 = s.placement.version;
    assert_eq!(
        s.apply(&Command::Outdate {
            owner: 1,
            holder: 3,
            epoch: v0
        }),
        CommandResult::Ok
    );
    let before = s.clone();
    // Member 3's copies are outdated: neither 2 nor 3 may take 1's disks over (2 would
    // gather the chunks 3 holds), while MoveVdisks only looks at its own target.
    for to in [2, 3] {
        let r = s.apply(&Command::TakeOver { from: 1, to });
        let refused = rejection(&r).is_some_and(|m| m.contains("outdated"));
        assert!(refused, "take over by {to}: {r:?}");
    }
    assert_eq!(s, before, "a refused takeover changes nothing");
    s.apply(&Command::ClearOutdated {
        owner: 1,
        holder: 3,
    });
    assert_eq!(
        s.apply(&Command::TakeOver { from: 1, to: 2 }),
        CommandResult::PlacementVersion(v0 + 1)
    );
    assert!(s.vdisks.contains_key("2/a"));
    assert_eq!(s.vms["vm"].node, Some(2));
    assert_eq!(s.taken_over.get(&1), Some(&(v0 + 1)));
    // The loser's commit finds nothing left to move.
    let second = s.apply(&Command::TakeOver { from: 1, to: 3 });
    let lost = rejection(&second).is_some();
    assert!(lost, "{second:?}");
}

#[test]
fn a_planned_hand_over_is_recorded_follows_the_disk_and_survives_a_reload() {
    let mut s = init();
    s.members.insert(2, member(2, Role::Data));
    s.members.insert(3, member(3, Role::Data));
    s.apply(&Command::CreateVdisk(vdisk("1/a")));
    s.apply(&Command::CreateVdisk(vdisk("1/b")));
    // An entry logged before `record` existed moves the disk and records nothing.
    let old: Command = serde_json::from_str(r#"{"MoveVdisk":{"id":"1/b","to":2}}"#).unwrap();
    assert!(placement_version(&s.apply(&old)).is_some());
    assert!(s.handed_over.is_empty(), "{:?}", s.handed_over);
    assert!(placement_version(&s.apply(&Command::MoveVdisk {
        id: "1/a".into(),
        to: 2,
        record: true,
        unused_outdated: vec![],
    }))
    .is_some());
    assert_eq!(s.handed_over.get("2/a"), Some(&1));
    // What a restarted member loads from its snapshot says the same.
    let reloaded: ClusterState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(reloaded, s);
    assert_eq!(reloaded.handed_over.get("2/a"), Some(&1));
    // A state written before the field existed loads with nothing handed over, and a state
    // with nothing handed over is written as before.
    let mut v = serde_json::to_value(&s).unwrap();
    v.as_object_mut().unwrap().remove("handed_over");
    let older: ClusterState = serde_json::from_value(v).unwrap();
    assert!(older.handed_over.is_empty());
    assert!(!serde_json::to_string(&older)
        .unwrap()
        .contains("handed_over"));
    // 2 is lost and 3 takes its disks over: 1 still handed `a` over (its old copy of it is
    // no sign of 1's isolation), re-keyed with the disk.
    assert!(placement_version(&s.apply(&Command::TakeOver { from: 2, to: 3 })).is_some());
    assert_eq!(s.handed_over.get("3/a"), Some(&1));
    assert!(!s.handed_over.contains_key("2/a"));
    // 3 hands it to 1; then 1 is lost and 3 takes it back: 3 owns it again, so no
    // hand-over by 3 is recorded for it any more.
    assert!(placement_version(&s.apply(&Command::MoveVdisk {
        id: "3/a".into(),
        to: 1,
        record: true,
        unused_outdated: vec![],
    }))
    .is_some());
    assert_eq!(s.handed_over.get("1/a"), Some(&3), "3 handed it back");
    assert!(placement_version(&s.apply(&Command::MoveVdisks { from: 1, to: 3 })).is_some());
    assert!(
        !s.handed_over.contains_key("3/a"),
        "the disk came back to the member that handed it over: {:?}",
        s.handed_over
    );
    assert!(s.handed_over.values().all(|by| *by != 3));
    // Deleted with the disk.
    assert!(placement_version(&s.apply(&Command::MoveVdisk {
        id: "3/a".into(),
        to: 2,
        record: true,
        unused_outdated: vec![],
    }))
    .is_some());
    assert_eq!(s.handed_over.get("2/a"), Some(&3));
    assert_eq!(
        s.apply(&Command::DeleteVdisk { id: "2/a".into() }),
        CommandResult::Ok
    );
    assert!(s.handed_over.is_empty(), "{:?}", s.handed_over);
}

/// An outdated member holds back only planned moves of disks it may hold chunks of: one
/// the owner found holding none (`unused_outdated`) lets the move through; one not named
/// (outdated after the owner looked, or any in an entry from before the list) refuses it,
/// for a disk move and a VM move alike, changing nothing.
#[test]
fn an_outdated_member_holds_back_only_moves_of_disks_it_may_hold() {
    let mut s = init();
    s.members.insert(2, member(2, Role::Data));
    s.members.insert(3, member(3, Role::Data));
    s.apply(&Command::CreateVdisk(vdisk("1/a")));
    s.apply(&Command::CreateVdisk(vdisk("1/b")));
    s.apply(&Command::PutVm(VmDef {
        id: "vm".into(),
        name: "vm".into(),
        vcpus: 1,
        memory_mib: 64,
        vdisks: vec!["1/b".into()],
        node: Some(1),
        power: VmPower::Stopped,
    }));
    s.outdated.insert((1, 3));
    s.outdated.insert((2, 1)); // another owner's record is no matter here
    let move_a = |unused: Vec<NodeId>| Command::MoveVdisk {
        id: "1/a".into(),
        to: 2,
        record: true,
        unused_outdated: unused,
    };
    let before = s.clone();
    for unused in [vec![], vec![2]] {
        let CommandResult::Rejected(why) = s.apply(&move_a(unused)) else {
            panic!("a move past an outdated member not found unused must be refused");
        };
        assert!(why.contains("member 3's copies"), "{why}");
    }
    assert_eq!(s, before, "a refused move changes nothing");
    let v0 = s.placement.version;
    assert_eq!(
        s.apply(&move_a(vec![3])),
        CommandResult::PlacementVersion(v0 + 1)
    );
    assert!(s.vdisks.contains_key("2/a"));
    // Member 2 outdated after the owner's look: a VM move naming only 3 is refused.
    s.outdated.insert((1, 2));
    let move_vm = |unused: Vec<NodeId>| Command::MoveVm {
        id: "vm".into(),
        to: 3,
        record: true,
        unused_outdated: unused,
    };
    let before = s.clone();
    let CommandResult::Rejected(why) = s.apply(&move_vm(vec![3])) else {
        panic!("a VM move past an outdated member not found unused must be refused");
    };
    assert!(why.contains("member 2's copies"), "{why}");
    assert_eq!(s, before);
    assert_eq!(
        s.apply(&move_vm(vec![2, 3])),
        CommandResult::PlacementVersion(v0 + 2)
    );
    assert_eq!(s.vms["vm"].node, Some(3));
    assert!(s.vdisks.contains_key("3/b"));
    // The owner's copies elsewhere on those members stay recorded as outdated.
    assert!(s.outdated.contains(&(1, 3)) && s.outdated.contains(&(1, 2)));
}

#[test]
fn move_vm_hands_a_stopped_vm_over_with_its_disks_or_changes_nothing() {
    let mut s = init();
    s.members.insert(2, member(2, Role::Data));
    s.members.insert(3, member(3, Role::Data));
    s.members.insert(4, member(4, Role::Witness));
    for d in ["1/a", "1/b", "2/c", "3/d", "1/e"] {
        s.apply(&Command::CreateVdisk(vdisk(d)));
    }
    s.apply(&Command::CreateSnapshot(SnapshotDef {
        id: "1/a@s".into(),
        vdisk: "1/a".into(),
        name: "s".into(),
    }));
    let vm = |id: &str, disks: &[&str], power| VmDef {
        id: id.into(),
        name: id.into(),
        vcpus: 1,
        memory_mib: 64,
        vdisks: disks.iter().map(|d| d.to_string()).collect(),
        node: Some(1),
        power,
    };
    s.apply(&Command::PutVm(vm(
        "v",
        &["1/a", "1/b", "2/c"],
        VmPower::Stopped,
    )));
    s.apply(&Command::PutVm(vm("run", &["1/e"], VmPower::Running)));
    s.apply(&Command::PutVm(vm("far", &["3/d"], VmPower::Stopped)));
    let before = s.clone();
    for (bad, why) in [
        (("nope", 2), "no VM"),
        (("run", 2), "running"),
        (("v", 4), "data member"),
        (("v", 1), "data member"),
        (("v", 9), "data member"),
        // Its disk is on 3: neither on the VM's member nor on the target.
        (("far", 2), "neither"),
    ] {
        let r = s.apply(&Command::MoveVm {
            id: bad.0.into(),
            to: bad.1,
            record: true,
            unused_outdated: vec![],
        });
        let refused = rejection(&r).is_some_and(|m| m.contains(why));
        assert!(refused, "{bad:?}: {r:?}");
    }
    s.outdated.insert((1, 3));
    let r = s.apply(&Command::MoveVm {
        id: "v".into(),
        to: 2,
        record: true,
        unused_outdated: vec![],
    });
    let refused = rejection(&r).is_some_and(|m| m.contains("outdated"));
    assert!(refused, "{r:?}");
    s.outdated.clear();
    assert_eq!(s, before, "a refused VM move changes nothing");

    let v0 = s.placement.version;
    assert_eq!(
        s.apply(&Command::MoveVm {
            id: "v".into(),
            to: 2,
            record: true,
            unused_outdated: vec![],
        }),
        CommandResult::PlacementVersion(v0 + 1)
    );
    assert_eq!(s.vms["v"].node, Some(2));
    assert_eq!(
        s.vms["v"].vdisks,
        vec!["2/a".to_string(), "2/b".to_string(), "2/c".to_string()]
    );
    for d in ["2/a", "2/b", "2/c"] {
        assert!(s.vdisks.contains_key(d), "{d}");
    }
    assert!(!s.vdisks.contains_key("1/a") && !s.vdisks.contains_key("1/b"));
    assert_eq!(s.snapshots["2/a@s"].vdisk, "2/a");
    assert_eq!(s.handed_over.get("2/a"), Some(&1));
    assert_eq!(s.handed_over.get("2/b"), Some(&1));
    assert!(
        !s.handed_over.contains_key("2/c"),
        "c was on the target already"
    );
    assert_eq!(s.vms["run"].node, Some(1), "other VMs stay");
    assert!(s.vdisks.contains_key("1/e"), "other disks stay");
    assert!(
        !s.taken_over.contains_key(&1),
        "a planned move is no takeover"
    );
    assert_eq!(s.vms_handed_over.get("v"), Some(&1));
}

#[test]
fn a_vm_handed_over_is_recorded_until_a_takeover_moves_it_on_or_it_goes() {
    let mut s = init();
    s.members.insert(2, member(2, Role::Data));
    s.members.insert(3, member(3, Role::Data));
    for d in ["1/a", "1/b"] {
        s.apply(&Command::CreateVdisk(vdisk(d)));
    }
    let vm = |id: &str, disk: &str| VmDef {
        id: id.into(),
        name: id.into(),
        vcpus: 1,
        memory_mib: 64,
        vdisks: vec![disk.into()],
        node: Some(1),
        power: VmPower::Stopped,
    };
    s.apply(&Command::PutVm(vm("v", "1/a")));
    s.apply(&Command::PutVm(vm("w", "1/b")));
    // Logged before the field existed: moved, not recorded (as that binary did).
    let old: Command = serde_json::from_str(r#"{"MoveVm":{"id":"w","to":2}}"#).unwrap();
    assert_eq!(
        old,
        Command::MoveVm {
            id: "w".into(),
            to: 2,
            record: false,
            unused_outdated: vec![],
        }
    );
    assert!(placement_version(&s.apply(&old)).is_some());
    assert!(s.vms_handed_over.is_empty(), "{:?}", s.vms_handed_over);
    let moved = s.apply(&Command::MoveVm {
        id: "v".into(),
        to: 2,
        record: true,
        unused_outdated: vec![],
    });
    let CommandResult::PlacementVersion(_) = moved else {
        panic!("the move was not applied: {moved:?}")
    };
    assert_eq!(s.vms_handed_over.get("v"), Some(&1));
    // Survives a snapshot of the state; an older state without the field reads as empty.
    let json = serde_json::to_string(&s).unwrap();
    let reloaded: ClusterState = serde_json::from_str(&json).unwrap();
    assert_eq!(reloaded.vms_handed_over.get("v"), Some(&1));
    let bare = serde_json::to_value(init()).unwrap();
    assert!(bare.get("vms_handed_over").is_none(), "{bare}");
    let older: ClusterState = serde_json::from_value(bare).unwrap();
    assert!(older.vms_handed_over.is_empty());
    // Node 2 is lost and 3 takes its disks over: v was taken over from 2, not handed.
    let r = s.apply(&Command::MoveVdisks { from: 2, to: 3 });
    assert!(placement_version(&r).is_some(), "{r:?}");
    assert_eq!(s.vms["v"].node, Some(3));
    assert!(s.vms_handed_over.is_empty(), "{:?}", s.vms_handed_over);
    // Deleting a VM drops its record.
    s.vms_handed_over.insert("w".into(), 1);
    assert_eq!(
        s.apply(&Command::DeleteVm { id: "w".into() }),
        CommandResult::Ok
    );
    assert!(s.vms_handed_over.is_empty());
}
