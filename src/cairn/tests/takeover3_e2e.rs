//! Surviving the loss of a node with three data nodes, as real processes on 127.0.0.21-23 with
//! a short takeover delay and isolation lease. A virtual disk made on node a is written in full
//! through NBD and snapshotted; its chunks' second replicas are spread over b and c. A test
//! guest runs on a second disk of a (when KVM is usable). a is killed -9: exactly one of b and c takes both
//! disks over, gathering the chunks it lacks from the other over the mirror transport; every
//! acknowledged byte and the snapshot read back from it, and the guest runs there. The other
//! survivor drops its retired copy. When a returns it drops its stale copies and runs nothing;
//! after re-mirroring, each chunk has exactly two copies on two nodes, both what was
//! acknowledged.

mod common;

use std::path::Path;
use std::time::Instant;

use common::{in_sync, open_node_engine, pattern, wait_until, ClusterProc, NbdClient};

const MIB: u64 = 1 << 20;
const VDISK_MIB: u64 = 32;
const DELAY_MS: u64 = 4000;
const LEASE_MS: u64 = 3000;

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn has_vdisk(p: &ClusterProc, name: &str) -> Option<u64> {
    p.ok(&["vdisk", "list"])["value"]
        .as_array()
        .and_then(|l| l.iter().find(|v| v["name"] == name).cloned())
        .map(|v| v["id"].as_u64().unwrap())
}

/// `vm show NAME` on `p`, or None when the VM is not defined there.
fn vm(p: &ClusterProc, name: &str) -> Option<serde_json::Value> {
    let o = common::cli_at(&p.data, &["--json", "vm", "show", name]);
    (o.code == 0).then(|| o.json()["value"].clone())
}

fn hosted(p: &ClusterProc) -> u64 {
    p.status()["data"]["hosted_chunks"].as_u64().unwrap_or(0)
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
            "chunk {i}: {what}: read differs from what was acknowledged"
        );
    }
}

/// Three data nodes under `root`, joined, each mirroring onto the other two's disks.
fn three_data_nodes(root: &Path) -> [ClusterProc; 3] {
    let a = ClusterProc::start(root, "a", "127.0.0.21", false);
    let b = ClusterProc::start(root, "b", "127.0.0.22", false);
    let c = ClusterProc::start(root, "c", "127.0.0.23", false);
    b.join(&a);
    c.join(&a);
    wait_until(60, "every data node mirroring onto the other two", || {
        [&a, &b, &c].iter().all(|p| in_sync(&p.status(), 4))
    });
    [a, b, c]
}

