//! Fault cycles against clusters of real `cairn` processes: three data nodes, and two data nodes
//! with a witness, each member in a network namespace of its own (on 127.0.0.x without
//! namespaces, and then without partitions). A driver loops faults — kill -9 and restart,
//! SIGSTOP/SIGCONT, a cut network link and its healing — hitting the leader every other time,
//! while one client per data node races virtual disk create / clone / delete on shared names and
//! snapshot create / delete on its base disk. Each cycle must commit through the majority while
//! the fault lasts and bring the victim back up to date; at the end every member must agree, no
//! committed name may be lost or doubled, and the whole recorded history must be linearizable.
//!
//! `CAIRN_FAULT_CYCLES=N` runs N cycles per cluster (default 34 + 16); ci/soak.sh runs thousands.
//! `CAIRN_FAULT_ONLY=kill9|stop|partition` runs one kind; `CAIRN_FAULT_HOLD_MS=N` holds every
//! fault N ms (default: until the probe commits, 0.3-1 s); `CAIRN_FAULT_KEEP=DIR` copies the
//! members' logs there after the cycles.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::faults::{vdisks, Cluster, CycleReport, Fault, Lan};
use common::history::{
    assert_linearizable, base_disk, dump_key, final_reads, make_base, unissued_ops, Clients, Mix,
    BASE_SNAPSHOT,
};
use common::{cli_at, ClusterProc};

/// The two clusters run one after the other: 2 cores cannot host six nodes and their clients.
static SERIAL: Mutex<()> = Mutex::new(());

fn cycles(default: usize) -> usize {
    match std::env::var("CAIRN_FAULT_CYCLES") {
        Ok(v) => v.parse().expect("CAIRN_FAULT_CYCLES is a number"),
        Err(_) => default,
    }
}

fn run(members: &[(&str, bool)], default_cycles: usize) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("cairn-faults-")
        .tempdir()
        .unwrap();
    let lan = match Lan::new(members.len()) {
        Ok(l) => Some(l),
        Err(e) => {
            println!("skipped: partition cycles: cannot make network namespaces here: {e}");
            None
        }
    };
    let faults: &[Fault] = if lan.is_some() {
        &[Fault::Kill9, Fault::Stop, Fault::Partition]
    } else {
        &[Fault::Kill9, Fault::Stop]
    };
    let only: Vec<Fault> = match std::env::var("CAIRN_FAULT_ONLY").as_deref() {
        Ok("kill9") => vec![Fault::Kill9],
        Ok("stop") => vec![Fault::Stop],
        Ok("partition") if lan.is_some() => vec![Fault::Partition],
        _ => faults.to_vec(),
    };
    let faults = &only[..];
    let mut c = Cluster::form(tmp.path(), members, lan);
    let data: Vec<usize> = (0..members.len())
        .filter(|&i| !c.procs[i].witness)
        .collect();
    for &i in &data {
        make_base(&c.procs[i]);
    }
    println!("cluster of {members:?} formed in {:?}", started.elapsed());

    let keys: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
    let mut clients = Clients::new();
    let mix = Mix {
        snapshots_and_clones: true,
        pause: Duration::from_millis(100),
    };
    for &i in &data {
        clients.spawn(&c.procs[i], &keys, mix, c.down[i].clone());
    }

    let n = cycles(default_cycles);
    let t = Instant::now();
    let mut reports: Vec<CycleReport> = Vec::with_capacity(n);
    for k in 0..n {
        let fault = faults[k % faults.len()];
        let leader = c.agreed_leader(None, Duration::from_secs(30));
        // Every other round of faults hits the leader; the others rotate over the followers.
        let victim = if (k / faults.len()).is_multiple_of(2) {
            leader
        } else {
            let others: Vec<usize> = (0..members.len()).filter(|&i| i != leader).collect();
            others[(k / (2 * faults.len())) % others.len()]
        };
        let r = c.cycle(fault, victim, &clients);
        println!("cycle {k}: {r:?}");
        reports.push(r);
    }
    let faulted = t.elapsed();
    if let Ok(dir) = std::env::var("CAIRN_FAULT_KEEP") {
        for p in &c.procs {
            let _ = std::fs::write(format!("{dir}/{}.log", p.name), p.log());
        }
    }
    let t0 = clients.t0;
    let mut ops = clients.finish();

    // Every member agrees; every name the cluster holds is held by exactly one engine.
    let s = c.converged(Duration::from_secs(60));
    let names = vdisks(&s);
    for &i in &data {
        let b = base_disk(&c.procs[i].name);
        assert!(names.contains(&b), "{b} lost: {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("probe")),
        "a probe survived its delete: {names:?}"
    );
    let dps: Vec<&ClusterProc> = data.iter().map(|&i| &c.procs[i]).collect();
    for k in &keys {
        let holders: Vec<&str> = dps
            .iter()
            .filter(|p| cli_at(&p.data, &["vdisk", "show", k]).code == 0)
            .map(|p| p.name.as_str())
            .collect();
        let problem = if holders.len() > 1 {
            Some(format!("{k} exists on nodes {holders:?}"))
        } else if names.contains(k) != (holders.len() == 1) {
            Some(format!(
                "cluster and engines disagree on {k}: the cluster {} it, engines holding it: \
                 {holders:?}",
                if names.contains(k) { "holds" } else { "lacks" }
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            let all: Vec<&ClusterProc> = c.procs.iter().collect();
            dump_key(&ops, k, &all);
            panic!("{problem}");
        }
    }
    let held: Vec<String> = keys.iter().filter(|k| names.contains(k)).cloned().collect();
    ops.extend(final_reads(
        &dps,
        &keys,
        &held,
        t0.elapsed().as_nanos() as u64,
    ));
    for p in &dps {
        ops.extend(unissued_ops(p, &keys));
        // The snapshot every clone came from is still there.
        let o = cli_at(&p.data, &["vdisk", "show", &base_disk(&p.name)]);
        assert_eq!(o.code, 0, "{}", o.stderr);
    }
    let all: Vec<&ClusterProc> = c.procs.iter().collect();
    assert_linearizable(&ops, &all);

    let done = ops.iter().filter(|o| o.output.is_some()).count();
    assert!(done >= 4 * n, "too few operations completed: {done}");
    let kinds: Vec<String> = faults
        .iter()
        .map(|f| {
            let m: Vec<&CycleReport> = reports.iter().filter(|r| r.fault == *f).collect();
            let lead = m.iter().filter(|r| r.was_leader).count();
            let fo: Vec<Duration> = m.iter().filter_map(|r| r.failover).collect();
            let mean = |d: &[Duration]| d.iter().sum::<Duration>() / d.len().max(1) as u32;
            let totals: Vec<Duration> = m.iter().map(|r| r.total).collect();
            let during = m.iter().filter(|r| r.committed_during_fault).count();
            format!(
                "{f:?}: {} cycles ({lead} of the leader; probe committed during the fault in \
                 {during}), failover mean {:?}, cycle mean {:?}",
                m.len(),
                mean(&fo),
                mean(&totals)
            )
        })
        .collect();
    println!(
        "{n} fault cycles in {faulted:?} ({:?} in all) with base snapshot {BASE_SNAPSHOT}: {}",
        started.elapsed(),
        kinds.join("; ")
    );
}

#[test]
fn three_data_nodes_through_fault_cycles() {
    run(&[("a", false), ("b", false), ("c", false)], 34);
}

#[test]
fn two_data_nodes_and_a_witness_through_fault_cycles() {
    run(&[("a", false), ("b", false), ("w", true)], 16);
}
