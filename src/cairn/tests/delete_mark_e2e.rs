//! A clustered node marks a virtual disk delete in `DATA/deleting/NAME` before the cluster
//! releases the name, so that a delete cut short (kill -9 between the release and the engine's
//! delete) is settled at the next start by what the cluster says: finished if the record is
//! gone, the disk kept if it is not. Never named again under a name another member may hold.
//! Creates are marked in `DATA/creating/NAME` likewise: only a marked reservation without a
//! disk is released at start (an unmarked one was assigned by a takeover, not adopted yet).
//! (The finished case needs a kill between the two steps: the fault cycles of `cluster_faults`
//! reach it; this test covers the kept case and a mark left without a disk.)

mod common;

use std::time::{Duration, Instant};

use common::faults::vdisks;
use common::{cli_at, ClusterProc};

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(30), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_marked_delete_the_cluster_never_released_keeps_the_disk() {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-delmark-")
        .tempdir()
        .unwrap();
    let mut a = ClusterProc::start(tmp.path(), "a", "127.0.0.2", false);
    a.ok(&["vdisk", "create", "keep", "16M"]);
    wait_until("the cluster records keep", || {
        vdisks(&a.status()).contains(&"keep".to_string())
    });
    a.stop();
    // As a delete killed before its release committed leaves it, and one for a disk that is
    // not here (killed after the engine's delete, before the mark went).
    let marks = a.data.join("deleting");
    std::fs::create_dir_all(&marks).unwrap();
    std::fs::write(marks.join("keep"), b"").unwrap();
    std::fs::write(marks.join("gone"), b"").unwrap();
    // A create mark of a create that finished (its disk is here): dropped, the disk kept.
    let creating = a.data.join("creating");
    std::fs::create_dir_all(&creating).unwrap();
    std::fs::write(creating.join("keep"), b"").unwrap();
    a.restart();
    wait_until("the start-up reconcile settles both marks", || {
        !marks.join("keep").exists()
            && !marks.join("gone").exists()
            && !creating.join("keep").exists()
    });
    assert_eq!(cli_at(&a.data, &["vdisk", "show", "keep"]).code, 0);
    assert!(vdisks(&a.status()).contains(&"keep".to_string()));
    let log = a.log();
    assert!(
        log.contains("a delete cut short before the cluster released the name"),
        "{log}"
    );
    // Ordinary creates and deletes leave no mark behind.
    a.ok(&["vdisk", "create", "other", "16M"]);
    assert!(!creating.join("other").exists());
    a.ok(&["vdisk", "delete", "keep"]);
    assert!(!marks.join("keep").exists());
    assert_ne!(cli_at(&a.data, &["vdisk", "show", "keep"]).code, 0);
}
