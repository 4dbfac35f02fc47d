//! A planned move still unsettled when its mover restarts, with real processes (two data nodes
//! and a witness on 127.0.0.2-4, automatic takeover off). Node a's `vm move` proposal is
//! dropped and its outcome left unknown (`CAIRN_TEST_MOVE_FAULTS=unknown`), and settling is
//! held while the file `CAIRN_TEST_SETTLE_HOLD` names exists (both debug builds only).
//!
//! The move is kept in a's `DATA/move-settles.json`: killed -9 and back up, a still refuses to
//! start the VM, export its disk or delete either ("move outcome not known yet"). Once settling
//! is let go, a finds the move never committed: the entry is removed and the VM starts on a,
//! not on b.
//! (Kept only in a's memory before, the claim was lost with the restart: the VM could start on
//! a while the move might still commit and make it b's.)

mod common;

use common::{cli_at, in_sync, mirrored_pair, wait_until, ClusterProc};

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

/// The request ids in `p`'s unsettled moves file (none when it is missing).
fn pending(p: &ClusterProc) -> Vec<String> {
    match std::fs::read(p.data.join("move-settles.json")) {
        Ok(b) => {
            let v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&b).expect("move-settles.json is a JSON object");
            v.keys().cloned().collect()
        }
        Err(_) => Vec::new(),
    }
}

/// Neither the VM nor its disk may be used, changed or deleted on `a` while the move is
/// unsettled.
fn claimed(a: &ClusterProc) {
    let e = refused(a, &["vm", "start", "g"], 7);
    assert!(e.contains("move outcome not known yet"), "{e}");
    let e = refused(a, &["vdisk", "nbd", "cairn-test-disk-ms"], 7);
    assert!(e.contains("move outcome not known yet"), "{e}");
    let e = refused(a, &["vdisk", "delete", "cairn-test-disk-ms"], 7);
    assert!(e.contains("move outcome not known yet"), "{e}");
    assert!(e.contains("cannot be deleted here"), "{e}");
    let e = refused(a, &["vm", "delete", "g"], 7);
    assert!(e.contains("cannot be deleted here"), "{e}");
}

#[test]
fn an_unsettled_move_keeps_its_claim_across_a_restart_and_is_settled_after() {
    if !cfg!(debug_assertions) {
        println!("skipped: the move fault hooks exist in debug builds only");
        return;
    }
    let started = std::time::Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("cairn-movesettle-")
        .tempdir()
        .unwrap();
    let hold = tmp.path().join("settle-hold");
    std::fs::write(&hold, b"").unwrap();
    // Inherited by the node processes (this file is its own test binary).
    std::env::set_var("CAIRN_TAKEOVER_DELAY_MS", "off");
    std::env::set_var("CAIRN_TEST_MOVE_FAULTS", "unknown");
    std::env::set_var("CAIRN_TEST_SETTLE_HOLD", &hold);
    let (mut a, b, w) = mirrored_pair(tmp.path());
    let guest = test_guests::guest_elf_path();
    a.ok(&["vdisk", "create", "cairn-test-disk-ms", "4M"]);
    a.ok(&[
        "vm",
        "create",
        "g",
        "--memory",
        "32M",
        "--disk",
        "cairn-test-disk-ms",
        "--kernel",
        guest,
    ]);
    wait_until(30, "a's replicas on b in sync", || in_sync(&a.status(), 2));

    let e = refused(&a, &["vm", "move", "g", "--to", "b"], 7);
    assert!(e.contains("is not known yet"), "{e}");
    assert!(!e.contains("could not be saved"), "{e}");
    let kept = pending(&a);
    assert_eq!(kept.len(), 1, "{kept:?}");
    claimed(&a);

    a.kill9();
    a.restart();
    assert_eq!(pending(&a), kept, "the unsettled move survives the restart");
    claimed(&a);
    assert!(
        a.log().contains("claimed again and settled now"),
        "{}",
        a.log()
    );

    // Let it settle: the proposal was dropped, so the cluster records that it never moved.
    std::fs::remove_file(&hold).unwrap();
    wait_until(30, "a settling the move", || pending(&a).is_empty());
    let v = a.ok(&["vm", "start", "g"]);
    assert_eq!(v["value"]["state"], "running", "{v}");
    assert!(cli_at(&b.data, &["vm", "show", "g"]).code != 0, "g on b");
    assert!(
        a.log()
            .contains("planned VM move did not happen: the VM stays here"),
        "{}",
        a.log()
    );
    println!("done after {:?}", started.elapsed());
    drop(w);
}
