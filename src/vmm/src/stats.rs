//! Per-VM statistics for the node's live view: CPU time of vCPU and device threads, memory, and
//! per-device counters. Reading stats never blocks guest-facing threads (atomics, plus one lock
//! that threads take only when they start and exit).

use crate::config::VmConfig;
use crate::machine::Machine;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Queues counted separately in [`DeviceCounters::queue_requests`]; higher queues share the last.
pub const QUEUE_STATS: usize = 16;

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
    /// Requests taken from each queue (multi-queue balance; queue >= 15 counts in the last).
    pub queue_requests: [AtomicU64; QUEUE_STATS],
    /// Engine disks: reads served straight from a replica's device by the queue thread (also
    /// counted in `read_ops`), and ones it tried and handed to the engine's ordinary path
    /// (counted there when they complete).
    pub direct_reads: AtomicU64,
    pub direct_fallbacks: AtomicU64,
    /// Engine disks: writes the queue thread wrote to every replica's device itself (also
    /// counted in `write_ops`); ones it tried and handed back count in `direct_fallbacks`.
    pub direct_writes: AtomicU64,
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
    /// Requests taken from each queue, by queue index (trailing idle queues left out).
    #[serde(default)]
    pub queue_requests: Vec<u64>,
    /// Engine disks: reads (of `read_ops`) the queue thread served straight from a replica's
    /// device, every block checked against the engine's checksum.
    #[serde(default)]
    pub direct_reads: u64,
    /// Engine disks: writes (of `write_ops`) the queue thread wrote to every replica's device
    /// itself, recorded by the engine as its own writes are.
    #[serde(default)]
    pub direct_writes: u64,
}

impl DeviceCounters {
    /// Counts one request taken from queue `index`.
    pub fn count_queue(&self, index: usize) {
        self.queue_requests[index.min(QUEUE_STATS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one completed read of `len` bytes.
    pub fn count_read(&self, len: usize) {
        self.read_ops.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// Counts one completed write of `len` bytes.
    pub fn count_write(&self, len: usize) {
        self.write_ops.fetch_add(1, Ordering::Relaxed);
        self.write_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

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
            direct_reads: l(&self.direct_reads),
            direct_writes: l(&self.direct_writes),
            queue_requests: {
                let mut q: Vec<u64> = self.queue_requests.iter().map(l).collect();
                while q.last() == Some(&0) {
                    q.pop();
                }
                q
            },
        }
    }
}

/// Live statistics of one VM.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmStats {
    /// CPU time of the VM: vCPU plus device threads, nanoseconds.
    #[serde(default)]
    pub cpu_time_ns: u64,
    /// CPU time consumed by the vCPU threads, nanoseconds.
    pub vcpu_time_ns: u64,
    /// CPU time of the device I/O threads (queue workers, I/O lanes), nanoseconds.
    #[serde(default)]
    pub device_time_ns: u64,
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

/// CPU time of a set of host threads (one VM's vCPUs, or its device threads). Live threads are
/// read from /proc; a thread that exits leaves its final CPU time behind, so the total never
/// drops when devices reset or vCPUs stop.
#[derive(Default)]
pub struct ThreadCpu {
    /// Live thread ids and the time of the threads that already exited.
    inner: Mutex<(Vec<i32>, u64)>,
}

impl ThreadCpu {
    /// Registers the calling thread until the returned guard drops (at thread exit).
    pub fn enter(self: &Arc<Self>) -> ThreadCpuGuard {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        self.inner.lock().0.push(tid);
        ThreadCpuGuard {
            set: self.clone(),
            tid,
        }
    }

    /// Total CPU time of live and exited threads, nanoseconds.
    pub fn total_ns(&self) -> u64 {
        let g = self.inner.lock();
        g.1 + g.0.iter().map(|t| thread_cpu_ns(*t)).sum::<u64>()
    }

    /// Number of live registered threads.
    pub fn live_threads(&self) -> usize {
        self.inner.lock().0.len()
    }
}

/// Keeps a thread registered in a [`ThreadCpu`]; dropping it (on that thread) retires it.
pub struct ThreadCpuGuard {
    set: Arc<ThreadCpu>,
    tid: i32,
}

impl Drop for ThreadCpuGuard {
    fn drop(&mut self) {
        let own = own_thread_cpu_ns();
        let mut g = self.set.inner.lock();
        g.0.retain(|t| *t != self.tid);
        g.1 += own;
    }
}

/// CPU time of the calling thread (clock_gettime, allowed under the seccomp filters).
fn own_thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
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
    let vcpu_time_ns = m.shared.cpu.total_ns();
    let device_time_ns = m.device_cpu.total_ns();
    VmStats {
        cpu_time_ns: vcpu_time_ns + device_time_ns,
        vcpu_time_ns,
        device_time_ns,
        vcpu_exits: m.shared.exits.load(Ordering::Relaxed),
        memory_bytes: cfg.memory_bytes,
        process_rss_bytes: process_rss_bytes(),
        disks: m.pci.disk_stats(),
        nics: m.pci.nic_stats(),
    }
}
