//! A planned move of one virtual disk (`cairn vdisk takeover NAME --to NODE`) and each member's
//! real lease state in `cluster status`, with real processes: two data nodes and a witness on
//! 127.0.0.2-4 (automatic takeover off, so only the planned move moves anything).
//!
//! On node a: disk `t` (written in full, snapshotted, rewritten in part) and disk `u`. The
//! refusals change nothing (unknown disk or node, a witness or the holder as target, a stopped
//! VM using the disk, an NBD export of it); then the move, asked on b (the target, not the
//! holder: the request is forwarded), with --force stopping the export. b then serves every
//! acknowledged write and the snapshot and takes new writes; a keeps serving `u` (its lease
//! stays valid: handing `t` over is not a takeover of a), drops its stale copy of `t` and
//! refuses to export it. Both nodes record the move as a node event in their audit log.
//! Lease column: each data member reports its own `held`; b killed shows `unreachable`.

mod common;

use common::{cli_at, in_sync, mirrored_pair, pattern, wait_until, ClusterProc, NbdClient};

const MIB: u64 = 1 << 20;
const VDISK_MIB: u64 = 16;

fn has_vdisk(p: &ClusterProc, name: &str) -> bool {
    p.ok(&["vdisk", "list"])["value"]
        .as_array()
        .is_some_and(|l| l.iter().any(|v| v["name"] == name))
}

fn nbd(p: &ClusterProc, args: &[&str]) -> NbdClient {
    let mut a = vec!["vdisk", "nbd"];
    a.extend_from_slice(args);
    let x = p.ok(&a);
    let addr = x["value"]["listen"].as_str().unwrap().to_string();
    let export = x["value"]["export_name"].as_str().unwrap().to_string();
    NbdClient::connect(&addr, &export).unwrap()
}

fn check_all(c: &mut NbdClient, model: &[u8], what: &str) {
    for i in 0..VDISK_MIB {
        let got = c.read(i * MIB, MIB as usize).unwrap();
        assert!(
            got[..] == model[(i * MIB) as usize..((i + 1) * MIB) as usize],
            "MiB {i}: {what}: read differs from what was acknowledged"
        );
    }
}

/// Small flushed writes with a recorded pattern into `model`.
fn scribble(c: &mut NbdClient, model: &mut [u8], seed: u64, n: u64) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    for k in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let blocks = 1 + (x >> 40) % 8;
        let off = (x % (VDISK_MIB * MIB / 4096 - blocks)) * 4096;
        let d = pattern(seed * 1000 + k, (blocks * 4096) as usize);
        c.write(off, &d).unwrap();
        model[off as usize..off as usize + d.len()].copy_from_slice(&d);
    }
    c.flush().unwrap();
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

fn lease_of(s: &serde_json::Value, name: &str) -> String {
    s["members"]
        .as_array()
        .and_then(|m| m.iter().find(|x| x["name"] == name))
        .and_then(|x| x["lease"].as_str())
        .unwrap_or("")
        .to_string()
}

fn audit(p: &ClusterProc) -> String {
    std::fs::read_to_string(p.data.join("audit.log")).unwrap_or_default()
}

