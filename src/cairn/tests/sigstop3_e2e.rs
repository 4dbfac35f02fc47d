//! A hung node (SIGSTOP) among three data nodes, as real processes on 127.0.0.31-33 with a short
//! takeover delay and isolation lease. Node a owns a virtual disk that an NBD client writes
//! continuously (every acknowledgement recorded) and a test guest's disk. a is stopped: one of
//! b and c takes both disks over — its `cluster status` shows them waiting for adoption while
//! a's lease may still run — and serves every acknowledged write. When a resumes, its lease has
//! run out: the write it was answering when it stopped is not acknowledged from a stale copy, a
//! read on its old connection gets an error (never the bytes the new owner replaced), its VM is
//! paused (never resumed) and dropped, and its copies are dropped.
//!
//! Also checks that the lease length is the cluster's: b and c are started with another
//! `CAIRN_LEASE_MS` than a (which created the cluster); they warn and use a's.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::{in_sync, pattern, wait_until, ClusterProc, NbdClient};

const MIB: u64 = 1 << 20;
const VDISK_MIB: u64 = 16;
/// What the writer writes at a time.
const BLOCK: u64 = 64 * 1024;
const DELAY_MS: u64 = 4000;
const LEASE_MS: u64 = 3000;
/// What b and c are started with (the cluster's value must win).
const OTHER_LEASE_MS: u64 = 9000;

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn has_vdisk(p: &ClusterProc, name: &str) -> bool {
    p.ok(&["vdisk", "list"])["value"]
        .as_array()
        .is_some_and(|l| l.iter().any(|v| v["name"] == name))
}

fn vm(p: &ClusterProc, name: &str) -> Option<serde_json::Value> {
    let o = common::cli_at(&p.data, &["--json", "vm", "show", name]);
    (o.code == 0).then(|| o.json()["value"].clone())
}

fn nbd(p: &ClusterProc, name: &str) -> NbdClient {
    let x = p.ok(&["vdisk", "nbd", name]);
    let addr = x["value"]["listen"].as_str().unwrap().to_string();
    let export = x["value"]["export_name"].as_str().unwrap().to_string();
    NbdClient::connect(&addr, &export).unwrap()
}

/// The seed of block `i` in round `r`.
fn seed(r: u64, i: u64) -> u64 {
    1_000_000 + r * 1000 + i
}

/// What the writer saw: each block's last acknowledged seed, and the block it was writing when
/// it stopped (that one may hold either version).
#[derive(Default)]
struct Acked {
    last: Vec<Option<u64>>,
    in_flight: Option<(u64, u64)>,
    writes: u64,
    error: Option<String>,
}

/// Writes `BLOCK`s round after round over the disk until an error or `stop`.
fn writer(mut c: NbdClient, acked: Arc<Mutex<Acked>>, stop: Arc<AtomicBool>) {
    let blocks = VDISK_MIB * MIB / BLOCK;
    for r in 0.. {
        for i in 0..blocks {
            if stop.load(Ordering::Acquire) {
                return;
            }
            let s = seed(r, i);
            acked.lock().unwrap().in_flight = Some((i, s));
            match c.write(i * BLOCK, &pattern(s, BLOCK as usize)) {
                Ok(()) => {
                    let mut a = acked.lock().unwrap();
                    a.last[i as usize] = Some(s);
                    a.in_flight = None;
                    a.writes += 1;
                }
                Err(e) => {
                    acked.lock().unwrap().error = Some(e.to_string());
                    return;
                }
            }
        }
    }
}

