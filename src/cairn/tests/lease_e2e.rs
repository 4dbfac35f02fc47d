//! The isolation lease with real processes in network namespaces: two data nodes a and b and
//! a witness, a short lease (CAIRN_LEASE_MS) and takeover delay. a owns a virtual disk with
//! known bytes (read over NBD inside a's namespace with qemu-io) and runs a test guest.
//!
//! 1. A brief cut of a's link (healed as soon as a is seen isolated, well before the takeover
//!    delay): a stops serving reads and pauses its VM; after healing both resume, and no
//!    takeover happened.
//! 2. A long cut: a stops serving and pauses; b takes the disks over only after the lease
//!    hold, runs the VM and writes new bytes; a never returns its old bytes after that write
//!    was acknowledged. After healing, a drops its stale copy and forgets the VM.
//!
//! Every wait is on an observed state, with generous limits (a loaded 2-core machine).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::faults::{member_health, poll, Cluster, Lan};
use common::{cli_at, ClusterProc};

const LEASE_MS: u64 = 3000;
const WAIT_MS: u64 = 1500;
const DELAY_MS: u64 = 15000;
const OLD: u8 = 0xa1;
const NEW: u8 = 0xb2;

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn vm_state(p: &ClusterProc, name: &str) -> Option<String> {
    let o = cli_at(&p.data, &["--json", "vm", "show", name]);
    (o.code == 0).then(|| {
        o.json()["value"]["state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    })
}

fn has_vdisk(p: &ClusterProc, name: &str) -> bool {
    p.ok(&["vdisk", "list"])["value"]
        .as_array()
        .is_some_and(|l| l.iter().any(|v| v["name"] == name))
}

/// An NBD export of `vdisk` on `p` (inside its namespace, on its loopback): the URI.
fn export(p: &ClusterProc, vdisk: &str) -> String {
    let x = p.ok(&["vdisk", "nbd", vdisk]);
    format!(
        "nbd://{}/{}",
        x["value"]["listen"].as_str().unwrap(),
        x["value"]["export_name"].as_str().unwrap()
    )
}

/// What one qemu-io command inside `ns` against `uri` did.
#[derive(Debug, PartialEq, Eq)]
enum Io {
    /// Done (a read matched the pattern).
    Ok,
    /// A read returned other bytes than the pattern.
    Mismatch,
    /// The request or the connection failed.
    Failed(String),
}

fn qemu_io(ns: &str, uri: &str, cmd: &str) -> Io {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "qemu-io", "-f", "raw", "-c", cmd, uri])
        .output()
        .expect("run qemu-io");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if out.contains("Pattern verification failed") {
        Io::Mismatch
    } else if o.status.success()
        && (out.contains("read ") || out.contains("wrote "))
        && !out.contains("failed")
    {
        Io::Ok
    } else {
        Io::Failed(out.trim().to_string())
    }
}

fn read_old(ns: &str, uri: &str) -> Io {
    qemu_io(ns, uri, &format!("read -P {OLD:#x} 0 64k"))
}

/// The (only) test here: both scenarios on one cluster (2 cores host one cluster at a time).
#[test]
fn a_cut_off_owner_stops_serving_and_pauses_and_resumes_after_a_brief_cut() {
    let started = Instant::now();
    if !common::have("qemu-io") {
        println!("skipped: qemu-io (qemu-utils) is not installed");
        return;
    }
    let lan = match Lan::new(3) {
        Ok(l) => l,
        Err(e) => {
            println!("skipped: cannot make network namespaces here: {e}");
            return;
        }
    };
    // Inherited by the node processes (this file is its own test binary).
    std::env::set_var("CAIRN_LEASE_MS", LEASE_MS.to_string());
    std::env::set_var("CAIRN_LEASE_WAIT_MS", WAIT_MS.to_string());
    std::env::set_var("CAIRN_TAKEOVER_DELAY_MS", DELAY_MS.to_string());
    let kvm = kvm_usable();
    let tmp = tempfile::Builder::new()
        .prefix("cairn-lease-")
        .tempdir()
        .unwrap();
    let c = Cluster::form(
        tmp.path(),
        &[("a", false), ("b", false), ("w", true)],
        Some(lan),
    );
    let lan = c.lan.as_ref().unwrap();
    let (a, b) = (&c.procs[0], &c.procs[1]);
    let (ns_a, ns_b) = (lan.ns(0).to_string(), lan.ns(1).to_string());
    poll(
        Duration::from_secs(60),
        "both data nodes mirroring onto each other",
        || (common::in_sync(&a.status(), 2) && common::in_sync(&b.status(), 2)).then_some(()),
    );

    a.ok(&["vdisk", "create", "lv", "16M"]);
    let uri_a = export(a, "lv");
    let w = qemu_io(&ns_a, &uri_a, &format!("write -P {OLD:#x} 0 64k"));
    assert_eq!(w, Io::Ok, "writing the known bytes on a");
    assert_eq!(read_old(&ns_a, &uri_a), Io::Ok);
    a.ok(&["vdisk", "create", "lv-vm", "16M"]);
    a.ok(&[
        "vm",
        "create",
        "web",
        "--memory",
        "32M",
        "--disk",
        "lv-vm",
        "--kernel",
        test_guests::guest_elf_path(),
        "--cmdline",
        "wait-shutdown",
    ]);
    if kvm {
        a.ok(&["vm", "start", "web"]);
        poll(Duration::from_secs(30), "web running on a", || {
            (vm_state(a, "web").as_deref() == Some("running")).then_some(())
        });
    } else {
        println!("skipped: /dev/kvm not usable; the VM pause/resume checks are left out");
    }
    poll(Duration::from_secs(60), "a's replicas on b in sync", || {
        common::in_sync(&a.status(), 2).then_some(())
    });
    let cluster_id = a.status()["cluster_id"].as_str().unwrap().to_string();
    let described = b
        .data
        .join("mirror")
        .join(&cluster_id)
        .join("described.json");
    poll(
        Duration::from_secs(30),
        "b holding a's descriptions",
        || {
            std::fs::read_to_string(&described)
                .is_ok_and(|s| s.contains("\"lv\"") && s.contains("lv-vm"))
                .then_some(())
        },
    );
    println!("set up in {:?}", started.elapsed());

    // 1. A brief cut: a stops serving and pauses, then resumes; no takeover.
    lan.cut(0);
    let t0 = Instant::now();
    poll(Duration::from_secs(30), "a refusing to serve reads", || {
        match read_old(&ns_a, &uri_a) {
            Io::Ok => None, // the lease may still be valid for up to LEASE_MS
            Io::Mismatch => panic!("a returned wrong bytes"),
            Io::Failed(why) => Some(why),
        }
    });
    let refused_after = t0.elapsed();
    if kvm {
        poll(Duration::from_secs(30), "web paused on a", || {
            (vm_state(a, "web").as_deref() == Some("paused")).then_some(())
        });
    }
    let isolated_after = t0.elapsed();
    lan.heal(0);
    println!("brief cut: reads refused after {refused_after:?}, isolated after {isolated_after:?}, healed");
    poll(
        Duration::from_secs(40),
        "a serving reads again",
        || match read_old(&ns_a, &uri_a) {
            Io::Ok => Some(()),
            Io::Mismatch => panic!("a returned wrong bytes after the brief cut"),
            Io::Failed(_) => None,
        },
    );
    if kvm {
        poll(Duration::from_secs(30), "web running again on a", || {
            (vm_state(a, "web").as_deref() == Some("running")).then_some(())
        });
    }
    println!(
        "brief cut: a serving again {:?} after the cut",
        t0.elapsed()
    );
    // No takeover, even once the takeover delay (and the hold) has passed since the cut: b
    // must see a up again, and nothing may have been committed meanwhile.
    poll(Duration::from_secs(30), "b seeing a up again", || {
        (member_health(&b.status(), "a") == "up").then_some(())
    });
    let quiet = Duration::from_millis(DELAY_MS + LEASE_MS) + Duration::from_secs(3);
    while t0.elapsed() < quiet {
        assert!(
            !b.log().contains("takeover: committed"),
            "a brief cut led to a takeover"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !b.log().contains("takeover: committed"),
        "a brief cut led to a takeover"
    );
    assert!(has_vdisk(a, "lv") && !has_vdisk(b, "lv"));
    assert!(
        a.log().contains("isolation lease: VM paused") || !kvm,
        "a did not log pausing its VM"
    );
    poll(
        Duration::from_secs(60),
        "a's replicas on b in sync again",
        || common::in_sync(&a.status(), 2).then_some(()),
    );

    // 2. A long cut: b takes over after the hold, writes; a never returns the old bytes.
    lan.cut(0);
    let t1 = Instant::now();
    poll(
        Duration::from_secs(30),
        "a refusing to serve reads",
        || match read_old(&ns_a, &uri_a) {
            Io::Ok => None,
            Io::Mismatch => panic!("a returned wrong bytes"),
            Io::Failed(_) => Some(()),
        },
    );
    if kvm {
        poll(Duration::from_secs(30), "web paused on a", || {
            (vm_state(a, "web").as_deref() == Some("paused")).then_some(())
        });
    }
    println!("long cut: a isolated {:?} after the cut", t1.elapsed());
    poll(
        Duration::from_millis(DELAY_MS) + Duration::from_secs(60),
        "b serving the adopted disk",
        || has_vdisk(b, "lv").then_some(()),
    );
    println!("long cut: b adopted lv {:?} after the cut", t1.elapsed());
    let log_b = b.log();
    assert!(
        log_b.contains("waiting for the old owner's isolation lease to run out"),
        "b adopted without the lease hold"
    );
    let uri_b = export(b, "lv");
    assert_eq!(
        read_old(&ns_b, &uri_b),
        Io::Ok,
        "b's adopted copy lacks a's bytes"
    );
    let w = qemu_io(&ns_b, &uri_b, &format!("write -P {NEW:#x} 0 64k"));
    assert_eq!(w, Io::Ok, "b writing new bytes");
    // Acknowledged on b: from here a must never return its old bytes.
    for _ in 0..3 {
        match read_old(&ns_a, &uri_a) {
            Io::Failed(_) => {}
            other => panic!("a served its stale copy after b's write: {other:?}"),
        }
    }
    if kvm {
        poll(Duration::from_secs(40), "web running on b", || {
            (vm_state(b, "web").as_deref() == Some("running")).then_some(())
        });
        assert_eq!(vm_state(a, "web").as_deref(), Some("paused"));
    }

    // Healing: a drops its stale copy and forgets the VM; b's bytes are the disk's.
    lan.heal(0);
    poll(Duration::from_secs(60), "a dropping its stale copy", || {
        (!has_vdisk(a, "lv") && !has_vdisk(a, "lv-vm")).then_some(())
    });
    poll(Duration::from_secs(30), "a forgetting web", || {
        vm_state(a, "web").is_none().then_some(())
    });
    match read_old(&ns_a, &uri_a) {
        Io::Failed(_) => {}
        other => panic!("a served its dropped copy: {other:?}"),
    }
    assert_eq!(
        qemu_io(&ns_b, &uri_b, &format!("read -P {NEW:#x} 0 64k")),
        Io::Ok,
        "b lost its write"
    );
    if kvm {
        assert_eq!(vm_state(b, "web").as_deref(), Some("running"));
    }
    for l in b.log().lines().filter(|l| l.contains("takeover")) {
        println!("b: {l}");
    }
    println!("done in {:?}", started.elapsed());
}
