//! A planned move whose commit ends without an answer, with real processes (two data nodes
//! and a witness on 127.0.0.2-4, automatic takeover off). Node a's first and third move
//! proposals are held back (`CAIRN_TEST_MOVE_FAULTS=late`) and proposed only after a settled
//! the outcome — a copy delayed in the network past the mover's decision; its second and
//! fourth commit and lose their answer (`lost-reply`). (The hook is read by debug builds only:
//! in a release build this test says it is skipped.)
//!
//! A held-back move must end "not committed" and stay so when its late copy reaches the
//! leader: the VM (or disk) stays on a, and the next move of it goes through. A move whose
//! answer was lost must be finished as the committed move it is: the command succeeds, the
//! target serves the disks and has the VM, a no longer has it.

mod common;

use common::{cli_at, in_sync, mirrored_pair, wait_until, ClusterProc};

fn has_vdisk(p: &ClusterProc, name: &str) -> bool {
    p.ok(&["vdisk", "list"])["value"]
        .as_array()
        .is_some_and(|l| l.iter().any(|v| v["name"] == name))
}

/// `vm show NAME` on `p`, or None when the VM is not defined there.
fn vm(p: &ClusterProc, name: &str) -> Option<serde_json::Value> {
    let o = cli_at(&p.data, &["--json", "vm", "show", name]);
    (o.code == 0).then(|| o.json()["value"].clone())
}

/// `cairn ARGS` on `p` must fail with exit code `code`; returns stderr.
fn refused(p: &ClusterProc, args: &[&str], code: i32) -> String {
    let o = cli_at(&p.data, args);
    assert_eq!(
        o.code, code,
        "{}: cairn {args:?} should exit {code}: {}{}",
        p.name, o.stdout, o.stderr
    );
    o.stderr
}

/// Waits until a's log shows `n` held-back proposals answered by the cluster.
fn late_copies_answered(a: &ClusterProc, n: usize) {
    wait_until(
        30,
        "the held-back move proposal reaching the leader",
        || {
            a.log()
                .matches("the held-back move proposal was answered")
                .count()
                >= n
        },
    );
}

#[test]
fn a_move_whose_commit_went_unanswered_ends_as_the_cluster_recorded_it() {
    if !cfg!(debug_assertions) {
        println!("skipped: the move fault hook is read by debug builds only");
        return;
    }
    // Inherited by the node processes (this file is its own test binary).
    std::env::set_var("CAIRN_TAKEOVER_DELAY_MS", "off");
    std::env::set_var("CAIRN_TEST_MOVE_FAULTS", "late,lost-reply,late,lost-reply");
    let started = std::time::Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("cairn-moveoutcome-")
        .tempdir()
        .unwrap();
    let (a, b, w) = mirrored_pair(tmp.path());
    let guest = test_guests::guest_elf_path();
    a.ok(&["vdisk", "create", "cairn-test-disk-mo", "4M"]);
    a.ok(&["vdisk", "create", "solo", "4M"]);
    a.ok(&[
        "vm",
        "create",
        "g",
        "--memory",
        "32M",
        "--disk",
        "cairn-test-disk-mo",
        "--kernel",
        guest,
    ]);
    wait_until(30, "a's replicas on b in sync", || in_sync(&a.status(), 2));

    // 1. Held back: not committed, and the late copy changes nothing.
    let e = refused(&a, &["vm", "move", "g", "--to", "b"], 7);
    assert!(e.contains("moving VM g was not committed"), "{e}");
    late_copies_answered(&a, 1);
    assert!(vm(&a, "g").is_some(), "g left a");
    assert!(vm(&b, "g").is_none(), "g defined on b");
    assert!(has_vdisk(&a, "cairn-test-disk-mo"));
    // 2. The answer is lost: finished as committed. (Refused here if the late copy of 1 had
    // moved the VM after a gave it up.)
    let moved = a.ok(&["vm", "move", "g", "--to", "b"]);
    assert_eq!(moved["value"]["name"], "g", "{moved}");
    assert!(vm(&a, "g").is_none(), "g still defined on a");
    assert!(vm(&b, "g").is_some(), "g not defined on b");
    assert!(
        has_vdisk(&b, "cairn-test-disk-mo"),
        "b does not serve g's disk"
    );

    // 3. and 4. The same for a disk alone.
    let e = refused(&a, &["vdisk", "takeover", "solo", "--to", "b"], 7);
    assert!(e.contains("moving solo was not committed"), "{e}");
    late_copies_answered(&a, 2);
    assert!(
        has_vdisk(&a, "solo") && !has_vdisk(&b, "solo"),
        "solo moved"
    );
    let moved = a.ok(&["vdisk", "takeover", "solo", "--to", "b"]);
    assert_eq!(moved["value"]["name"], "solo", "{moved}");
    assert!(has_vdisk(&b, "solo"), "b does not serve solo");
    let log = a.log();
    assert_eq!(
        log.matches("the move's answer is dropped").count(),
        2,
        "both lost answers were injected:\n{log}"
    );
    println!("done after {:?}", started.elapsed());
    drop(w);
}
