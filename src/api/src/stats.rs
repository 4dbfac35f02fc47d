//! Live statistics: sampled once a second, the last hour kept in a ring buffer, new samples
//! broadcast to SSE subscribers. Node CPU and memory come from /proc; pool, disk and virtual
//! disk figures from the controller's `Stats` request (as the `internal` actor); VM and virtual
//! disk lists from the list cache (`lists`), which the sampler shares with the requests for
//! those lists, so that the node is asked for each list about once a second, not twice.
//! Counters are turned into per-second rates here. Never blocks a request: the sampler owns the
//! only writer; readers clone.

use crate::lists::ListCache;
use crate::state::{Caller, State};
use control::{Actor, ControlError, Controller, Reply, Request};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// One hour at one sample per second.
pub const HISTORY: usize = 3600;
/// Virtual disks reported per sample (the rest are summed into the totals only).
pub const MAX_VDISKS_PER_SAMPLE: usize = 256;

#[derive(Debug, Clone, Serialize, Default)]
pub struct DiskSample {
    pub name: String,
    pub read_iops: f64,
    pub write_iops: f64,
    pub used_bytes: u64,
    pub size_bytes: u64,
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct VdiskSample {
    pub name: String,
    pub used_bytes: u64,
    pub size_bytes: u64,
    pub read_iops: f64,
    pub write_iops: f64,
    pub read_bytes_per_sec: f64,
    pub write_bytes_per_sec: f64,
    /// Mean latency of the reads (writes) completed during the period; 0 when there were none.
    pub read_latency_us: f64,
    pub write_latency_us: f64,
}

/// One VM's figures over the last sample period. CPU is percent of one host CPU (a VM with
/// two busy vCPUs shows 200); disk and network figures sum the VM's devices; latency is the
/// devices' mean request latency weighted by their requests.
#[derive(Debug, Clone, Serialize, Default)]
pub struct VmSample {
    pub name: String,
    pub state: String,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub disk_read_iops: f64,
    pub disk_write_iops: f64,
    pub disk_read_bytes_per_sec: f64,
    pub disk_write_bytes_per_sec: f64,
    pub disk_latency_us: f64,
    pub net_rx_bytes_per_sec: f64,
    pub net_tx_bytes_per_sec: f64,
    /// Each NIC (`net0`, ...), in the VM's order.
    pub nics: Vec<NicSample>,
}

/// One NIC of a VM: totals since the VM's machine was built (rx: frames the guest received,
/// tx: frames it sent; bytes without the virtio-net header; errors: frames dropped), and
/// their rates over the last sample period.
#[derive(Debug, Clone, Serialize, Default)]
pub struct NicSample {
    pub id: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub errors: u64,
    pub rx_packets_per_sec: f64,
    pub rx_bytes_per_sec: f64,
    pub tx_packets_per_sec: f64,
    pub tx_bytes_per_sec: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Sample {
    pub time_ms: u64,
    pub cpu_percent: f64,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    pub read_iops: f64,
    pub write_iops: f64,
    pub read_bytes_per_sec: f64,
    pub write_bytes_per_sec: f64,
    pub pool_used_bytes: u64,
    pub pool_raw_bytes: u64,
    pub degraded_chunks: u64,
    pub disks: Vec<DiskSample>,
    pub vdisks: Vec<VdiskSample>,
    pub vms: Vec<VmSample>,
    /// The whole cluster, from the figures its members report (refreshed every
    /// [`CLUSTER_PERIOD`], so a sample repeats the last one in between); None until the first.
    pub cluster: Option<ClusterSample>,
}

/// How often the sampler asks the cluster for its members' figures (each ask is one short call
/// per member).
pub const CLUSTER_PERIOD: Duration = Duration::from_secs(5);

/// Cluster totals: members, and the I/O and disks of the data members that reported.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct ClusterSample {
    pub members: usize,
    pub members_up: usize,
    pub data_nodes: usize,
    /// Data members whose figures are in the totals (the others did not answer in time).
    pub reporting: usize,
    pub read_iops: f64,
    pub write_iops: f64,
    pub read_bytes_per_sec: f64,
    pub write_bytes_per_sec: f64,
    /// The data members' own disks: size and use (by every node's chunks).
    pub raw_bytes: u64,
    pub used_raw_bytes: u64,
}

/// Each member's I/O counters by member id, and when they were read.
pub(crate) type MemberIo = HashMap<u64, (control::MemberIoView, std::time::Instant)>;

/// The totals of `v`, with I/O rates over the time since each member's counters in `before`;
/// returns them and the counters to keep for next time.
pub(crate) fn cluster_sample(
    v: &control::ClusterView,
    before: &MemberIo,
    now: std::time::Instant,
) -> (ClusterSample, MemberIo) {
    let mut c = ClusterSample {
        members: v.members.len(),
        members_up: v.members.iter().filter(|m| m.health == "up").count(),
        data_nodes: v.members.iter().filter(|m| m.role != "witness").count(),
        ..Default::default()
    };
    let mut next = HashMap::new();
    for m in &v.members {
        let Some(x) = &m.stats else { continue };
        c.reporting += 1;
        c.raw_bytes += x.raw_bytes;
        c.used_raw_bytes += x.used_raw_bytes;
        if let Some((p, at)) = before.get(&m.id) {
            let secs = now.duration_since(*at).as_secs_f64();
            c.read_iops += rate(x.io.reads, p.reads, secs);
            c.write_iops += rate(x.io.writes, p.writes, secs);
            c.read_bytes_per_sec += rate(x.io.read_bytes, p.read_bytes, secs);
            c.write_bytes_per_sec += rate(x.io.write_bytes, p.write_bytes, secs);
        }
        next.insert(m.id, (x.io, now));
    }
    (c, next)
}

#[derive(Debug)]
pub struct StatsHub {
    history: Mutex<VecDeque<Arc<Sample>>>,
    tx: tokio::sync::broadcast::Sender<Arc<Sample>>,
}

impl Default for StatsHub {
    fn default() -> Self {
        let (tx, _) = tokio::sync::broadcast::channel(16);
        StatsHub {
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            tx,
        }
    }
}

impl StatsHub {
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Sample>> {
        self.tx.subscribe()
    }