#[test]
fn with_three_data_nodes_one_survivor_takes_a_lost_nodes_disks_and_vms_over() {
    let started = Instant::now();
    // Inherited by the node processes this test starts (this file is its own test binary).
    // The survivor serves a moved disk only once the old owner's isolation lease surely ran
    // out (`node::lease`): a shorter lease than the default keeps the test short.
    std::env::set_var("CAIRN_TAKEOVER_DELAY_MS", DELAY_MS.to_string());
    std::env::set_var("CAIRN_LEASE_MS", LEASE_MS.to_string());
    let kvm = kvm_usable();
    let tmp = tempfile::Builder::new()
        .prefix("cairn-takeover3-")
        .tempdir()
        .unwrap();
    let root = tmp.path();
    let [mut a, mut b, mut c] = three_data_nodes(root);
    let me_a = a.status()["me"].as_u64().unwrap();
    let cluster_id = a.status()["cluster_id"].as_str().unwrap().to_string();
    println!("three data nodes mirroring after {:?}", started.elapsed());

    // The disk: written in full, snapshotted, partly rewritten.
    let vid_a = a.ok(&["vdisk", "create", "t3", &format!("{VDISK_MIB}M")])["value"]["id"]
        .as_u64()
        .unwrap();
    let mut model = vec![0u8; (VDISK_MIB * MIB) as usize];
    {
        let mut n = nbd(&a, &["t3"]);
        for i in 0..VDISK_MIB {
            let d = pattern(300 + i, MIB as usize);
            n.write(i * MIB, &d).unwrap();
            model[(i * MIB) as usize..((i + 1) * MIB) as usize].copy_from_slice(&d);
        }
        n.flush().unwrap();
    }
    a.ok(&["snapshot", "create", "t3", "s1"]);
    let snap_model = model.clone();
    {
        let mut n = nbd(&a, &["t3"]);
        for i in (0..VDISK_MIB).step_by(3) {
            let off = i * MIB + 64 * 1024;
            let d = pattern(900 + i, 20 * 4096);
            n.write(off, &d).unwrap();
            model[off as usize..off as usize + d.len()].copy_from_slice(&d);
        }
        n.flush().unwrap();
    }
    // A guest on its own disk of a.
    a.ok(&["vdisk", "create", "t3-vm", "16M"]);
    a.ok(&[
        "vm",
        "create",
        "web3",
        "--memory",
        "32M",
        "--disk",
        "t3-vm",
        "--kernel",
        test_guests::guest_elf_path(),
        "--cmdline",
        "wait-shutdown",
    ]);
    if kvm {
        a.ok(&["vm", "start", "web3"]);
        wait_until(30, "web3 running on a", || {
            vm(&a, "web3").is_some_and(|v| v["state"] == "running")
        });
    } else {
        println!("skipped: /dev/kvm not usable; only the VM definition's move is checked");
    }
    // Both survivors hold parts of the disk (each chunk's second replica is on b or c) and
    // a's description of both disks.
    wait_until(30, "a's replicas in sync, every chunk on b or c", || {
        in_sync(&a.status(), 4) && hosted(&b) + hosted(&c) >= VDISK_MIB
    });
    let (hb, hc) = (hosted(&b), hosted(&c));
    assert!(hb > 0 && hc > 0, "b holds {hb} chunks, c {hc}");
    for p in [&b, &c] {
        let described = p
            .data
            .join("mirror")
            .join(&cluster_id)
            .join("described.json");
        wait_until(20, "the survivors holding a's descriptions", || {
            std::fs::read_to_string(&described)
                .is_ok_and(|s| s.contains("\"t3\"") && s.contains("\"t3-vm\"") && s.contains("s1"))
        });
    }
    println!("written, mirrored, described after {:?}", started.elapsed());

    a.kill9();
    let t0 = Instant::now();
    wait_until(
        DELAY_MS / 1000 + 40,
        "one survivor taking the disks over",
        || {
            [&b, &c]
                .iter()
                .any(|p| has_vdisk(p, "t3").is_some() && has_vdisk(p, "t3-vm").is_some())
        },
    );
    let took = t0.elapsed();
    println!("takeover after {took:?} (delay {DELAY_MS} ms)");
    let (owner, other) = if has_vdisk(&b, "t3").is_some() {
        (&b, &c)
    } else {
        (&c, &b)
    };
    println!("{} took over", owner.name);
    let log = owner.log();
    assert!(log.contains("takeover: committed"), "{log}");
    // The adopting node fetched the chunks it lacked from the other survivor.
    let adopted = log
        .lines()
        .find(|l| l.contains("virtual disk t3 adopted from the held copies"))
        .unwrap_or_else(|| panic!("no adoption line for t3:\n{log}"))
        .to_string();
    println!("{adopted}");
    assert!(
        adopted.contains("gathered from 1 other holders") && !adopted.contains(", 0 gathered"),
        "nothing gathered from the other survivor: {adopted}"
    );
    // Exactly one owner: the other survivor neither serves the disks nor took anything over,
    // and drops the copy it held once the new owner has recorded the disk.
    wait_until(30, "the other survivor dropping its retired copy", || {
        other
            .log()
            .contains("the copy of virtual disk t3 held here was adopted by member")
    });
    assert_eq!(has_vdisk(other, "t3"), None);
    assert_eq!(has_vdisk(other, "t3-vm"), None);
    assert!(!other.log().contains("takeover: committed"));

    let vid = has_vdisk(owner, "t3").unwrap();
    {
        let mut n = nbd(owner, &["t3"]);
        check_all(&mut n, &model, "on the new owner");
        let off = 5 * MIB + 4096;
        let d = pattern(4242, 8192);
        n.write(off, &d).unwrap();
        n.flush().unwrap();
        model[off as usize..off as usize + d.len()].copy_from_slice(&d);
    }
    {
        let mut n = nbd(owner, &["t3", "--snapshot", "s1", "--read-only"]);
        check_all(&mut n, &snap_model, "snapshot s1 on the new owner");
    }
    if kvm {
        wait_until(40, "web3 running on the new owner", || {
            vm(owner, "web3").is_some_and(|v| v["state"] == "running")
        });
        println!(
            "web3 running on {} {:?} after the kill",
            owner.name,
            t0.elapsed()
        );
        assert!(
            vm(other, "web3").is_none(),
            "web3 defined on both survivors"
        );
    } else {
        wait_until(40, "web3 defined on the new owner", || {
            vm(owner, "web3").is_some()
        });
    }

    // a returns: it drops its stale copies, runs nothing, and becomes a mirror again.
    a.restart();
    wait_until(40, "a dropping its stale copies", || {
        has_vdisk(&a, "t3").is_none() && has_vdisk(&a, "t3-vm").is_none()
    });
    assert!(vm(&a, "web3").is_none(), "a still defines web3");
    wait_until(60, "the new owner's disks mirrored again", || {
        in_sync(&owner.status(), 4) && owner.status()["data"]["degraded_chunks"] == 0
    });
    if kvm {
        assert_eq!(vm(owner, "web3").unwrap()["state"], "running");
        owner.ok(&["vm", "stop", "web3", "--force"]);
    }
    println!("a back, re-mirrored after {:?}", started.elapsed());
    for p in [&a, &b, &c] {
        for l in p.log().lines().filter(|l| {
            l.contains("node::takeover") || l.contains("node::harestart") || l.contains("outdated")
        }) {
            println!("{}: {l}", p.name);
        }
    }

    let owner_name = owner.name.clone();
    let me_owner = owner.status()["me"].as_u64().unwrap();
    for p in [&mut a, &mut b, &mut c] {
        p.stop();
    }
    let (owner_dir, others): (&Path, Vec<&Path>) = match owner_name.as_str() {
        "b" => (&b.data, vec![&a.data, &c.data]),
        _ => (&c.data, vec![&a.data, &b.data]),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(compare(
        owner_dir,
        &others,
        vid,
        mirror::wire::hosted_id(me_owner, vid),
        mirror::wire::hosted_id(me_a, vid_a),
        &model,
    ));
    println!("done in {:?}", started.elapsed());
}

/// Every chunk has exactly two copies, on two nodes — the owner's own and a hosted one on
/// one of the others, or hosted ones on both — each what was acknowledged; no node keeps
/// anything of a's old disk.
async fn compare(
    owner: &Path,
    others: &[&Path],
    vid: u64,
    hosted: u64,
    old_hosted: u64,
    model: &[u8],
) {
    let eo = open_node_engine(owner).await;
    let mut ex = Vec::new();
    for p in others {
        ex.push(open_node_engine(p).await);
    }
    let mut copies: Vec<Vec<(usize, Vec<u8>)>> = vec![Vec::new(); VDISK_MIB as usize];
    for (n, (e, vd)) in std::iter::once((&eo, vid))
        .chain(ex.iter().map(|e| (e, hosted)))
        .enumerate()
    {
        for (_, r) in e.local_replicas() {
            for o in r.objects() {
                assert!(o.vdisk != old_hosted, "node {n} kept a's old copy: {o}");
                if o.vdisk == vd && o.chunk < VDISK_MIB {
                    let buf = r.read(o, 0, 256, u64::MAX).await.unwrap();
                    copies[o.chunk as usize].push((n, buf[..MIB as usize].to_vec()));
                }
            }
        }
    }
    for (chunk, cs) in copies.iter().enumerate() {
        let nodes: std::collections::BTreeSet<usize> = cs.iter().map(|(n, _)| *n).collect();
        assert!(
            cs.len() == 2 && nodes.len() == 2,
            "chunk {chunk}: copies on nodes {:?}",
            cs.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        let want = &model[chunk * MIB as usize..(chunk + 1) * MIB as usize];
        for (n, d) in cs {
            assert!(
                d == want,
                "chunk {chunk}: the copy on node {n} is not what was acknowledged"
            );
        }
    }
    eo.shutdown().await.unwrap();
    for e in ex {
        e.shutdown().await.unwrap();
    }
}
