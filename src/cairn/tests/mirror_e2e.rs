//! Mirrored I/O across real node processes: two data nodes and a witness on 127.0.0.2-4. A
//! virtual disk made on node a gets one replica of every chunk on b's disks; a writer on a's
//! NBD export keeps writing through repeated faults of b (kill -9 + restart, SIGSTOP +
//! SIGCONT), every write acknowledged; only the chunks written while b was away are resynced;
//! nothing acknowledged is lost; and after a clean stop both nodes' disks hold byte-identical
//! replicas.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    compare_copies, in_sync, mirrored_pair, open_node_engine, pattern, remotes, wait_until,
    NbdClient,
};

const MIB: u64 = 1 << 20;
const VDISK_MIB: u64 = 64;
/// The writer only touches the first chunks, so "only what changed is resynced" is visible.
const HOT_CHUNKS: u64 = 12;
/// Budget for fault cycles.
const FAULT_BUDGET: Duration = Duration::from_secs(45);

fn resynced(s: &serde_json::Value) -> u64 {
    remotes(s)
        .iter()
        .map(|x| x["resynced_chunks"].as_u64().unwrap())
        .sum()
}

struct WriterOut {
    model: Vec<u8>,
    writes: u64,
    worst: Duration,
}

/// Writes random 4-64 KiB runs into the hot chunks until `stop`, flushing every 16 writes;
/// every acknowledged write goes into the model. Any failed write fails the test.
fn writer(
    addr: String,
    export: String,
    mut model: Vec<u8>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> std::thread::JoinHandle<WriterOut> {
    std::thread::spawn(move || {
        let mut c = NbdClient::connect(&addr, &export).expect("nbd connect");
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut worst = Duration::ZERO;
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let blocks = 1 + (x >> 40) % 16;
            let off = (x % (HOT_CHUNKS * MIB / 4096 - blocks)) * 4096;
            let data = pattern(1000 + n, (blocks * 4096) as usize);
            let t = Instant::now();
            c.write(off, &data)
                .unwrap_or_else(|e| panic!("write {n} at {off} failed: {e}"));
            if n % 16 == 15 {
                c.flush()
                    .unwrap_or_else(|e| panic!("flush after write {n} failed: {e}"));
            }
            worst = worst.max(t.elapsed());
            model[off as usize..off as usize + data.len()].copy_from_slice(&data);
            n += 1;
            acked.store(n, Ordering::SeqCst);
        }
        c.flush().expect("final flush");
        WriterOut {
            model,
            writes: n,
            worst,
        }
    })
}

/// Waits until the writer acknowledged `more` writes beyond its count now.
fn writes_continue(acked: &AtomicU64, more: u64, what: &str) {
    let from = acked.load(Ordering::SeqCst);
    wait_until(10, what, || acked.load(Ordering::SeqCst) >= from + more);
}