#[test]
fn a_vdisk_moves_on_purpose_and_each_members_lease_is_real() {
    // Inherited by the node processes (this file is its own test binary): nothing but the
    // planned move may move a disk here.
    std::env::set_var("CAIRN_TAKEOVER_DELAY_MS", "off");
    let tmp = tempfile::Builder::new()
        .prefix("cairn-vtakeover-")
        .tempdir()
        .unwrap();
    let (a, mut b, w) = mirrored_pair(tmp.path());

    // Each data member reports its own lease: both hold one (two data nodes + a witness).
    wait_until(30, "a and b reporting held leases", || {
        let s = a.status();
        lease_of(&s, "a") == "held" && lease_of(&s, "b") == "held"
    });
    assert_eq!(lease_of(&b.status(), "a"), "held");
    assert_eq!(lease_of(&a.status(), "w"), "not_needed");

    a.ok(&["vdisk", "create", "t", &format!("{VDISK_MIB}M")]);
    a.ok(&["vdisk", "create", "u", "4M"]);
    let mut model = vec![0u8; (VDISK_MIB * MIB) as usize];
    {
        let mut c = nbd(&a, &["t"]);
        for i in 0..VDISK_MIB {
            let d = pattern(100 + i, MIB as usize);
            c.write(i * MIB, &d).unwrap();
            model[(i * MIB) as usize..((i + 1) * MIB) as usize].copy_from_slice(&d);
        }
        c.flush().unwrap();
    }
    a.ok(&["snapshot", "create", "t", "s1"]);
    let snap_model = model.clone();
    // The export stays open: it is in the way of the move below until --force.
    let mut live = nbd(&a, &["t"]);
    scribble(&mut live, &mut model, 1, 100);
    wait_until(30, "a's replicas on b in sync", || in_sync(&a.status(), 2));

    // Refusals, each changing nothing.
    let e = refused(&a, &["vdisk", "takeover", "nope", "--to", "b"], 3);
    assert!(e.contains("no virtual disk nope"), "{e}");
    let e = refused(&a, &["vdisk", "takeover", "t", "--to", "zz"], 3);
    assert!(e.contains("no cluster member zz"), "{e}");
    let e = refused(&a, &["vdisk", "takeover", "t", "--to", "w"], 2);
    assert!(e.contains("witness"), "{e}");
    let e = refused(&b, &["vdisk", "takeover", "t", "--to", "a"], 4);
    assert!(e.contains("already served by a"), "{e}");
    let kernel = tmp.path().join("not-a-kernel.bin");
    std::fs::write(&kernel, [0u8; 4096]).unwrap();
    a.ok(&[
        "vm",
        "create",
        "v",
        "--disk",
        "t",
        "--kernel",
        kernel.to_str().unwrap(),
    ]);
    let e = refused(&a, &["vdisk", "takeover", "t", "--to", "b"], 4);
    assert!(e.contains("attached to VM v (stopped)"), "{e}");
    a.ok(&["vm", "delete", "v"]);
    // Asked on b: forwarded to a, which refuses because of the export.
    let e = refused(&b, &["vdisk", "takeover", "t", "--to", "b"], 4);
    assert!(e.contains("exported over NBD"), "{e}");
    assert!(has_vdisk(&a, "t") && !has_vdisk(&b, "t"));
    scribble(&mut live, &mut model, 2, 50);
    check_all(&mut live, &model, "on a after the refusals");
    wait_until(30, "a's replicas on b in sync", || in_sync(&a.status(), 2));

    // The move, asked on b with --force: a stops the export, flushes, commits; b adopts and
    // serves; the command returns once b serves the disk.
    let moved = b.ok(&["vdisk", "takeover", "t", "--to", "b", "--force"]);
    assert_eq!(moved["value"]["name"], "t", "{moved}");
    assert_eq!(moved["value"]["size_bytes"], VDISK_MIB * MIB, "{moved}");
    assert!(has_vdisk(&b, "t"));
    // The old export is gone: its connection fails rather than serving anything.
    assert!(live.read(0, 4096).is_err(), "a's export of t still answers");
    drop(live);
    // Nor can a new export on a serve its stale copy (before or after a drops it).
    let e = refused(&a, &["vdisk", "nbd", "t"], 4);
    assert!(e.contains("served by node"), "{e}");
    {
        let mut c = nbd(&b, &["t"]);
        check_all(&mut c, &model, "on b after the move");
        scribble(&mut c, &mut model, 3, 100);
        check_all(&mut c, &model, "on b after writing there");
    }
    {
        let mut c = nbd(&b, &["t", "--snapshot", "s1", "--read-only"]);
        check_all(&mut c, &snap_model, "snapshot s1 on b");
    }
    // a keeps serving its other disk: handing t over did not close its gate.
    {
        let mut c = nbd(&a, &["u"]);
        let d = pattern(7, 4096);
        c.write(0, &d).unwrap();
        c.flush().unwrap();
        assert_eq!(c.read(0, 4096).unwrap(), d);
    }
    wait_until(40, "a dropping its stale copy of t", || !has_vdisk(&a, "t"));
    let e = refused(&a, &["vdisk", "nbd", "t"], 4);
    assert!(e.contains("served by node"), "{e}");
    assert_eq!(lease_of(&a.status(), "a"), "held", "{}", a.log());
    let log_a = a.log();
    assert!(
        !log_a.contains("assigns this node's virtual disks to another member"),
        "a's lease closed its gate over a planned move:\n{log_a}"
    );
    assert!(audit(&a).contains("\"vdisk_move\""), "{}", audit(&a));
    assert!(audit(&b).contains("\"vdisk_adopt\""), "{}", audit(&b));
    assert!(audit(&b).contains("\"vdisk_takeover\""), "{}", audit(&b));
    // b's mirror of t onto a is complete again.
    wait_until(60, "b's replicas on a in sync", || in_sync(&b.status(), 2));

    // A member that does not answer shows as unreachable, within the status call's bound.
    b.kill9();
    wait_until(30, "a showing b's lease unreachable", || {
        lease_of(&a.status(), "b") == "unreachable"
    });
    drop(w);
}
