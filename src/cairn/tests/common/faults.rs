//! Faults for clusters of real `cairn` processes: a private LAN of network namespaces the test
//! creates (one per member, joined by a bridge in a hub namespace) whose links can be cut for
//! partitions; forming a cluster; and one fault cycle (kill -9 and restart, SIGSTOP/SIGCONT, or
//! a cut link and its healing) that waits on observed leader changes and catch-up, never on
//! fixed sleeps alone. Must never: touch the host's own network or leave a namespace behind.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::linearize::MetaInput;

use super::history::Clients;
use super::{cli_at, ClusterProc, Out};

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(())
}

/// Network namespaces `cf<pid>-<i>` for members, each with `eth0` (10.213.0.<10+i>/24) on a
/// veth whose other end `m<i>` sits on bridge `br0` in the hub namespace `cf<pid>-hub`. A cut
/// link is its hub end set down: packets to and from that member are dropped silently, as when a
/// cable is pulled (connections stall, nothing is refused).
pub struct Lan {
    hub: String,
    members: Vec<String>,
}

impl Lan {
    /// A LAN for `n` members, or why namespaces cannot be made here.
    pub fn new(n: usize) -> Result<Lan, String> {
        let tag = format!("cf{}", std::process::id());
        let mut lan = Lan {
            hub: format!("{tag}-hub"),
            members: Vec::new(),
        };
        ip(&["netns", "add", &lan.hub])?;
        ip(&["-n", &lan.hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lan.hub, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = format!("{tag}-{i}");
            ip(&["netns", "add", &ns])?;
            lan.members.push(ns.clone());
            let port = format!("m{i}");
            ip(&[
                "-n", &lan.hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &lan.hub, "link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("{}/24", lan.ip(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lan)
    }

    fn ip(&self, i: usize) -> String {
        format!("10.213.0.{}", 10 + i)
    }

    pub fn ns(&self, i: usize) -> &str {
        &self.members[i]
    }

    /// Member `i`'s cluster address (its namespace is its own, so any port is free).
    pub fn addr(&self, i: usize) -> SocketAddr {
        format!("{}:7000", self.ip(i)).parse().unwrap()
    }

    pub fn cut(&self, i: usize) {
        ip(&["-n", &self.hub, "link", "set", &format!("m{i}"), "down"]).unwrap();
    }

    pub fn heal(&self, i: usize) {
        ip(&["-n", &self.hub, "link", "set", &format!("m{i}"), "up"]).unwrap();
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.members.iter().chain([&self.hub]) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

impl ClusterProc {
    /// Member `i` of `lan`, running in its namespace.
    pub fn start_on(root: &Path, name: &str, lan: &Lan, i: usize, witness: bool) -> ClusterProc {
        let mut p = ClusterProc {
            data: root.join(name),
            addr: lan.addr(i),
            witness,
            name: name.into(),
            netns: Some(lan.ns(i).to_string()),
            child: None,
        };
        p.restart();
        p
    }
}

pub fn leader_id(s: &serde_json::Value) -> Option<u64> {
    s["leader"].as_u64()
}

pub fn member_name(s: &serde_json::Value, id: u64) -> Option<String> {
    s["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"] == id)
        .and_then(|m| m["name"].as_str())
        .map(str::to_string)
}

pub fn member_health(s: &serde_json::Value, name: &str) -> String {
    s["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .map(|m| m["health"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The virtual disk names of the cluster state.
pub fn vdisks(s: &serde_json::Value) -> Vec<String> {
    s["vdisks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// `cluster status` of a member that may be faulted: `None` if it does not answer.
pub fn try_status(p: &ClusterProc) -> Option<serde_json::Value> {
    let o = cli_at(&p.data, &["--json", "cluster", "status"]);
    (o.code == 0).then(|| o.json()["value"].clone())
}

/// Polls `f` every 50 ms until it returns `Some`, failing with `what` after `limit`.
pub fn poll<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Kill9,
    Stop,
    Partition,
}

/// A formed cluster: members (the first creates it, the others join), their LAN if they run in
/// namespaces, and a flag per member that is set while it is known dead (clients idle then).
pub struct Cluster {
    pub procs: Vec<ClusterProc>,
    pub down: Vec<Arc<AtomicBool>>,
    /// Dropped after `procs` (fields drop in order): no process outlives its namespace.
    pub lan: Option<Lan>,
    /// Probe names cycle through a few, each deleted again in its cycle.
    probes: usize,
    /// `CAIRN_FAULT_HOLD_MS`: hold every fault this long instead (longer partitions).
    pub hold: Option<Duration>,
}

/// What one cycle did, for the test's summary.
#[derive(Debug)]
pub struct CycleReport {
    pub fault: Fault,
    pub victim: String,
    pub was_leader: bool,
    /// The probe committed while the fault lasted (else only after healing).
    pub committed_during_fault: bool,
    /// From the fault to a new leader (when the leader was hit).
    pub failover: Option<Duration>,
    pub total: Duration,
}

impl Cluster {
    /// Starts `members` (`(name, witness)`) in namespaces of `lan`, or on 127.0.0.2.. without
    /// one, and joins them all to the first; waits for every member to be an active voter.
    pub fn form(root: &Path, members: &[(&str, bool)], lan: Option<Lan>) -> Cluster {
        let procs: Vec<ClusterProc> = members
            .iter()
            .enumerate()
            .map(|(i, (name, witness))| match &lan {
                Some(l) => ClusterProc::start_on(root, name, l, i, *witness),
                None => ClusterProc::start(root, name, &format!("127.0.0.{}", i + 2), *witness),
            })
            .collect();
        for p in &procs[1..] {
            p.join(&procs[0]);
        }
        let c = Cluster {
            down: procs.iter().map(|_| Arc::default()).collect(),
            procs,
            lan,
            probes: 0,
            hold: std::env::var("CAIRN_FAULT_HOLD_MS")
                .ok()
                .map(|v| Duration::from_millis(v.parse().expect("CAIRN_FAULT_HOLD_MS in ms"))),
        };
        let n = members.len();
        poll(
            Duration::from_secs(30),
            "every member an active voter",
            || {
                let s = c.procs[0].status();
                let m = s["members"].as_array().unwrap();
                let all = m.len() == n
                    && m.iter().all(|x| {
                        x["voter"] == true && x["state"] == "active" && x["health"] == "up"
                    });
                (all && leader_id(&s).is_some()).then_some(())
            },
        );
        c
    }

    pub fn index(&self, name: &str) -> usize {
        self.procs.iter().position(|p| p.name == name).unwrap()
    }

    /// The leader all members other than `except` agree on (by index), once they do.
    pub fn agreed_leader(&self, except: Option<usize>, limit: Duration) -> usize {
        poll(limit, "members agreeing on a leader", || {
            let mut seen = None;
            for (i, p) in self.procs.iter().enumerate() {
                if Some(i) == except {
                    continue;
                }
                let s = try_status(p)?;
                let l = member_name(&s, leader_id(&s)?)?;
                if seen.as_ref().is_some_and(|x| *x != l) {
                    return None;
                }
                seen = Some(l);
            }
            let l = self.index(&seen?);
            (Some(l) != except).then_some(l)
        })
    }

    /// One fault on member `victim`: inject, (if it led) wait until the others elect a new
    /// leader, commit a probe name through a healthy data node, heal once the probe is in or
    /// a second has passed, and wait until the victim follows the current leader with everything
    /// committed meanwhile. The probe must commit within 20 s of the fault either way; its
    /// create and delete go into `clients`' history.
    pub fn cycle(&mut self, fault: Fault, victim: usize, clients: &Clients) -> CycleReport {
        let t = Instant::now();
        let leader = self.agreed_leader(None, Duration::from_secs(30));
        let was_leader = leader == victim;
        match fault {
            Fault::Kill9 => {
                self.down[victim].store(true, Ordering::SeqCst);
                self.procs[victim].kill9();
            }
            Fault::Stop => self.procs[victim].signal("-STOP"),
            Fault::Partition => self.lan.as_ref().expect("a LAN").cut(victim),
        }
        let mut failover = None;
        let now_leader = if was_leader {
            let l = self.agreed_leader(Some(victim), Duration::from_secs(30));
            failover = Some(t.elapsed());
            l
        } else {
            leader
        };
        let via = if !self.procs[now_leader].witness {
            now_leader
        } else {
            (0..self.procs.len())
                .find(|&i| i != victim && !self.procs[i].witness)
                .unwrap()
        };
        let probe = format!("probe{}", self.probes % 4);
        self.probes += 1;
        let data = self.procs[via].data.clone();
        let probe_done = AtomicBool::new(false);
        let during = std::thread::scope(|sc| {
            let h = sc.spawn(|| {
                commit_at(
                    &data,
                    via,
                    &["vdisk", "create", &probe, "16M"],
                    clients,
                    || MetaInput::Create(probe.clone()),
                );
                probe_done.store(true, Ordering::SeqCst);
            });
            // Hold the fault at least 300 ms (a follower falls a few heartbeats behind) and at
            // most a second past failover, or until the probe is in.
            let hold = Instant::now();
            let (min, max) = match self.hold {
                Some(d) => (d, d),
                None => (Duration::from_millis(300), Duration::from_secs(1)),
            };
            while hold.elapsed() < max
                && (hold.elapsed() < min || !probe_done.load(Ordering::SeqCst))
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let during = probe_done.load(Ordering::SeqCst);
            match fault {
                Fault::Kill9 => {
                    self.procs[victim].restart();
                    self.down[victim].store(false, Ordering::SeqCst);
                }
                Fault::Stop => self.procs[victim].signal("-CONT"),
                Fault::Partition => self.lan.as_ref().unwrap().heal(victim),
            }
            h.join().unwrap();
            during
        });
        // Caught up: every member follows the same leader and the victim has committed at least
        // what `via` had after the probe.
        let target = self.procs[via].status()["commit_index"].as_u64().unwrap();
        poll(Duration::from_secs(30), "the victim catching up", || {
            self.agreed_leader(None, Duration::from_secs(30));
            let s = try_status(&self.procs[victim])?;
            (s["commit_index"].as_u64()? >= target).then_some(())
        });
        commit_at(&data, via, &["vdisk", "delete", &probe], clients, || {
            MetaInput::Delete(probe.clone())
        });
        CycleReport {
            fault,
            victim: self.procs[victim].name.clone(),
            was_leader,
            failover,
            committed_during_fault: during,
            total: t.elapsed(),
        }
    }

    /// Waits until every member reports the same commit index and virtual disks; returns the
    /// first member's status.
    pub fn converged(&self, limit: Duration) -> serde_json::Value {
        poll(limit, "all members agreeing", || {
            let states: Vec<_> = self.procs.iter().map(|p| p.status()).collect();
            let c: Vec<_> = states.iter().map(|s| s["commit_index"].clone()).collect();
            let v: Vec<_> = states.iter().map(vdisks).collect();
            (c.iter().all(|x| *x == c[0]) && v.iter().all(|x| *x == v[0]))
                .then(|| states[0].clone())
        })
    }
}

/// A metadata call through data node `via` that must succeed within 20 s (retried while
/// the cluster settles); every attempt is recorded. After an attempt with an unknown
/// outcome, "exists" (create) or "not found" (delete) means that attempt took effect.
fn commit_at(
    data: &Path,
    via: usize,
    args: &[&str],
    clients: &Clients,
    input: impl Fn() -> MetaInput,
) -> Out {
    let t = Instant::now();
    let mut retry = false;
    loop {
        let call = clients.now();
        let o = cli_at(data, args);
        clients.record(100 + via, call, input(), &o);
        let took_effect = match input() {
            MetaInput::Create(_) => o.code == 4 && o.stderr.contains("exists"),
            _ => o.code == 3,
        };
        if o.code == 0 || (retry && took_effect) {
            return o;
        }
        retry = true;
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{}: cairn {args:?} kept failing: {}",
            data.display(),
            o.stderr
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
