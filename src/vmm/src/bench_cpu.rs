//! Host CPU per guest I/O for `cairn bench vmm`: the CPU a VMM spends outside its vCPU threads
//! (queue threads, the engine's runtime workers and reaper, io_uring workers; QEMU's iothread,
//! main loop and helpers) while a benchmark guest runs. The vCPU side is left out on both sides:
//! it is the same guest doing the same work. Never used by tests.
//!
//! Ours is exact: the process's own CPU (getrusage, which keeps exited threads) over the run
//! minus the VM's vCPU time. QEMU's is sampled from /proc every few milliseconds, summing every
//! thread not named `CPU n/KVM`; the last interval before it exits is lost, which is idle time
//! for its I/O threads (the guest has finished its requests when it writes the exit port).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// CPU time (user + system) of this whole process so far, nanoseconds.
pub fn process_cpu_ns() -> u64 {
    // SAFETY: rusage is plain data; zeroed is a valid value for getrusage to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage we own.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let ns = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_usec).unwrap_or(0) * 1000
    };
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

/// Samples the non-vCPU threads of another process (QEMU) until stopped.
pub struct ThreadSampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<HashMap<String, u64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ThreadSampler {
    /// Starts sampling `pid` every 2 ms.
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let (s, m) = (stop.clone(), seen.clone());
        let thread = std::thread::Builder::new()
            .name("bench-cpu-sampler".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    if !sample(pid, &m) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
            .ok();
        Self { stop, seen, thread }
    }

    /// Stops sampling; returns the last seen CPU time of the non-vCPU threads, nanoseconds.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.values().sum()
    }
}

/// One pass over /proc/<pid>/task; false once the process is gone.
fn sample(pid: u32, seen: &Mutex<HashMap<String, u64>>) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut now = Vec::new();
    for e in dir.flatten() {
        let p = e.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if is_vcpu(comm.trim()) {
            continue;
        }
        let ns = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()));
        if let Some(ns) = ns {
            now.push((e.file_name().to_string_lossy().into_owned(), ns));
        }
    }
    let mut m = seen.lock().unwrap_or_else(|e| e.into_inner());
    for (tid, ns) in now {
        m.insert(tid, ns);
    }
    true
}

/// QEMU names its vCPU threads `CPU <n>/KVM`.
fn is_vcpu(comm: &str) -> bool {
    comm.starts_with("CPU ") && comm.ends_with("/KVM")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_own_cpu_and_names_qemu_vcpus() {
        let before = process_cpu_ns();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_cpu_ns() > before);
        assert!(is_vcpu("CPU 0/KVM"));
        assert!(!is_vcpu("IO io0"));
        // Sampling this very process sees at least this thread's time, once the sampler has
        // run (on a loaded machine it may not get a CPU for a while: wait for its first pass).
        let s = ThreadSampler::start(std::process::id());
        let t0 = std::time::Instant::now();
        while s.seen.lock().unwrap().is_empty() && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(s.finish() > 0);
    }
}
