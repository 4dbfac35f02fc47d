//! Removing a data node drains it first: three data nodes as real processes on 127.0.0.5-7;
//! a virtual disk on a has its second replicas spread over b's and c's disks. `cairn cluster
//! remove c` marks c draining, a re-mirrors its chunks from c onto b, and only then c leaves
//! raft: afterwards b holds a replica of every chunk, nothing is degraded, the data reads
//! back. Removing b next is refused (one data node could not keep two replicas on two nodes)
//! and b stays a member. b owns a disk too: the removal (run on a) waits until b's chunks
//! are off c as well. While b is hung, a's status shows c's drain in progress as c reports it.

mod common;

use std::time::Instant;

use common::{cli_at, pattern, wait_until, ClusterProc, NbdClient};

const MIB: u64 = 1 << 20;
const VDISK_MIB: u64 = 24;

fn remotes_in_sync(s: &serde_json::Value, want: usize) -> bool {
    let r = s["data"]["remote_replicas"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    r.len() == want
        && r.iter()
            .all(|x| x["state"] == "active" && x["reachability"] == "up" && x["dirty_chunks"] == 0)
}

fn hosted(p: &ClusterProc) -> u64 {
    p.status()["data"]["hosted_chunks"].as_u64().unwrap_or(0)
}

fn members(p: &ClusterProc) -> Vec<String> {
    p.status()["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn remove_drains_the_node_first() {
    // Inherited by the node processes (this file is its own test binary): b hung for a while
    // below must not have its disk taken over.
    std::env::set_var("CAIRN_TAKEOVER_DELAY_MS", "off");
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("cairn-drain-")
        .tempdir()
        .unwrap();
    let root = tmp.path();
    let a = ClusterProc::start(root, "a", "127.0.0.5", false);
    let b = ClusterProc::start(root, "b", "127.0.0.6", false);
    let c = ClusterProc::start(root, "c", "127.0.0.7", false);
    b.join(&a);
    c.join(&a);
    wait_until(40, "a mirroring onto b's and c's disks", || {
        remotes_in_sync(&a.status(), 4)
    });
    println!("three data nodes mirroring after {:?}", started.elapsed());

    let x = a.ok(&["vdisk", "create", "m", &format!("{VDISK_MIB}M")]);
    assert_eq!(x["value"]["name"], "m");
    let x = a.ok(&["vdisk", "nbd", "m"]);
    let addr = x["value"]["listen"].as_str().unwrap().to_string();
    let export = x["value"]["export_name"].as_str().unwrap().to_string();
    let mut model = Vec::new();
    {
        let mut nbd = NbdClient::connect(&addr, &export).unwrap();
        for i in 0..VDISK_MIB {
            let d = pattern(500 + i, MIB as usize);
            nbd.write(i * MIB, &d).unwrap();
            model.extend_from_slice(&d);
        }
        nbd.flush().unwrap();
    }
    // With three data nodes a chunk's two replicas are on any two of them.
    wait_until(
        30,
        "every chunk with a replica on b or c, placement settled",
        || {
            let s = a.status();
            hosted(&b) + hosted(&c) >= VDISK_MIB
                && s["data"]["degraded_chunks"] == 0
                && s["data"]["rebuilding"] == false
        },
    );
    // b owns a disk too: its chunks on c must be drained before c leaves, whichever member
    // runs the removal.
    let x = b.ok(&["vdisk", "create", "n", "8M"]);
    assert_eq!(x["value"]["name"], "n");
    let x = b.ok(&["vdisk", "nbd", "n"]);
    let b_export_id = x["value"]["id"].as_u64().unwrap().to_string();
    let (b_addr, b_export) = (
        x["value"]["listen"].as_str().unwrap().to_string(),
        x["value"]["export_name"].as_str().unwrap().to_string(),
    );
    let mut b_model = Vec::new();
    {
        let mut nbd = NbdClient::connect(&b_addr, &b_export).unwrap();
        for i in 0..8 {
            let d = pattern(900 + i, MIB as usize);
            nbd.write(i * MIB, &d).unwrap();
            b_model.extend_from_slice(&d);
        }
        nbd.flush().unwrap();
    }
    wait_until(30, "b's chunks mirrored, placement settled", || {
        let s = b.status();
        remotes_in_sync(&s, 4)
            && s["data"]["degraded_chunks"] == 0
            && s["data"]["rebuilding"] == false
    });
    let on_c = hosted(&c);
    assert!(on_c > 0, "placement put nothing on c");

    // Drain and remove c: the command waits (printing progress) until c holds nothing. b is
    // hung (SIGSTOP) at first, so nothing can leave c yet (a's copies there can only go to b,
    // b's own cannot move): the drain is seen in progress, as c itself reports it, on the
    // status of a member that is not c, and on c's own.
    b.signal("-STOP");
    let t = Instant::now();
    let data = a.data.clone();
    let remover = std::thread::spawn(move || cli_at(&data, &["cluster", "remove", "c"]));
    let progress_of = |s: &serde_json::Value| {
        s["data"]["draining"]
            .as_array()
            .and_then(|d| d.iter().find(|x| x["name"] == "c"))
            .map(|x| x["progress"].clone())
            .unwrap_or_default()
    };
    let left = |p: &serde_json::Value| p["chunks_left"].as_u64().unwrap_or(0);
    wait_until(20, "a showing c's own drain progress", || {
        let p = progress_of(&a.status());
        left(&p) > 0 && p["chunks_at_start"].as_u64() >= p["chunks_left"].as_u64()
    });
    let p = progress_of(&c.status());
    assert!(left(&p) > 0, "c's own view of its drain: {p}");
    let text = cli_at(&a.data, &["cluster", "status"]).stdout;
    assert!(
        text.contains("draining c (member") && text.contains("chunks still on its disks"),
        "{text}"
    );
    b.signal("-CONT");
    let o = remover.join().expect("the remover thread");
    assert_eq!(o.code, 0, "remove c: {}{}", o.stdout, o.stderr);
    println!(
        "c ({on_c} chunks) drained and removed in {:?}; progress printed: {:?}",
        t.elapsed(),
        o.stderr.lines().last()
    );
    assert!(!members(&a).contains(&"c".to_string()), "c still a member");
    // Two nodes left: every chunk has one replica on a and one on b.
    assert_eq!(hosted(&b), VDISK_MIB, "b does not hold every chunk");
    let s = a.status();
    assert_eq!(s["data"]["degraded_chunks"], 0, "{s}");
    assert_eq!(s["data"]["draining"].as_array().map_or(0, |d| d.len()), 0);
    {
        let mut nbd = NbdClient::connect(&addr, &export).unwrap();
        for i in 0..VDISK_MIB {
            let back = nbd.read(i * MIB, MIB as usize).unwrap();
            let want = &model[(i * MIB) as usize..((i + 1) * MIB) as usize];
            assert!(back == want, "chunk {i} changed by the drain");
        }
    }

    // The removal ran on a, yet waited for b too: none of b's chunks lost its second copy.
    let sb = b.status();
    assert_eq!(
        sb["data"]["degraded_chunks"], 0,
        "b degraded after c left: {sb}"
    );
    {
        let mut nbd = NbdClient::connect(&b_addr, &b_export).unwrap();
        for i in 0..8u64 {
            let back = nbd.read(i * MIB, MIB as usize).unwrap();
            let want = &b_model[(i * MIB) as usize..((i + 1) * MIB) as usize];
            assert!(back == want, "b's chunk {i} changed by the drain");
        }
    }
    // b must own nothing for the refusal below to be about the node count.
    b.ok(&["nbd", "stop", &b_export_id]);
    b.ok(&["vdisk", "delete", "n"]);

    // Removing b would leave a alone: refused, b stays.
    let o = cli_at(&a.data, &["cluster", "remove", "b"]);
    assert_ne!(
        o.code, 0,
        "removing the second-last data node: {}",
        o.stdout
    );
    assert!(
        o.stderr.contains("data node") && o.stderr.contains("--force"),
        "{}",
        o.stderr
    );
    assert!(members(&a).contains(&"b".to_string()), "b removed anyway");
    let s = a.status();
    let b_state = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "b")
        .map(|m| m["state"].clone());
    assert_eq!(b_state, Some(serde_json::json!("active")), "{s}");
    println!("done in {:?}", started.elapsed());
}