    /// Samples newer than `since_ms`, oldest first, at most `limit`.
    pub fn history(&self, since_ms: u64, limit: usize) -> Vec<Arc<Sample>> {
        let h = self.history.lock();
        let v: Vec<_> = h.iter().filter(|s| s.time_ms > since_ms).cloned().collect();
        let skip = v.len().saturating_sub(limit);
        v.into_iter().skip(skip).collect()
    }

    pub fn latest(&self) -> Option<Arc<Sample>> {
        self.history.lock().back().cloned()
    }

    fn push(&self, s: Sample) {
        let s = Arc::new(s);
        {
            let mut h = self.history.lock();
            if h.len() >= HISTORY {
                h.pop_front();
            }
            h.push_back(s.clone());
        }
        let _ = self.tx.send(s);
    }
}

/// What the sampler remembers from its last sample.
#[derive(Default)]
pub(crate) struct Prev {
    cpu: Option<(u64, u64)>,
    at: Option<std::time::Instant>,
    totals: Option<[u64; 4]>,
    disks: HashMap<String, (u64, u64)>,
    /// Per VM: its counters in the last VM list sampled.
    vms: HashMap<String, VmCounters>,
    /// When the node answered the last VM and virtual disk lists sampled.
    vms_at: Option<std::time::Instant>,
    vdisks_at: Option<std::time::Instant>,
    /// When the cluster was last asked, each member's I/O counters then, and the totals.
    cluster_at: Option<std::time::Instant>,
    cluster_io: MemberIo,
    cluster: Option<ClusterSample>,
    /// Per vdisk: read ops, write ops, read bytes, write bytes, read and write latency sums (us).
    vdisks: HashMap<String, [u64; 6]>,
}

/// One vdisk's counters from the engine's `vdisk_io` entry, in `Prev::vdisks` order.
fn vdisk_counters(v: &serde_json::Value) -> [u64; 6] {
    let op = |k: &str| v.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let (r, w) = (op("read"), op("write"));
    [
        num(&r, "ops"),
        num(&w, "ops"),
        num(&r, "bytes"),
        num(&w, "bytes"),
        num(&r, "latency_us_sum"),
        num(&w, "latency_us_sum"),
    ]
}

/// Rates and mean latencies of one vdisk over the period from two counter snapshots.
fn vdisk_rates(s: &mut VdiskSample, now: &[u64; 6], before: &[u64; 6], secs: f64) {
    s.read_iops = rate(now[0], before[0], secs);
    s.write_iops = rate(now[1], before[1], secs);
    s.read_bytes_per_sec = rate(now[2], before[2], secs);
    s.write_bytes_per_sec = rate(now[3], before[3], secs);
    let mean = |lat: usize, ops: usize| {
        let n = now[ops].saturating_sub(before[ops]);
        if n == 0 {
            0.0
        } else {
            now[lat].saturating_sub(before[lat]) as f64 / n as f64
        }
    };
    s.read_latency_us = mean(4, 0);
    s.write_latency_us = mean(5, 1);
}

/// VMs reported per sample (a node defines at most 256).
pub const MAX_VMS_PER_SAMPLE: usize = 256;

/// One VM's counters: cpu_time_ns, then disk read ops, write ops, read bytes, write bytes,
/// net rx bytes, tx bytes; and per NIC (by id) rx packets, rx bytes, tx packets, tx bytes.
#[derive(Debug, Clone, Default, PartialEq)]
struct VmCounters {
    sums: [u64; 7],
    nics: Vec<(String, [u64; 4])>,
}

fn vm_sample(v: &control::VmView, prev: Option<&VmCounters>, secs: f64) -> (VmSample, VmCounters) {
    let mut s = VmSample {
        name: v.name.clone(),
        state: v.state.clone(),
        ..Default::default()
    };
    let Some(st) = &v.stats else {
        return (s, VmCounters::default());
    };
    s.memory_bytes = st.memory_bytes;
    let mut now = [st.cpu_time_ns, 0, 0, 0, 0, 0, 0];
    let (mut lat_sum, mut lat_ops) = (0f64, 0u64);
    for d in &st.disks {
        now[1] += d.read_ops;
        now[2] += d.write_ops;
        now[3] += d.read_bytes;
        now[4] += d.write_bytes;
        let ops = d.read_ops + d.write_ops + d.flush_ops;
        lat_sum += d.mean_latency_ns as f64 * ops as f64;
        lat_ops += ops;
    }
    let mut nics = Vec::with_capacity(st.nics.len());
    for n in &st.nics {
        now[5] += n.read_bytes;
        now[6] += n.write_bytes;
        let c = [n.read_ops, n.read_bytes, n.write_ops, n.write_bytes];
        let mut ns = NicSample {
            id: n.id.clone(),
            rx_packets: c[0],
            rx_bytes: c[1],
            tx_packets: c[2],
            tx_bytes: c[3],
            errors: n.errors,
            ..Default::default()
        };
        // A VM sampled before, but without this NIC's counters (it was not running then):
        // everything the NIC counted happened since.
        let before = prev.map(|p| {
            p.nics
                .iter()
                .find(|(id, _)| *id == n.id)
                .map_or([0; 4], |(_, c)| *c)
        });
        if let Some(p) = before {
            ns.rx_packets_per_sec = rate(c[0], p[0], secs);
            ns.rx_bytes_per_sec = rate(c[1], p[1], secs);
            ns.tx_packets_per_sec = rate(c[2], p[2], secs);
            ns.tx_bytes_per_sec = rate(c[3], p[3], secs);
        }
        s.nics.push(ns);
        nics.push((n.id.clone(), c));
    }
    if lat_ops > 0 {
        s.disk_latency_us = lat_sum / lat_ops as f64 / 1000.0;
    }
    if let Some(p) = prev.map(|p| &p.sums) {
        s.cpu_percent = rate(now[0], p[0], secs) / 1e7;
        s.disk_read_iops = rate(now[1], p[1], secs);
        s.disk_write_iops = rate(now[2], p[2], secs);
        s.disk_read_bytes_per_sec = rate(now[3], p[3], secs);
        s.disk_write_bytes_per_sec = rate(now[4], p[4], secs);
        s.net_rx_bytes_per_sec = rate(now[5], p[5], secs);
        s.net_tx_bytes_per_sec = rate(now[6], p[6], secs);
    }
    (s, VmCounters { sums: now, nics })
}

/// Run the sampler until the hub is dropped by everyone else.
pub(crate) async fn run_sampler(
    hub: std::sync::Weak<StatsHub>,
    controller: Arc<dyn Controller>,
    lists: Arc<ListCache>,
    period: Duration,
) {
    let mut prev = Prev::default();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        let s = sample(&mut prev, controller.as_ref(), &lists).await;
        hub.push(s);
    }
}

