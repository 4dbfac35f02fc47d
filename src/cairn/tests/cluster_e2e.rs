//! Three real `cairn` processes on 127.0.0.x (two data nodes and a witness): create a cluster,
//! issue tokens, join, check `cairn cluster status`, then faults: kill -9 of a data node
//! (the other keeps committing; the dead one shows as down; on restart it catches up) and
//! SIGSTOP/SIGCONT of the leader (a new leader; nothing committed lost). Virtual disk
//! create/delete calls made by two clients during the faults are checked for linearizability.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::faults::{leader_id, member_health, member_name, vdisks};
use common::history::{assert_linearizable, final_reads, unissued_ops, Clients, Mix};
use common::{cli_at as cli, free_cluster_addr, wait_until as wait_for, ClusterProc as Proc};

#[test]
fn two_data_nodes_and_a_witness_survive_kill9_and_sigstop() {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("cairn-cluster-")
        .tempdir()
        .unwrap();
    let root = tmp.path();
    let mut a = Proc::start(root, "a", "127.0.0.2", false);
    let mut b = Proc::start(root, "b", "127.0.0.3", false);
    let w = Proc::start(root, "w", "127.0.0.4", true);

    // A node on its own is a cluster of one with itself as leader.
    let s = a.status();
    assert_eq!(s["members"].as_array().unwrap().len(), 1);
    assert_eq!(s["leader"], s["me"]);
    a.ok(&["vdisk", "create", "before", "16M"]);

    // Bad input: garbage token, unreachable member, witness without a cluster.
    let o = cli(
        &b.data,
        &[
            "cluster",
            "join",
            "--address",
            &a.addr.to_string(),
            "--token",
            "nope",
        ],
    );
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("token"), "{}", o.stderr);
    let dead = free_cluster_addr("127.0.0.9");
    let token = a.ok(&["cluster", "token"])["value"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let o = cli(
        &b.data,
        &[
            "cluster",
            "join",
            "--address",
            &dead.to_string(),
            "--token",
            &token,
        ],
    );
    assert_eq!(o.code, 7, "{}", o.stderr);
    assert!(o.stderr.contains("cannot reach"), "{}", o.stderr);
    let o = cli(&w.data, &["cluster", "token"]);
    assert_eq!(o.code, 7, "{}", o.stderr);
    // A node holding objects is not fresh: it may not join.
    let o = cli(
        &a.data,
        &[
            "cluster",
            "join",
            "--address",
            &b.addr.to_string(),
            "--token",
            &token,
        ],
    );
    assert_eq!(o.code, 4, "{}", o.stderr);

    // b joins with the token (still unused: the failed attempts never reached a member).
    b.ok(&[
        "cluster",
        "join",
        "--address",
        &a.addr.to_string(),
        "--token",
        &token,
    ]);
    // Joining again is refused with a clear error (already a member), as is a reused token.
    let o = cli(
        &b.data,
        &[
            "cluster",
            "join",
            "--address",
            &a.addr.to_string(),
            "--token",
            &token,
        ],
    );
    assert_eq!(o.code, 4, "{}", o.stderr);
    assert!(o.stderr.contains("already member"), "{}", o.stderr);
    let wtoken = b.ok(&["cluster", "token", "--witness"])["value"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    w.ok(&[
        "cluster",
        "join",
        "--address",
        &b.addr.to_string(),
        "--token",
        &wtoken,
    ]);
    let o = cli(&a.data, &["--json", "cluster", "status"]);
    assert_eq!(o.code, 0);
    wait_for(20, "3 active voters, all up, a leader", || {
        let s = a.status();
        let m = s["members"].as_array().unwrap();
        m.len() == 3
            && m.iter()
                .all(|x| x["voter"] == true && x["state"] == "active" && x["health"] == "up")
            && !s["leader"].is_null()
    });
    let text = cli(&a.data, &["cluster", "status"]).stdout;
    assert!(
        text.contains("witness") && text.contains("leader"),
        "{text}"
    );
    // Each data member reports its own figures with the status: its own two disks (not the
    // other member's, which its pool also uses), their size summed, memory; the witness none.
    let b_dir = b.data.display().to_string();
    wait_for(10, "b's figures in a's status", || {
        let s = a.status();
        let member = s["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "b")
            .cloned()
            .unwrap();
        let st = &member["stats"];
        let disks = st["disks"].as_array().cloned().unwrap_or_default();
        disks.len() == 2
            && disks
                .iter()
                .all(|d| d["path"].as_str().is_some_and(|p| p.starts_with(&b_dir)))
            && st["raw_bytes"] == 2 * (256u64 << 20)
            && st["mem_total_bytes"].as_u64().unwrap_or(0) > 0
    });
    let s = a.status();
    let w_stats = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "w")
        .map(|m| m["stats"].clone());
    assert_eq!(w_stats, Some(serde_json::Value::Null), "{s}");
    // a's pool lists b's disks too (it keeps copies there), marked remote; removing one from a
    // is refused in words (drained from a, the copies would only come back), nothing changes.
    let remote = || {
        a.ok(&["disk", "list"])["value"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["remote"] == true)
            .cloned()
    };
    wait_for(20, "b's disks in a's pool", || remote().is_some());
    let theirs = remote().unwrap();
    assert!(
        theirs["path"].as_str().unwrap().contains(&b_dir),
        "{theirs}"
    );
    let id = theirs["id"].as_str().unwrap();
    let o = cli(&a.data, &["disk", "remove", id]);
    assert_ne!(o.code, 0, "{}", o.stdout);
    assert!(o.stderr.contains("is on another member"), "{}", o.stderr);
    let after = a.ok(&["disk", "list"])["value"].clone();
    let same = after
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == theirs["id"])
        .cloned();
    assert_eq!(same.map(|d| d["state"].clone()), Some("active".into()));
    // Definitions are cluster-wide: b sees a's disk, and may not reuse its name.
    wait_for(10, "b sees a's vdisk", || {
        vdisks(&b.status()).contains(&"before".to_string())
    });
    let o = cli(&b.data, &["vdisk", "create", "before", "16M"]);
    assert_eq!(o.code, 4, "{}", o.stderr);
    println!("cluster formed in {:?}", started.elapsed());

    // Two clients, one per data node, race on the same names through both faults.
    let keys: Vec<String> = (0..4).map(|i| format!("k{i}")).collect();
    let mut clients = Clients::new();
    let mix = Mix {
        snapshots_and_clones: false,
        pause: Duration::from_millis(50),
    };
    // The clients keep calling through a dead node too (unknown outcomes are part of the test).
    let never_down = Arc::new(AtomicBool::new(false));
    clients.spawn(&a, &keys, mix, never_down.clone());
    clients.spawn(&b, &keys, mix, never_down);
    std::thread::sleep(Duration::from_secs(2));

    // Fault 1: kill -9 of the data node that leads (else of b).
    let s = a.status();
    let lname = member_name(&s, leader_id(&s).unwrap()).unwrap();
    let (victim, survivor) = if lname == "a" {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    victim.kill9();
    let t = Instant::now();
    survivor.ok(&["vdisk", "create", "after-kill", "16M"]);
    println!("commit with {} dead took {:?}", victim.name, t.elapsed());
    wait_for(15, "the dead node shown as down", || {
        member_health(&survivor.status(), &victim.name) == "down"
    });
    victim.restart();
    wait_for(30, "the restarted node catching up", || {
        vdisks(&victim.status()).contains(&"after-kill".to_string())
    });
    std::thread::sleep(Duration::from_secs(1));

    // Fault 2: SIGSTOP of the leader (whichever process it is), then SIGCONT.
    let s = survivor.status();
    let old_leader = leader_id(&s).unwrap();
    let lname = member_name(&s, old_leader).unwrap();
    let procs: [&Proc; 3] = [&a, &b, &w];
    let stopped = procs.iter().find(|p| p.name == lname).unwrap();
    let other = procs
        .iter()
        .find(|p| p.name != lname && !p.witness)
        .unwrap();
    stopped.signal("-STOP");
    let t = Instant::now();
    wait_for(20, "a new leader", || {
        leader_id(&other.status()).is_some_and(|l| l != old_leader)
    });
    println!("new leader after SIGSTOP in {:?}", t.elapsed());
    other.ok(&["vdisk", "create", "during-stop", "16M"]);
    std::thread::sleep(Duration::from_secs(2));
    stopped.signal("-CONT");
    std::thread::sleep(Duration::from_secs(2));
    let t0 = clients.t0;
    let mut ops = clients.finish();

    // Nothing committed is lost, and every member converges on the same state.
    let mut states = Vec::new();
    wait_for(30, "all members agreeing", || {
        states = procs.iter().map(|p| p.status()).collect();
        let c: Vec<_> = states.iter().map(|s| s["commit_index"].clone()).collect();
        let v: Vec<_> = states.iter().map(vdisks).collect();
        c.iter().all(|x| *x == c[0]) && v.iter().all(|x| *x == v[0])
    });
    let fin = vdisks(&states[0]);
    for must in ["before", "after-kill", "during-stop"] {
        assert!(fin.contains(&must.to_string()), "{must} lost: {fin:?}");
    }
    // Every name the cluster holds was created by one node only, and it exists there.
    for k in &keys {
        let held: Vec<bool> = [&a, &b]
            .iter()
            .map(|p| cli(&p.data, &["vdisk", "show", k]).code == 0)
            .collect();
        assert!(
            held.iter().filter(|h| **h).count() <= 1,
            "{k} exists on both nodes"
        );
        assert_eq!(
            fin.contains(k),
            held.contains(&true),
            "cluster and engines disagree on {k}"
        );
    }
    // The final state is one more (read) operation after everything, plus the changes the
    // nodes made on their own (stale reservations released, disks named again at restart).
    let held: Vec<String> = keys.iter().filter(|k| fin.contains(k)).cloned().collect();
    ops.extend(final_reads(
        &[&a, &b],
        &keys,
        &held,
        t0.elapsed().as_nanos() as u64,
    ));
    for p in [&a, &b] {
        ops.extend(unissued_ops(p, &keys));
    }
    let done = ops.iter().filter(|o| o.output.is_some()).count();
    assert!(done >= 10, "too few operations completed: {ops:?}");
    assert_linearizable(&ops, &[&a, &b]);
    println!("faults and check done in {:?}", started.elapsed());

    // Remove: an unknown member is not found; removing the witness leaves two voters.
    let o = cli(&a.data, &["cluster", "remove", "nosuch"]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    // A member that still owns virtual disks is refused, with them listed, and stays.
    b.ok(&["vdisk", "create", "owned-by-b", "16M"]);
    let o = cli(&a.data, &["cluster", "remove", "b"]);
    assert_ne!(o.code, 0, "removing a member that owns disks: {}", o.stdout);
    assert!(
        o.stderr.contains("owned-by-b") && o.stderr.contains("--force"),
        "{}",
        o.stderr
    );
    assert!(
        a.status()["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "b"),
        "b was removed anyway"
    );
    a.ok(&["cluster", "remove", "w"]);
    wait_for(20, "the witness gone from the member list", || {
        let s = a.status();
        let m = s["members"].as_array().unwrap();
        m.len() == 2 && m.iter().all(|x| x["name"] != "w")
    });
    drop(w);
}