#[test]
fn a_hung_node_is_taken_over_and_serves_nothing_stale_when_it_resumes() {
    let started = Instant::now();
    // Inherited by the node processes (this file is its own test binary).
    std::env::set_var("CAIRN_TAKEOVER_DELAY_MS", DELAY_MS.to_string());
    std::env::set_var("CAIRN_LEASE_WAIT_MS", "2000");
    std::env::set_var("CAIRN_LEASE_MS", LEASE_MS.to_string());
    let kvm = kvm_usable();
    let tmp = tempfile::Builder::new()
        .prefix("cairn-sigstop3-")
        .tempdir()
        .unwrap();
    let root = tmp.path();
    let a = ClusterProc::start(root, "a", "127.0.0.31", false);
    std::env::set_var("CAIRN_LEASE_MS", OTHER_LEASE_MS.to_string());
    let b = ClusterProc::start(root, "b", "127.0.0.32", false);
    let c = ClusterProc::start(root, "c", "127.0.0.33", false);
    b.join(&a);
    c.join(&a);
    wait_until(90, "every data node mirroring onto the other two", || {
        [&a, &b, &c].iter().all(|p| in_sync(&p.status(), 4))
    });
    println!("three data nodes mirroring after {:?}", started.elapsed());

    // One lease length for the cluster: a's, though b and c were started with another.
    wait_until(
        30,
        "every node holding a lease of the cluster's length",
        || {
            [&a, &b, &c].iter().all(|p| {
                let s = p.status();
                s["lease"]["state"] == "held" && s["lease"]["length_ms"] == LEASE_MS
            })
        },
    );
    for p in [&b, &c] {
        assert!(
            p.log()
                .contains("CAIRN_LEASE_MS differs from the cluster's lease length"),
            "{} did not warn about its CAIRN_LEASE_MS:\n{}",
            p.name,
            p.log()
        );
    }
    assert!(!a.log().contains("differs from the cluster's lease length"));
    // Each member reports its own lease (asked over the member transport): all three hold one
    // once their first renewals are in.
    wait_until(30, "every member reporting a held lease", || {
        let s = a.status();
        let rows = s["members"].as_array().cloned().unwrap_or_default();
        rows.len() == 3 && rows.iter().all(|m| m["lease"] == "held")
    });
    let table = common::cli_at(&a.data, &["cluster", "status"]).stdout;
    assert!(
        table.contains("LEASE") && table.contains("lease (this node, L = 3.0 s): held"),
        "{table}"
    );

    // a's disks: one written continuously, one a guest's.
    a.ok(&["vdisk", "create", "hs", &format!("{VDISK_MIB}M")]);
    a.ok(&["vdisk", "create", "hs-vm", "16M"]);
    a.ok(&[
        "vm",
        "create",
        "hung",
        "--memory",
        "32M",
        "--disk",
        "hs-vm",
        "--kernel",
        test_guests::guest_elf_path(),
        "--cmdline",
        "wait-shutdown",
    ]);
    if kvm {
        a.ok(&["vm", "start", "hung"]);
        wait_until(30, "the guest running on a", || {
            vm(&a, "hung").is_some_and(|v| v["state"] == "running")
        });
    } else {
        println!("skipped: /dev/kvm not usable; only the VM definition's move is checked");
    }
    let blocks = (VDISK_MIB * MIB / BLOCK) as usize;
    let acked = Arc::new(Mutex::new(Acked {
        last: vec![None; blocks],
        ..Default::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let writer_thread = {
        let (c, acked, stop) = (nbd(&a, "hs"), acked.clone(), stop.clone());
        std::thread::spawn(move || writer(c, acked, stop))
    };
    // A reader on a, used after a resumes.
    let mut stale_reader = nbd(&a, "hs");
    // The whole disk written at least once, and its replicas described to b and c.
    wait_until(120, "every block written once and mirrored", || {
        let done = {
            let w = acked.lock().unwrap();
            // A writer that stopped on an error would only show up as this wait's timeout.
            if let Some(e) = &w.error {
                panic!("the writer on a failed after {} writes: {e}", w.writes);
            }
            w.writes >= blocks as u64 + 8
        };
        done && in_sync(&a.status(), 4)
    });
    let cluster_id = a.status()["cluster_id"].as_str().unwrap().to_string();
    for p in [&b, &c] {
        let described = p
            .data
            .join("mirror")
            .join(&cluster_id)
            .join("described.json");
        wait_until(30, "the others holding a's descriptions", || {
            std::fs::read_to_string(&described)
                .is_ok_and(|s| s.contains("\"hs\"") && s.contains("\"hs-vm\""))
        });
    }
    assert!(acked.lock().unwrap().error.is_none());

    // a hangs.
    a.signal("-STOP");
    let t0 = Instant::now();
    let a_log_len = a.log().len();
    println!(
        "a stopped after {:?}, {} writes acknowledged",
        started.elapsed(),
        acked.lock().unwrap().writes
    );
    // The survivor shows the disks waiting for adoption before it serves them.
    let mut seen_waiting = None;
    wait_until(
        DELAY_MS / 1000 + 60,
        "one survivor taking the disks over",
        || {
            for p in [&b, &c] {
                let s = p.status();
                if let Some(w) = s["lease"]["awaiting_adoption"]
                    .as_array()
                    .and_then(|l| l.iter().find(|x| x["vdisk"] == "hs").cloned())
                {
                    seen_waiting.get_or_insert((p.name.clone(), w));
                }
            }
            [&b, &c]
                .iter()
                .any(|p| has_vdisk(p, "hs") && has_vdisk(p, "hs-vm"))
        },
    );
    println!("takeover after {:?}", t0.elapsed());
    let (owner, other) = if has_vdisk(&b, "hs") {
        (&b, &c)
    } else {
        (&c, &b)
    };
    let (who, w) = seen_waiting.expect("no status showed hs waiting for adoption");
    println!("{who} showed {w}");
    assert_eq!(
        who, owner.name,
        "the disk waited on the node that did not adopt it"
    );
    assert!(w["id"].as_str().unwrap().ends_with("/hs"), "{w}");
    let hold = LEASE_MS + 2000;
    assert!(w["held_for_ms"].as_u64().unwrap() <= hold, "{w}");
    assert!(w["held_until_unix_ms"].as_u64().unwrap() > 0, "{w}");
    // Members see a down; the survivors still hold their leases.
    let s = owner.status();
    assert_eq!(s["lease"]["state"], "held", "{s}");
    assert!(!has_vdisk(other, "hs"));

    // Every acknowledged write is on the new owner.
    let model = {
        let a = acked.lock().unwrap();
        a.last
            .iter()
            .map(|x| x.expect("every block was written"))
            .collect::<Vec<u64>>()
    };
    let in_flight = acked.lock().unwrap().in_flight;
    let mut n = nbd(owner, "hs");
    for (i, s) in model.iter().enumerate() {
        let got = n.read(i as u64 * BLOCK, BLOCK as usize).unwrap();
        let ok = got == pattern(*s, BLOCK as usize)
            || in_flight
                .is_some_and(|(fi, fs)| fi == i as u64 && got == pattern(fs, BLOCK as usize));
        assert!(ok, "block {i}: the new owner lost an acknowledged write");
    }
    // The new owner replaces block 0; a must never show the old bytes again.
    let fresh = pattern(7_777_777, BLOCK as usize);
    n.write(0, &fresh).unwrap();
    n.flush().unwrap();
    if kvm {
        wait_until(60, "the guest running on the new owner", || {
            vm(owner, "hung").is_some_and(|v| v["state"] == "running")
        });
    } else {
        wait_until(60, "the guest defined on the new owner", || {
            vm(owner, "hung").is_some()
        });
    }
    println!("new owner serving after {:?}", t0.elapsed());

    // a resumes: its lease ran out while it was stopped.
    a.signal("-CONT");
    let old = pattern(model[0], BLOCK as usize);
    match stale_reader.read(0, BLOCK as usize) {
        Ok(got) => {
            assert!(got != old, "a served the bytes the new owner replaced");
            assert!(got == fresh, "a served bytes nobody wrote there");
        }
        Err(e) => println!("a's old connection: read refused: {e}"),
    }
    stop.store(true, Ordering::Release);
    writer_thread.join().unwrap();
    {
        let a_state = acked.lock().unwrap();
        println!("writer ended: {:?}", a_state.error);
        // The write a was answering when it stopped may have completed; every write after it
        // failed: a accepted nothing new on a stale copy.
        assert!(a_state.error.is_some(), "the writer went on writing to a");
        // A write a acknowledged after it resumed (the one it was answering when it stopped)
        // must be on the new owner too.
        for (i, s) in a_state.last.iter().enumerate() {
            let s = s.unwrap();
            if s != model[i] {
                let got = n.read(i as u64 * BLOCK, BLOCK as usize).unwrap();
                assert!(
                    got == pattern(s, BLOCK as usize),
                    "block {i}: a acknowledged a write after resuming that the new owner lacks"
                );
            }
        }
    }
    wait_until(60, "a dropping its stale copies and the guest", || {
        !has_vdisk(&a, "hs") && !has_vdisk(&a, "hs-vm") && vm(&a, "hung").is_none()
    });
    let after = a.log()[a_log_len..].to_string();
    assert!(after.contains("isolation lease: not valid"), "{after}");
    if kvm {
        assert!(after.contains("isolation lease: VM paused"), "{after}");
    }
    assert!(!after.contains("isolation lease: VM resumed"), "{after}");
    if kvm {
        assert_eq!(vm(owner, "hung").unwrap()["state"], "running");
        owner.ok(&["vm", "stop", "hung", "--force"]);
    }
    // What the nodes did by themselves is in their audit logs (and, with the API, its event
    // list: api_node_events).
    let audit =
        |p: &ClusterProc| std::fs::read_to_string(p.data.join("audit.log")).unwrap_or_default();
    let owner_audit = audit(owner);
    for action in ["vdisk_takeover", "vdisk_adopt", "vm_takeover"] {
        assert!(
            owner_audit.contains(&format!("\"action\":\"{action}\"")),
            "no {action} in the new owner's audit log:\n{owner_audit}"
        );
    }
    if kvm {
        assert!(
            owner_audit.contains("\"action\":\"vm_ha_restart\""),
            "{owner_audit}"
        );
        let a_audit = audit(&a);
        assert!(
            a_audit.contains("\"action\":\"vm_moved_away\""),
            "{a_audit}"
        );
    }
    assert!(!audit(other).contains("vdisk_takeover"));
    println!("done in {:?}", started.elapsed());
}