fn num(v: &serde_json::Value, k: &str) -> u64 {
    v.get(k).and_then(|x| x.as_u64()).unwrap_or(0)
}

fn rate(now: u64, before: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    now.saturating_sub(before) as f64 / secs
}

pub(crate) async fn sample(
    prev: &mut Prev,
    controller: &dyn Controller,
    lists: &ListCache,
) -> Sample {
    let now = std::time::Instant::now();
    let secs = prev
        .at
        .map(|a| now.duration_since(a).as_secs_f64())
        .unwrap_or(0.0);
    prev.at = Some(now);
    let mut s = Sample {
        time_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        ..Default::default()
    };
    if let Some((busy, total)) = read_cpu() {
        if let Some((pb, pt)) = prev.cpu {
            let dt = total.saturating_sub(pt);
            if dt > 0 {
                s.cpu_percent =
                    (busy.saturating_sub(pb) as f64 * 100.0 / dt as f64).clamp(0.0, 100.0);
            }
        }
        prev.cpu = Some((busy, total));
    }
    if let Some((used, total)) = read_mem() {
        s.mem_used_bytes = used;
        s.mem_total_bytes = total;
    }
    let actor = Actor::internal("stats");
    let mut vdisk_io: HashMap<String, [u64; 6]> = HashMap::new();
    if let Ok(Reply::Stats(st)) = controller.execute(actor, Request::Stats).await {
        s.pool_used_bytes = st.pool.used_raw_bytes;
        s.pool_raw_bytes = st.pool.raw_bytes;
        s.degraded_chunks = st.pool.degraded_chunks;
        let e = &st.engine;
        let totals = [
            num(e, "reads"),
            num(e, "writes"),
            num(e, "read_bytes"),
            num(e, "write_bytes"),
        ];
        if let Some(p) = prev.totals {
            s.read_iops = rate(totals[0], p[0], secs);
            s.write_iops = rate(totals[1], p[1], secs);
            s.read_bytes_per_sec = rate(totals[2], p[2], secs);
            s.write_bytes_per_sec = rate(totals[3], p[3], secs);
        }
        prev.totals = Some(totals);
        if let Some(a) = e.get("vdisk_io").and_then(|v| v.as_array()) {
            for v in a {
                if let Some(name) = v.get("name").and_then(|n| n.as_str()) {
                    vdisk_io.insert(name.to_string(), vdisk_counters(v));
                }
            }
        }
        let engine_disks: HashMap<String, (u64, u64)> = e
            .get("disks")
            .and_then(|d| d.as_array())
            .map(|a| {
                a.iter()
                    .map(|d| {
                        let id = d
                            .get("id")
                            .and_then(|x| x.as_str())
                            .unwrap_or("")
                            .to_string();
                        (id, (num(d, "reads"), num(d, "writes")))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut next = HashMap::new();
        for d in st.disks.iter().take(256) {
            let counters = engine_disks.get(&d.id).copied();
            let mut ds = DiskSample {
                name: d.name.clone(),
                used_bytes: d.used_bytes,
                size_bytes: d.size_bytes,
                state: d.state.clone(),
                ..Default::default()
            };
            if let Some((r, w)) = counters {
                if let Some((pr, pw)) = prev.disks.get(&d.id) {
                    ds.read_iops = rate(r, *pr, secs);
                    ds.write_iops = rate(w, *pw, secs);
                }
                next.insert(d.id.clone(), (r, w));
            }
            s.disks.push(ds);
        }
        prev.disks = next;
    }
    if prev
        .cluster_at
        .is_none_or(|a| now.duration_since(a) >= CLUSTER_PERIOD)
    {
        prev.cluster_at = Some(now);
        let actor = Actor::internal("stats");
        if let Ok(Reply::Cluster(v)) = controller.execute(actor, Request::ClusterStatus).await {
            let (c, io) = cluster_sample(&v, &prev.cluster_io, std::time::Instant::now());
            prev.cluster = Some(c);
            prev.cluster_io = io;
        }
    }
    s.cluster = prev.cluster.clone();
    if let Ok(vms) = lists.sampled_vms(controller, prev.vms_at).await {
        // Counter deltas over the time between the two lists (either may have been fetched
        // for a request a little before this tick).
        let at = vms.fetched_at();
        let secs = prev
            .vms_at
            .map(|a| at.duration_since(a).as_secs_f64())
            .unwrap_or(0.0);
        let mut next = HashMap::new();
        // This node's own: `ListCache::sampled_vms` lists no other member's.
        for v in vms.items().iter().take(MAX_VMS_PER_SAMPLE) {
            let (vs, counters) = vm_sample(v, prev.vms.get(&v.name), secs);
            s.vms.push(vs);
            next.insert(v.name.clone(), counters);
        }
        prev.vms = next;
        prev.vms_at = Some(at);
    }
    if let Ok(v) = lists.sampled_vdisks(controller, prev.vdisks_at).await {
        prev.vdisks_at = Some(v.fetched_at());
        s.vdisks = v
            .items()
            .iter()
            .take(MAX_VDISKS_PER_SAMPLE)
            .map(|d| {
                let mut vs = VdiskSample {
                    name: d.name.clone(),
                    used_bytes: d.used_bytes,
                    size_bytes: d.size_bytes,
                    ..Default::default()
                };
                if let (Some(now), Some(before)) = (vdisk_io.get(&d.name), prev.vdisks.get(&d.name))
                {
                    vdisk_rates(&mut vs, now, before, secs);
                }
                vs
            })
            .collect();
    }
    prev.vdisks = vdisk_io;
    s
}

/// The cluster's nodes as `GET /nodes` lists them: every member as the cluster status shows it,
/// with the figures it reported when asked (none for one that does not answer), this node's CPU
/// and memory from its last sample. Without a cluster status (none reachable here), this node
/// alone, from its own stats.
pub(crate) async fn node_views(st: &State, c: &Caller) -> Result<Vec<Value>, ControlError> {
    let latest = st.stats.latest();
    let live = |n: &mut Value| {
        n["this_node"] = json!(true);
        n["state"] = json!("up");
        n["cpu_percent"] = json!(latest.as_ref().map_or(0.0, |l| l.cpu_percent));
        n["mem_used_bytes"] = json!(latest.as_ref().map_or(0, |l| l.mem_used_bytes));
        n["mem_total_bytes"] = json!(latest.as_ref().map_or(0, |l| l.mem_total_bytes));
    };
    if let Ok(Reply::Cluster(v)) = st.control(c, Request::ClusterStatus).await {
        let mut out: Vec<Value> = v.members.iter().map(member_view).collect();
        if let Some(me) = v.members.iter().position(|m| m.id == v.me) {
            live(&mut out[me]);
        }
        return Ok(out);
    }
    let Reply::Stats(s) = st.control(c, Request::Stats).await? else {
        return Err(ControlError::internal(
            "the node answered stats with something else",
        ));
    };
    let mut me = json!({
        "id": s.node_id,
        "name": s.node_name,
        "uptime_secs": s.uptime_secs,
        "cpu_count": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "disks": s.disks.len(),
        "vdisks": s.vdisks,
        "raw_bytes": s.pool.raw_bytes,
        "used_raw_bytes": s.pool.used_raw_bytes,
        "version": env!("CARGO_PKG_VERSION"),
    });
    live(&mut me);
    Ok(vec![me])
}

/// One member in `GET /nodes`: what the cluster status says of it, and the figures it reported
/// (uptime null and no figures when it did not answer).
fn member_view(m: &control::ClusterMemberView) -> Value {
    let mut n = json!({
        "id": m.id,
        "name": m.name,
        "this_node": false,
        "address": m.address,
        "role": m.role,
        "leader": m.leader,
        "state": m.health,
        "uptime_secs": null,
    });
    if let Some(x) = &m.stats {
        n["uptime_secs"] = json!(x.uptime_secs);
        n["cpu_count"] = json!(x.cpu_count);
        n["mem_used_bytes"] = json!(x.mem_used_bytes);
        n["mem_total_bytes"] = json!(x.mem_total_bytes);
        n["disks"] = json!(x.disks.len());
        n["vdisks"] = json!(x.vdisks);
        n["raw_bytes"] = json!(x.raw_bytes);
        n["used_raw_bytes"] = json!(x.used_raw_bytes);
        n["version"] = json!(x.version);
    }
    n
}

/// (busy, total) jiffies from the first line of /proc/stat.
fn read_cpu() -> Option<(u64, u64)> {
    let t = std::fs::read_to_string("/proc/stat").ok()?;
    let line = t.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// (used, total) bytes from /proc/meminfo (used = total - available).
pub fn read_mem() -> Option<(u64, u64)> {
    let t = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |k: &str| {
        t.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|x| x.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    let total = field("MemTotal:")?;
    let avail = field("MemAvailable:").unwrap_or(0);
    Some((total.saturating_sub(avail), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, role: &str, health: &str) -> control::ClusterMemberView {
        control::ClusterMemberView {
            id,
            name: format!("n{id}"),
            role: role.into(),
            health: health.into(),
            ..Default::default()
        }
    }

    fn figures(raw: u64, used: u64, reads: u64, writes: u64) -> control::MemberStatsView {
        control::MemberStatsView {
            raw_bytes: raw,
            used_raw_bytes: used,
            io: control::MemberIoView {
                reads,
                writes,
                read_bytes: reads * 4096,
                write_bytes: writes * 4096,
            },
            ..Default::default()
        }
    }

    #[test]
    fn cluster_totals_add_the_members_that_reported_and_rate_their_io() {
        let mut a = member(1, "data", "up");
        let mut b = member(2, "data", "up");
        let c = member(3, "data", "down");
        let w = member(4, "witness", "up");
        a.stats = Some(figures(100, 10, 1000, 500));
        b.stats = Some(figures(200, 30, 0, 2000));
        let mut v = control::ClusterView {
            me: 1,
            members: vec![a, b, c, w],
            ..Default::default()
        };
        let t0 = std::time::Instant::now();
        // First look: sizes, no rates yet.
        let (first, io) = cluster_sample(&v, &HashMap::new(), t0);
        assert_eq!(
            (
                first.members,
                first.members_up,
                first.data_nodes,
                first.reporting
            ),
            (4, 3, 3, 2)
        );
        assert_eq!((first.raw_bytes, first.used_raw_bytes), (300, 40));
        assert_eq!((first.read_iops, first.write_iops), (0.0, 0.0));
        // Two seconds later a did 400 more reads, b 1000 more writes.
        v.members[0].stats = Some(figures(100, 10, 1400, 500));
        v.members[1].stats = Some(figures(200, 30, 0, 3000));
        let (next, _) = cluster_sample(&v, &io, t0 + Duration::from_secs(2));
        assert_eq!((next.read_iops, next.write_iops), (200.0, 500.0));
        assert_eq!(next.write_bytes_per_sec, 500.0 * 4096.0);
    }

    #[test]
    fn proc_readers_give_sane_values() {
        let (busy, total) = read_cpu().unwrap();
        assert!(busy <= total && total > 0);
        let (used, total) = read_mem().unwrap();
        assert!(used <= total && total > 0);
    }

    #[test]
    fn vm_rates_come_from_counter_deltas() {
        let dev = |id: &str, r: u64, w: u64| control::VmDeviceStatsView {
            id: id.into(),
            read_ops: r,
            read_bytes: r * 4096,
            write_ops: w,
            write_bytes: w * 4096,
            flush_ops: 0,
            discard_ops: 0,
            errors: 0,
            mean_latency_ns: 50_000,
        };
        let view = |cpu: u64, r: u64, w: u64| control::VmView {
            name: "vm1".into(),
            description: String::new(),
            state: "running".into(),
            operation: None,
            vcpus: 1,
            memory_mib: 64,
            disks: vec!["d".into()],
            nics: Vec::new(),
            kernel: "/k".into(),
            cmdline: String::new(),
            created_unix: 0,
            last_exit: None,
            stats: Some(control::VmStatsView {
                cpu_time_ns: cpu,
                vcpu_exits: 0,
                memory_bytes: 64 << 20,
                disks: vec![dev("d", r, w)],
                nics: vec![dev("n", r, w)],
            }),
            node: None,
        };
        let (first, c) = vm_sample(&view(0, 0, 0), None, 0.0);
        assert_eq!(first.disk_read_iops, 0.0);
        let (s, _) = vm_sample(&view(500_000_000, 100, 50), Some(&c), 1.0);
        assert_eq!(s.cpu_percent, 50.0);
        assert_eq!(s.disk_read_iops, 100.0);
        assert_eq!(s.disk_write_iops, 50.0);
        assert_eq!(s.disk_write_bytes_per_sec, 50.0 * 4096.0);
        assert_eq!(s.net_rx_bytes_per_sec, 100.0 * 4096.0);
        let n = &s.nics[0];
        assert_eq!((n.id.as_str(), n.rx_packets, n.tx_packets), ("n", 100, 50));
        assert_eq!(
            (n.rx_packets_per_sec, n.tx_bytes_per_sec),
            (100.0, 50.0 * 4096.0)
        );
        // A VM seen before without this NIC's counters (not running then): all of them are new.
        let defined = VmCounters::default();
        let (s, _) = vm_sample(&view(0, 10, 5), Some(&defined), 2.0);
        assert_eq!(s.nics[0].rx_packets_per_sec, 5.0);
        assert_eq!(s.disk_latency_us, 50.0);
        assert_eq!(s.memory_bytes, 64 << 20);
    }

    #[test]
    fn vdisk_rates_come_from_engine_counter_deltas() {
        let io = |r: u64, w: u64, rl: u64, wl: u64| {
            serde_json::json!({
                "name": "d1",
                "read": {"ops": r, "bytes": r * 4096, "latency_us_sum": rl},
                "write": {"ops": w, "bytes": w * 8192, "latency_us_sum": wl},
            })
        };
        let before = vdisk_counters(&io(10, 5, 1_000, 2_000));
        let now = vdisk_counters(&io(210, 105, 21_000, 52_000));
        let mut s = VdiskSample::default();
        vdisk_rates(&mut s, &now, &before, 2.0);
        assert_eq!(s.read_iops, 100.0);
        assert_eq!(s.write_iops, 50.0);
        assert_eq!(s.read_bytes_per_sec, 100.0 * 4096.0);
        assert_eq!(s.write_bytes_per_sec, 50.0 * 8192.0);
        assert_eq!(s.read_latency_us, 100.0);
        assert_eq!(s.write_latency_us, 500.0);
        // No reads in the period: latency 0, not a division by zero.
        let idle = vdisk_counters(&io(210, 106, 21_000, 52_100));
        vdisk_rates(&mut s, &idle, &now, 1.0);
        assert_eq!((s.read_iops, s.read_latency_us), (0.0, 0.0));
        assert_eq!(s.write_latency_us, 100.0);
    }

    #[test]
    fn history_is_bounded_and_filtered() {
        let hub = StatsHub::default();
        for i in 0..(HISTORY + 10) {
            hub.push(Sample {
                time_ms: i as u64 + 1,
                ..Default::default()
            });
        }
        assert_eq!(hub.history(0, usize::MAX).len(), HISTORY);
        let recent = hub.history((HISTORY + 5) as u64, 100);
        assert_eq!(recent.len(), 5);
        assert_eq!(hub.history(0, 3).len(), 3);
        assert_eq!(hub.latest().unwrap().time_ms, (HISTORY + 10) as u64);
    }
}