#[test]
fn mirrored_vdisk_survives_repeated_peer_faults() {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("cairn-mirror-")
        .tempdir()
        .unwrap();
    let root = tmp.path();
    // Each data node attaches the other's two disks as remote replicas.
    let (mut a, mut b, w) = mirrored_pair(root);
    let sa = a.status();
    let epoch_a = sa["data"]["write_epoch"].as_u64().unwrap();
    assert!(epoch_a > 0, "a writes with a raft-assigned epoch: {sa}");
    let me_a = sa["me"].as_u64().unwrap();
    let cluster_id = sa["cluster_id"].as_str().unwrap().to_string();
    println!("cluster mirroring after {:?}", started.elapsed());

    // A virtual disk on a, written in full through NBD.
    let v = a.ok(&["vdisk", "create", "m", &format!("{VDISK_MIB}M")]);
    let vid = v["value"]["id"].as_u64().unwrap();
    let x = a.ok(&["vdisk", "nbd", "m"]);
    let addr = x["value"]["listen"].as_str().unwrap().to_string();
    let export = x["value"]["export_name"].as_str().unwrap().to_string();
    let mut model = vec![0u8; (VDISK_MIB * MIB) as usize];
    {
        let mut c = NbdClient::connect(&addr, &export).unwrap();
        assert_eq!(c.size, VDISK_MIB * MIB);
        for i in 0..VDISK_MIB {
            let d = pattern(i, MIB as usize);
            c.write(i * MIB, &d).unwrap();
            model[(i * MIB) as usize..((i + 1) * MIB) as usize].copy_from_slice(&d);
        }
        c.flush().unwrap();
    }
    // Every chunk has its second replica on b's disks.
    wait_until(20, "b holding a replica of every chunk", || {
        b.status()["data"]["hosted_chunks"].as_u64() == Some(VDISK_MIB)
    });
    // a's view of its replicas (reachability comes from its failure detector: under load a
    // heartbeat can be late for a moment), waited for rather than read once.
    wait_until(20, "a's replicas on b in sync", || in_sync(&a.status(), 2));
    // b's replica server records a's epoch for the disk durably (fencing).
    let epochs: Vec<(u64, u64)> = serde_json::from_slice(
        &std::fs::read(b.data.join("mirror").join(&cluster_id).join("epochs.json")).unwrap(),
    )
    .unwrap();
    let key = mirror::wire::hosted_id(me_a, vid);
    assert!(
        epochs.contains(&(key, epoch_a)),
        "b's epoch table {epochs:?} lacks a's disk at epoch {epoch_a}"
    );
    println!("vdisk written and mirrored after {:?}", started.elapsed());

    // Faults of b while a writer keeps going.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let wr = writer(
        addr.clone(),
        export.clone(),
        model,
        stop.clone(),
        acked.clone(),
    );
    writes_continue(&acked, 20, "the writer starting");
    let t0 = Instant::now();
    let (mut kills, mut stops) = (0u32, 0u32);
    let mut resynced_total = 0u64;
    while t0.elapsed() < FAULT_BUDGET {
        let before = resynced(&a.status());
        let kill = (kills + stops).is_multiple_of(2);
        if kill {
            b.kill9();
            writes_continue(&acked, 30, "writes while b is dead");
            let s = a.status();
            assert!(
                remotes(&s).iter().all(|r| r["reachability"] == "away"),
                "b's replicas should be away: {s}"
            );
            assert!(s["data"]["stale_chunks"].as_u64().unwrap() >= 1, "{s}");
            b.restart();
            kills += 1;
        } else {
            b.signal("-STOP");
            // Past the mirror call timeout the writer goes on with a alone.
            std::thread::sleep(Duration::from_millis(2500));
            writes_continue(&acked, 30, "writes while b is hung");
            b.signal("-CONT");
            stops += 1;
        }
        wait_until(40, "a's replicas on b resynced", || in_sync(&a.status(), 2));
        let after = resynced(&a.status());
        let delta = after - before;
        assert!(
            (1..=HOT_CHUNKS).contains(&delta),
            "cycle {}: {delta} chunks resynced; only the {HOT_CHUNKS} the writer touches may be",
            kills + stops
        );
        resynced_total += delta;
    }
    stop.store(true, Ordering::SeqCst);
    let out = wr.join().expect("writer");
    let cycles = kills + stops;
    println!(
        "fault cycles: {cycles} ({kills} kill -9, {stops} SIGSTOP) in {:?}; {} writes acknowledged, worst write+flush {:?}; {resynced_total} chunks resynced",
        t0.elapsed(),
        out.writes,
        out.worst
    );
    assert!(cycles >= 4, "only {cycles} fault cycles fitted");
    assert!(
        out.worst < Duration::from_secs(8),
        "a write stalled {:?}",
        out.worst
    );
    wait_until(40, "final resync", || in_sync(&a.status(), 2));

    // No acknowledged write lost: every byte reads back as the model says.
    {
        let mut c = NbdClient::connect(&addr, &export).unwrap();
        for i in 0..VDISK_MIB {
            let got = c.read(i * MIB, MIB as usize).unwrap();
            assert!(
                got[..] == out.model[(i * MIB) as usize..((i + 1) * MIB) as usize],
                "chunk {i}: read differs from what was acknowledged"
            );
        }
    }
    let text = common::cli_at(&a.data, &["cluster", "status"]).stdout;
    assert!(
        text.contains("remote replica") && text.contains("write epoch"),
        "{text}"
    );
    println!("{text}");

    // The owner itself crashes: after its restart it writes with a newer epoch from raft, so
    // b now refuses anything the dead incarnation might still have had in flight.
    a.kill9();
    a.restart();
    wait_until(40, "a mirroring again after its restart", || {
        in_sync(&a.status(), 2)
    });
    let epoch_a2 = a.status()["data"]["write_epoch"].as_u64().unwrap();
    assert!(
        epoch_a2 > epoch_a,
        "epoch {epoch_a2} after restart, {epoch_a} before"
    );
    println!("owner restarted: write epoch {epoch_a} -> {epoch_a2}");
    let mut model = out.model;
    {
        let x = a.ok(&["vdisk", "nbd", "m"]);
        let addr = x["value"]["listen"].as_str().unwrap().to_string();
        let export = x["value"]["export_name"].as_str().unwrap().to_string();
        let mut c = NbdClient::connect(&addr, &export).unwrap();
        let d = pattern(7777, 8192);
        c.write(3 * MIB, &d).unwrap();
        c.flush().unwrap();
        model[(3 * MIB) as usize..(3 * MIB) as usize + d.len()].copy_from_slice(&d);
        for i in 0..VDISK_MIB {
            let got = c.read(i * MIB, MIB as usize).unwrap();
            assert!(
                got[..] == model[(i * MIB) as usize..((i + 1) * MIB) as usize],
                "chunk {i}: wrong after the owner's crash and restart"
            );
        }
    }
    let epochs: Vec<(u64, u64)> = serde_json::from_slice(
        &std::fs::read(b.data.join("mirror").join(&cluster_id).join("epochs.json")).unwrap(),
    )
    .unwrap();
    assert!(
        epochs.contains(&(key, epoch_a2)),
        "b's epoch table {epochs:?} lacks a's disk at its new epoch {epoch_a2}"
    );
    wait_until(40, "resync after the owner's restart", || {
        let s = a.status();
        in_sync(&s, 2) && s["data"]["rebuilding"] == false
    });

    // a restarts while b is down: b's disks (never reached since the start) are listed away
    // and the data is not called redundant; when b is back, its copies catch up.
    b.stop();
    a.kill9();
    a.restart();
    wait_until(30, "b's disks away on a after its restart", || {
        let s = a.status();
        let r = remotes(&s);
        r.len() == 2
            && r.iter()
                .all(|x| x["reachability"] == "away" && x["since_start"] == true)
    });
    let text = common::cli_at(&a.data, &["cluster", "status"]).stdout;
    assert!(text.contains("data: not redundant while 2 of"), "{text}");
    b.restart();
    wait_until(60, "a's replicas on b in sync after both came back", || {
        let s = a.status();
        in_sync(&s, 2) && s["data"]["rebuilding"] == false
    });
    let text = common::cli_at(&a.data, &["cluster", "status"]).stdout;
    assert!(text.contains("fully redundant"), "{text}");

    // Both replicas byte-identical: stop cleanly, then compare the two nodes' disks.
    a.stop();
    b.stop();
    drop(w);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let compared = rt.block_on(compare_replicas(
        &a.data,
        &b.data,
        vid,
        mirror::wire::hosted_id(me_a, vid),
        &model,
    ));
    assert_eq!(compared, VDISK_MIB, "every chunk compared on both nodes");
    println!("done in {:?}", started.elapsed());
}

/// Opens each node's disk files in this process and compares every chunk of the virtual disk:
/// a's own copy, b's hosted copy and the model must agree byte for byte. Returns chunks compared.
async fn compare_replicas(
    a: &std::path::Path,
    b: &std::path::Path,
    vid: u64,
    hosted: u64,
    model: &[u8],
) -> u64 {
    let ea = open_node_engine(a).await;
    let eb = open_node_engine(b).await;
    let compared = compare_copies(&ea, vid, &eb, hosted, model, VDISK_MIB).await;
    ea.shutdown().await.unwrap();
    eb.shutdown().await.unwrap();
    compared
}
