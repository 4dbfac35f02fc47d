//! Per-VM statistics for the node's live view: CPU time of vCPU and device threads, memory, and
//! per-device counters. Reading stats never blocks guest-facing threads (atomics only).

use crate::config::VmConfig;
use crate::machine::Machine;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters one virtio device keeps (disk or NIC). All monotonic.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    /// Completed read requests (disk) / received frames (NIC).
    pub read_ops: AtomicU64,
    /// Bytes read / received.
    pub read_bytes: AtomicU64,
    /// Completed write requests / transmitted frames.
    pub write_ops: AtomicU64,
    /// Bytes written / transmitted.
    pub write_bytes: AtomicU64,
    /// Flushes.
    pub flush_ops: AtomicU64,
    /// Discards and write-zeroes.
    pub discard_ops: AtomicU64,
    /// Requests failed (IOERR/UNSUPP) or frames dropped.
    pub errors: AtomicU64,
    /// Sum of request service times in nanoseconds (latency = this / ops).
    pub latency_ns_total: AtomicU64,
    /// Interrupts signalled to the guest.
    pub interrupts: AtomicU64,
}

/// A snapshot of [`DeviceCounters`].
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceStats {
    /// Device id from the config.
    pub id: String,
    /// Read requests / received frames.
    pub read_ops: u64,
    /// Bytes read / received.
    pub read_bytes: u64,
    /// Write requests / transmitted frames.
    pub write_ops: u64,
    /// Bytes written / transmitted.
    pub write_bytes: u64,
    /// Flushes.
    pub flush_ops: u64,
    /// Discards and write-zeroes.
    pub discard_ops: u64,
    /// Failed requests / dropped frames.
    pub errors: u64,
    /// Mean request latency in nanoseconds.
    pub mean_latency_ns: u64,
    /// Interrupts signalled.
    pub interrupts: u64,
}

impl DeviceCounters {
    /// Snapshot under the given id.
    pub fn snapshot(&self, id: &str) -> DeviceStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let ops =
            l(&self.read_ops) + l(&self.write_ops) + l(&self.flush_ops) + l(&self.discard_ops);
        DeviceStats {
            id: id.to_string(),
            read_ops: l(&self.read_ops),
            read_bytes: l(&self.read_bytes),
            write_ops: l(&self.write_ops),
            write_bytes: l(&self.write_bytes),
            flush_ops: l(&self.flush_ops),
            discard_ops: l(&self.discard_ops),
            errors: l(&self.errors),
            mean_latency_ns: l(&self.latency_ns_total).checked_div(ops).unwrap_or(0),
            interrupts: l(&self.interrupts),
        }
    }
}

/// Live statistics of one VM.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmStats {
    /// CPU time consumed by the vCPU threads, nanoseconds.
    pub vcpu_time_ns: u64,
    /// Userspace-handled vCPU exits.
    pub vcpu_exits: u64,
    /// Guest RAM size.
    pub memory_bytes: u64,
    /// Resident set of the whole process (shared by all VMs in it).
    pub process_rss_bytes: u64,
    /// Per-disk counters.
    pub disks: Vec<DeviceStats>,
    /// Per-NIC counters.
    pub nics: Vec<DeviceStats>,
}

/// CPU time of thread `tid` of this process, from /proc (0 if it has exited).
pub fn thread_cpu_ns(tid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Resident set size of this process in bytes.
pub fn process_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

pub(crate) fn collect(cfg: &VmConfig, m: &Machine) -> VmStats {
    VmStats {
        vcpu_time_ns: m.shared.tids.lock().iter().map(|t| thread_cpu_ns(*t)).sum(),
        vcpu_exits: m.shared.exits.load(Ordering::Relaxed),
        memory_bytes: cfg.memory_bytes,
        process_rss_bytes: process_rss_bytes(),
        disks: m.pci.disk_stats(),
        nics: m.pci.nic_stats(),
    }
}
