//! `cairn bench vmm`: the same test guest on Cairn's VMM and on QEMU (`-accel kvm -cpu qemu64`,
//! virtio-blk-pci with an iothread, `cache=none,aio=io_uring`) in one invocation, printing JSON
//! lines in the engine benchmark's format. Measures guest-side 4 KiB random IOPS at QD1/QD32
//! (RAM disk vs QEMU `null-co`: reads of a disk holding nothing, zeros as `null-co` returns
//! them, and `ram_written` reads of one whose memory is all allocated; file vs QEMU raw file;
//! the engine vs QEMU raw file), boot-to-first-debug-write time, and VMM
//! memory overhead (process RSS minus resident guest RAM), and virtio-net transmit throughput
//! with 1 and N queue pairs ([`crate::bench_net`]). Never used by tests.
//!
//! Fairness of the disk comparison: the guest never flushes during a run, on either side. QEMU's
//! `cache=none` is O_DIRECT with no fsync per write (one copy, a guest-visible write-back cache);
//! ours writes two replicas with O_DIRECT plus checksums, and the engine's log reaches the disk
//! only on a flush or when its buffer fills — so neither side syncs per write, and ours does two
//! device writes per guest write to QEMU's one. Every backing file (QEMU's raw file and the
//! engine's two pool files) is fully written before measuring, like a real device: a write into
//! a hole of a sparse file makes the file system allocate (and serialise on the inode), which
//! would measure ext4, not the VMM.

use crate::backend::DiskBackend;
use crate::backend_file::FileDisk;
use crate::config::{DiskConfig, VmConfig};
use crate::error::{io_err, kvm_err, Result, VmmError};
use crate::{BootConfig, RamDisk, Vm};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Scratch directory for the guest ELF and the backing file.
    pub work_dir: PathBuf,
    /// The test guest ELF bytes (`test_guests::GUEST_ELF`).
    pub guest_elf: Vec<u8>,
    /// Disk size.
    pub disk_bytes: u64,
    /// Requests per IOPS run.
    pub ops: u64,
    /// Runs per metric (the median is reported).
    pub runs: usize,
    /// QEMU binary.
    pub qemu: String,
}

/// One JSON output line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchLine {
    /// Always "vmm".
    pub bench: &'static str,
    /// Metric name.
    pub metric: String,
    /// Cairn's value.
    pub ours: f64,
    /// QEMU's value.
    pub anchor: f64,
    /// What the anchor was.
    pub anchor_name: String,
    /// ours / anchor.
    pub ratio: f64,
    /// Direction of goodness.
    pub higher_is_better: bool,
}

impl BenchLine {
    pub(crate) fn new(
        metric: &str,
        ours: f64,
        anchor: f64,
        anchor_name: &str,
        higher_is_better: bool,
    ) -> Self {
        let ratio = if anchor > 0.0 { ours / anchor } else { 0.0 };
        Self {
            bench: "vmm",
            metric: metric.into(),
            ours,
            anchor,
            anchor_name: anchor_name.into(),
            ratio,
            higher_is_better,
        }
    }

    /// The line as JSON.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"bench\":\"vmm\",\"metric\":\"{}\",\"ours\":{:.1},\"anchor\":{:.1},\"anchor_name\":\"{}\",\"ratio\":{:.3},\"higher_is_better\":{}}}",
            self.metric, self.ours, self.anchor, self.anchor_name, self.ratio, self.higher_is_better
        )
    }
}

/// Host TSC frequency as KVM reports it for a vCPU (guests see the same rate by default).
pub fn host_tsc_hz() -> Result<f64> {
    let kvm = kvm_ioctls::Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
    let vm = crate::machine::create_vm(&kvm).map_err(kvm_err("create_vm"))?;
    let vcpu = vm.create_vcpu(0).map_err(kvm_err("create_vcpu"))?;
    let khz = vcpu.get_tsc_khz().map_err(kvm_err("get_tsc_khz"))?;
    Ok(f64::from(khz) * 1000.0)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Parses "bench <op> qd=<n> ops=<m> tsc=<t> errors=0" into IOPS.
fn parse_iops(out: &str, tsc_hz: f64) -> Result<f64> {
    let line = out
        .lines()
        .find(|l| l.starts_with("bench "))
        .ok_or_else(|| VmmError::Backend(format!("guest printed no bench line: {out}")))?;
    let field = |k: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k).and_then(|v| v.parse::<f64>().ok()))
    };
    match (field("ops="), field("tsc="), field("errors=")) {
        (Some(ops), Some(tsc), Some(e)) if tsc > 0.0 && e == 0.0 => Ok(ops / (tsc / tsc_hz)),
        _ => Err(VmmError::Backend(format!("bad bench line: {line}"))),
    }
}

/// What one run of our VMM gave: debug output, time to the first debug write, and host CPU
/// outside the vCPU threads from start to exit (see [`crate::bench_cpu`]).
struct OursRun {
    out: String,
    boot: Duration,
    host_cpu_ns: u64,
}

fn ours_run(
    opts: &BenchOptions,
    elf: &Path,
    cmdline: &str,
    backend: Arc<dyn DiskBackend>,
) -> Result<OursRun> {
    let boot = BootConfig {
        kernel: elf.to_path_buf(),
        initrd: None,
        cmdline: cmdline.into(),
    };
    let mut cfg = VmConfig::new("bench", boot);
    cfg.disks.push(DiskConfig {
        id: "bench-disk".into(),
        backend,
        queues: 1,
        queue_size: 256,
    });
    let t0 = Instant::now();
    let mut vm = Vm::create(cfg)?;
    let cpu0 = crate::bench_cpu::process_cpu_ns();
    vm.start()?;
    let reason = vm.wait_exit(Duration::from_secs(300));
    let host_cpu_ns = crate::bench_cpu::process_cpu_ns()
        .saturating_sub(cpu0)
        .saturating_sub(vm.stats().vcpu_time_ns);
    if std::env::var("CAIRN_BENCH_VMM_EACH").as_deref() == Ok("1") {
        // Where the time went: the disk's counters and the device threads' CPU.
        let st = vm.stats();
        for d in &st.disks {
            println!(
                "disk {}: writes {} direct {}, reads {} direct {}; device threads {:.1} ms, vcpu {:.1} ms",
                d.id,
                d.write_ops,
                d.direct_writes,
                d.read_ops,
                d.direct_reads,
                st.device_time_ns as f64 / 1e6,
                st.vcpu_time_ns as f64 / 1e6
            );
        }
    }
    let out = String::from_utf8_lossy(&vm.debug_output()).into_owned();
    let boot = vm
        .started_at()
        .zip(vm.time_to_first_debug_write())
        .map(|(s, d)| s.saturating_duration_since(t0) + d)
        .unwrap_or_default();
    vm.delete();
    if reason != Some(crate::ExitReason::DebugExit(0)) {
        return Err(VmmError::Backend(format!(
            "guest failed ({reason:?}): {out}"
        )));
    }
    let _ = opts;
    Ok(OursRun {
        out,
        boot,
        host_cpu_ns,
    })
}

/// QEMU arguments for the benchmark disk: `drive` on virtio-blk-pci with an iothread.
fn blk_args(drive: &str) -> Vec<String> {
    [
        "-object",
        "iothread,id=io0",
        "-drive",
        drive,
        "-device",
        "virtio-blk-pci,drive=d0,iothread=io0,disable-legacy=on,serial=bench-disk",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// What one QEMU run gave.
pub(crate) struct QemuRun {
    /// Debug-port output.
    pub out: String,
    /// Time to the first debug byte.
    pub first: Duration,
    /// Memory overhead (measured for the `spin` guest only).
    pub mem_overhead: MemOverhead,
    /// CPU of its non-vCPU threads, sampled (see [`crate::bench_cpu`]).
    pub host_cpu_ns: u64,
}

/// Runs QEMU (`vcpus` vCPUs, `devices` as extra arguments) on the guest.
pub(crate) fn qemu_run(
    opts: &BenchOptions,
    elf: &Path,
    cmdline: &str,
    devices: &[String],
    vcpus: u8,
) -> Result<QemuRun> {
    let measure_memory = cmdline == "spin";
    let t0 = Instant::now();
    let mut child = Command::new(&opts.qemu)
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "qemu64",
            "-m",
            "128",
            "-nodefaults",
            "-no-user-config",
            // Named threads ("CPU 0/KVM", "IO io0"): the CPU sampler leaves the vCPUs out.
            "-name",
            "bench,debug-threads=on",
            "-smp",
        ])
        .arg(vcpus.to_string())
        .args([
            "-nographic",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "none",
        ])
        .arg("-kernel")
        .arg(elf)
        .args(["-append", cmdline])
        .args([
            "-chardev",
            "stdio,id=dbg",
            "-device",
            "isa-debugcon,iobase=0xe9,chardev=dbg",
        ])
        .args(["-device", "isa-debug-exit,iobase=0x501,iosize=2"])
        .args(devices)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io_err("spawn qemu"))?;
    let pid = child.id();
    let sampler = crate::bench_cpu::ThreadSampler::start(pid);
    let mut stdout = child
        .stdout
        .take()
        .ok_or(VmmError::Timeout("qemu stdout"))?;
    let mut out = Vec::new();
    let mut first = None;
    let mut mem_overhead = None;
    let mut buf = [0u8; 4096];
    loop {
        let n = stdout.read(&mut buf).map_err(io_err("read qemu output"))?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(|| t0.elapsed());
        out.extend_from_slice(&buf[..n]);
        if measure_memory && mem_overhead.is_none() && out.windows(8).any(|w| w == b"cmdline ") {
            // The guest has booted and now spins: measure, then stop it.
            std::thread::sleep(Duration::from_millis(200));
            mem_overhead = Some(process_overhead(pid, 128 << 20));
            let _ = child.kill();
        }
    }
    let _ = child.wait();
    Ok(QemuRun {
        out: String::from_utf8_lossy(&out).into_owned(),
        first: first.unwrap_or_default(),
        mem_overhead: mem_overhead.unwrap_or_default(),
        host_cpu_ns: sampler.finish(),
    })
}

/// Memory a VMM process holds beyond its guest RAM, from `/proc/<pid>/smaps` (Firecracker's
/// method: every mapping except the guest RAM one, the mapping of exactly `ram_bytes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MemOverhead {
    /// Resident bytes (RSS), the figure the target is set on.
    pub rss: u64,
    /// The anonymous part of `rss`: heap, stacks, relocated data, the process's own pages. The
    /// rest is file-backed and clean (code and read-only data of the binary and its libraries,
    /// pages of the page cache that other processes share and the kernel can drop).
    pub anon: u64,
    /// The part of `rss` in shared libraries' mappings (`*.so*` files: libc, libm, the dynamic
    /// loader...). A development build of Cairn links glibc dynamically and pays ~1.3 MiB here;
    /// the shipped binary is static (`image-builder/build-iso.sh`) and maps none.
    pub libs: u64,
}

/// The file of an smaps mapping header (`start-end perms offset dev inode [file]`; "" for an
/// anonymous one), or None when `line` is not a header.
fn mapping_file(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    let (start, end) = words.next()?.split_once('-')?;
    u64::from_str_radix(start, 16).ok()?;
    u64::from_str_radix(end, 16).ok()?;
    Some(words.nth(4).unwrap_or(""))
}

/// [`MemOverhead`] of `pid` (zero if its smaps cannot be read).
fn process_overhead(pid: u32, ram_bytes: u64) -> MemOverhead {
    std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map(|s| overhead_from_smaps(&s, ram_bytes))
        .unwrap_or_default()
}

/// Sums `Rss:` and `Anonymous:` over the mappings of an smaps text, leaving out those whose
/// `Size:` is `ram_bytes`.
fn overhead_from_smaps(smaps: &str, ram_bytes: u64) -> MemOverhead {
    let kib = |v: &str| v.trim().trim_end_matches(" kB").parse::<u64>().ok();
    let (mut m, mut in_guest, mut in_lib) = (MemOverhead::default(), false, false);
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Size:").and_then(kib) {
            in_guest = kb * 1024 == ram_bytes;
        } else if let Some(file) = mapping_file(line) {
            let name = file.rsplit('/').next().unwrap_or("");
            in_lib = file.starts_with('/') && name.contains(".so");
        } else if in_guest {
            continue;
        } else if let Some(kb) = line.strip_prefix("Rss:").and_then(kib) {
            m.rss += kb * 1024;
            if in_lib {
                m.libs += kb * 1024;
            }
        } else if let Some(kb) = line.strip_prefix("Anonymous:").and_then(kib) {
            m.anon += kb * 1024;
        }
    }
    m
}

/// Environment variable that turns `run` into the memory-measurement child (see `ours_memory`).
pub const CHILD_ENV: &str = "CAIRN_VMM_BENCH_MEM_CHILD";

/// Boots one idle 1 vCPU / 128 MiB VM with a RAM disk and waits for its first debug output.
fn idle_vm(elf: &Path, name: &str) -> Result<Vm> {
    let boot = BootConfig {
        kernel: elf.to_path_buf(),
        initrd: None,
        cmdline: "spin".into(),
    };
    let mut cfg = VmConfig::new(name, boot);
    cfg.disks.push(DiskConfig {
        id: "d".into(),
        backend: Arc::new(RamDisk::new(64 << 20)),
        queues: 1,
        queue_size: 256,
    });
    let mut vm = Vm::create(cfg)?;
    vm.start()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&vm.debug_output()).contains("cmdline")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(vm)
}

/// Child mode: boot one idle VM, say "ready"; on a line from stdin boot a second one in the
/// same process and say "ready2"; idle until killed (or 60 s).
fn memory_child(elf: &Path) -> Result<Vec<BenchLine>> {
    let first = idle_vm(elf, "bench-mem")?;
    println!("ready");
    let mut line = String::new();
    let mut second = None;
    if std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
        second = Some(idle_vm(elf, "bench-mem-2")?);
        println!("ready2");
        std::thread::sleep(Duration::from_secs(60));
    }
    if let Some(vm) = second {
        vm.delete();
    }
    first.delete();
    Ok(Vec::new())
}

/// Reads the child's stdout until `want` (a whole line) has been seen; false at end of file.
fn wait_line(out: &mut impl Read, seen: &mut Vec<u8>, want: &str) -> Result<bool> {
    let mut buf = [0u8; 64];
    while !String::from_utf8_lossy(seen).lines().any(|l| l == want) {
        let n = out.read(&mut buf).map_err(io_err("read child"))?;
        if n == 0 {
            return Ok(false);
        }
        seen.extend_from_slice(&buf[..n]);
    }
    Ok(true)
}

/// Our VMM's memory overhead measured like QEMU's: a separate process (this executable, re-run
/// with the same arguments and `CHILD_ENV` set) holding one idle VM; RSS minus resident guest RAM.
/// Also what a second VM adds in the same process: Cairn runs every VM of a node inside the node
/// process, so that growth (not a whole process) is what each further VM costs the host.
fn ours_memory(elf: &Path) -> Result<(MemOverhead, MemOverhead)> {
    let exe = std::env::current_exe().map_err(io_err("current exe"))?;
    let mut child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(CHILD_ENV, elf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io_err("spawn memory child"))?;
    let measured = (|| {
        let mut out = child
            .stdout
            .take()
            .ok_or(VmmError::Timeout("child stdout"))?;
        let mut seen = Vec::new();
        if !wait_line(&mut out, &mut seen, "ready")? {
            return Err(VmmError::Backend("memory child did not start a VM".into()));
        }
        std::thread::sleep(Duration::from_millis(200));
        let one = process_overhead(child.id(), 128 << 20);
        let mut input = child.stdin.take().ok_or(VmmError::Timeout("child stdin"))?;
        input.write_all(b"more\n").map_err(io_err("ask child"))?;
        if !wait_line(&mut out, &mut seen, "ready2")? {
            return Err(VmmError::Backend(
                "memory child did not start a second VM".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
        let two = process_overhead(child.id(), 128 << 20);
        let added = MemOverhead {
            rss: two.rss.saturating_sub(one.rss),
            anon: two.anon.saturating_sub(one.anon),
            libs: two.libs.saturating_sub(one.libs),
        };
        Ok((one, added))
    })();
    let _ = child.kill();
    let _ = child.wait();
    measured
}

/// Runs every metric and returns the lines (also printed to stdout as they complete).
/// The calling binary is re-executed with the same arguments for the memory measurement, so
/// it must reach `run` again with the same options (it does when it simply calls `run`).
pub fn run(opts: &BenchOptions) -> Result<Vec<BenchLine>> {
    if let Some(elf) = std::env::var_os(CHILD_ENV) {
        return memory_child(Path::new(&elf));
    }
    let mut lines = run_disks(opts, &["ram", "file", "engine"])?;
    let elf = opts.work_dir.join("guest.elf");
    let tsc_hz = host_tsc_hz()?;
    let emit = |l: BenchLine, lines: &mut Vec<BenchLine>| {
        println!("{}", l.to_json());
        lines.push(l);
    };
    let null_drive = format!(
        "driver=null-co,size={},read-zeroes=on,if=none,id=d0",
        opts.disk_bytes
    );
    let ram: Arc<dyn DiskBackend> = Arc::new(RamDisk::new(opts.disk_bytes));
    let (mut o, mut a, mut om, mut am) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut oa, mut aa, mut o2) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ol, mut al) = (Vec::new(), Vec::new());
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    for _ in 0..opts.runs.max(1) {
        let boot = ours_run(opts, &elf, "hello", ram.clone())?.boot;
        o.push(boot.as_secs_f64() * 1000.0);
        let (m, added) = ours_memory(&elf)?;
        om.push(mib(m.rss));
        oa.push(mib(m.anon));
        ol.push(mib(m.libs));
        // In KiB: a further VM's growth is tens of KiB, below the MiB lines' one decimal.
        o2.push(added.rss as f64 / 1024.0);
        let q = qemu_run(opts, &elf, "spin", &blk_args(&null_drive), 1)?;
        a.push(q.first.as_secs_f64() * 1000.0);
        am.push(mib(q.mem_overhead.rss));
        aa.push(mib(q.mem_overhead.anon));
        al.push(mib(q.mem_overhead.libs));
    }
    emit(
        BenchLine::new(
            "boot_to_first_debug_write_ms",
            median(o),
            median(a),
            "qemu",
            false,
        ),
        &mut lines,
    );
    emit(
        BenchLine::new(
            "vmm_memory_overhead_mib",
            median(om),
            median(am.clone()),
            "qemu",
            false,
        ),
        &mut lines,
    );
    // The anonymous part alone: memory the process holds for itself, without the code pages
    // it maps from the page cache (which fault-around maps 64 KiB at a time).
    emit(
        BenchLine::new(
            "vmm_memory_overhead_anon_mib",
            median(oa),
            median(aa),
            "qemu",
            false,
        ),
        &mut lines,
    );
    // The shared libraries' part of the first line: glibc & co. for a development build of
    // Cairn, none for the shipped static binary; QEMU's dozens of libraries.
    emit(
        BenchLine::new(
            "vmm_memory_overhead_shared_libs_mib",
            median(ol),
            median(al),
            "qemu",
            false,
        ),
        &mut lines,
    );
    // A further VM on a node: the node process's growth for a second identical VM, against a
    // whole QEMU process (QEMU runs one process per VM).
    emit(
        BenchLine::new(
            "vmm_memory_per_added_vm_kib",
            median(o2),
            median(am) * 1024.0,
            "qemu",
            false,
        ),
        &mut lines,
    );
    lines.extend(crate::bench_net::run(opts, &elf, tsc_hz)?);
    Ok(lines)
}

/// Fills `path` (created or truncated) with `bytes` bytes of `fill`, syncs it and drops it
/// from the page cache, so every block is allocated and written before a measurement (the
/// engine only adopts a pool disk whose first MiB is blank, so its files are filled with
/// zeros).
fn prewrite_file(path: &Path, bytes: u64, fill: u8) -> Result<()> {
    let f = std::fs::File::create(path).map_err(io_err("create bench file"))?;
    f.set_len(bytes).map_err(io_err("size bench file"))?;
    let chunk = vec![fill; 1 << 20];
    let mut off = 0;
    while off < bytes {
        let n = (bytes - off).min(chunk.len() as u64) as usize;
        std::os::unix::fs::FileExt::write_all_at(&f, &chunk[..n], off)
            .map_err(io_err("fill bench file"))?;
        off += n as u64;
    }
    f.sync_all().map_err(io_err("sync bench file"))?;
    // Out of the page cache, like a real device: an O_DIRECT write over a cached page cannot
    // be done without waiting (the page must go first), so io_uring hands every such write to
    // a kernel worker thread. Left cached, the engine's writes into its pool files' free space
    // (never written since the fill) would nearly all pay that, QEMU's into its file only the
    // first time each block is written.
    use std::os::fd::AsRawFd;
    // SAFETY: advice on a descriptor we hold open; no memory is passed. Only advice: a file
    // system that keeps the pages anyway (or has none) changes nothing measured.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    Ok(())
}

/// Developer knobs for profiling one side (read from the environment, never set by `cairn
/// bench`): `CAIRN_BENCH_VMM_QD=32` runs only that queue depth, `CAIRN_BENCH_VMM_ANCHOR=off`
/// skips QEMU (its figure then reads 0), so `perf` sees only Cairn's process;
/// `CAIRN_BENCH_VMM_EACH=1` also prints every run's figures, not only the medians, and per run
/// of ours the disk's counters (direct writes among them) and the device threads' CPU;
/// `CAIRN_BENCH_VMM_WORKERS=N` gives the disk's runtime N workers instead of 2 (how
/// the engine path fares with fewer threads to wake per request).
struct ProbeKnobs {
    qd: Option<u32>,
    anchor: bool,
    each: bool,
    workers: usize,
}

impl ProbeKnobs {
    fn from_env() -> Self {
        Self {
            qd: std::env::var("CAIRN_BENCH_VMM_QD")
                .ok()
                .and_then(|v| v.parse().ok()),
            anchor: std::env::var("CAIRN_BENCH_VMM_ANCHOR").as_deref() != Ok("off"),
            each: std::env::var("CAIRN_BENCH_VMM_EACH").as_deref() == Ok("1"),
            workers: std::env::var("CAIRN_BENCH_VMM_WORKERS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|w| *w > 0)
                .unwrap_or(2),
        }
    }

    fn qd(&self, qd: u32) -> bool {
        self.qd.is_none_or(|q| q == qd)
    }
}

/// Only the disk IOPS cases of [`run`], for the disk kinds named in `kinds` ("ram", "file",
/// "engine", or one operation of a kind such as "engine-write"); prints and returns their lines.
pub fn run_disks(opts: &BenchOptions, kinds: &[&str]) -> Result<Vec<BenchLine>> {
    std::fs::create_dir_all(&opts.work_dir).map_err(io_err("create bench dir"))?;
    let elf = opts.work_dir.join("guest.elf");
    std::fs::write(&elf, &opts.guest_elf).map_err(io_err("write guest elf"))?;
    let file = opts.work_dir.join("disk.raw");
    // Pre-written so reads touch real blocks and writes overwrite (see the module comment).
    prewrite_file(&file, opts.disk_bytes, 0x5a)?;
    let tsc_hz = host_tsc_hz()?;
    let mut lines = Vec::new();
    let emit = |l: BenchLine, lines: &mut Vec<BenchLine>| {
        println!("{}", l.to_json());
        lines.push(l);
    };
    let file_str = file.display().to_string();
    let null_drive = format!(
        "driver=null-co,size={},read-zeroes=on,if=none,id=d0",
        opts.disk_bytes
    );
    let file_drive = format!("file={file_str},if=none,id=d0,format=raw,cache=none,aio=io_uring");
    // Reads: a RAM disk nothing was written to answers every read from one block of zeros,
    // the work QEMU's `null-co` (read-zeroes=on) does for a read (it zero-fills the guest's
    // buffer and reads nothing). That makes the pair the virtio path alone, as the target
    // means it. Writes, and the `ram_written` reads, use a disk written over once: reads of it
    // also fetch 4 KiB from a random place in the disk's memory per request, which `null-co`
    // never does (printed beside, as context).
    let ram_empty: Arc<dyn DiskBackend> = Arc::new(RamDisk::new(opts.disk_bytes));
    let ram_disk = RamDisk::new(opts.disk_bytes);
    // Touch every chunk once so the measurement is the virtio path, not first-touch zeroing.
    let chunk = vec![0u8; 1 << 20];
    let mut off = 0;
    while off + chunk.len() as u64 <= opts.disk_bytes {
        ram_disk
            .write(off, &chunk)
            .map_err(|e| VmmError::Backend(e.to_string()))?;
        off += chunk.len() as u64;
    }
    let ram: Arc<dyn DiskBackend> = Arc::new(ram_disk);
    let filedisk: Arc<dyn DiskBackend> =
        Arc::new(FileDisk::open(&file, false, true).map_err(|e| VmmError::Backend(e.to_string()))?);
    let probe = ProbeKnobs::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(probe.workers)
        .enable_all()
        .build()
        .map_err(io_err("tokio runtime"))?;
    let wanted = |kind: &str, op: &str| {
        kinds
            .iter()
            .any(|k| *k == kind || k.strip_prefix(kind) == Some(&format!("-{op}")))
    };
    // The engine (and its two pre-written pool files) only when an engine case is wanted.
    let engine = if wanted("engine", "read") || wanted("engine", "write") {
        Some(engine_backend(opts, &rt)?)
    } else {
        None
    };
    let enginedisk: Arc<dyn DiskBackend> = match &engine {
        Some((_, d)) => d.clone(),
        None => ram.clone(),
    };
    let raw = "qemu raw file cache=none aio=io_uring";
    let null = "qemu null-co";
    let (read, write, both): (&[&str], &[&str], &[&str]) =
        (&["read"], &["write"], &["read", "write"]);
    // (kind asked for, metric prefix, our disk, QEMU's drive, anchor, operations).
    for (kind, metric, ours_backend, drive, anchor_name, ops) in [
        ("ram", "ram", &ram_empty, &null_drive, null, read),
        ("ram", "ram", &ram, &null_drive, null, write),
        ("ram", "ram_written", &ram, &null_drive, null, read),
        ("file", "file", &filedisk, &file_drive, raw, both),
        ("engine", "engine", &enginedisk, &file_drive, raw, both),
    ] {
        for &op in ops {
            if !wanted(kind, op) {
                continue;
            }
            for qd in [1u32, 32] {
                if !probe.qd(qd) {
                    continue;
                }
                let cmd = format!("bench-{op} qd={qd} ops={}", opts.ops);
                let (mut o, mut a, mut oc, mut ac) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                let per_io_us = |ns: u64| ns as f64 / 1000.0 / opts.ops.max(1) as f64;
                for _ in 0..opts.runs.max(1) {
                    let r = ours_run(opts, &elf, &cmd, ours_backend.clone())?;
                    o.push(parse_iops(&r.out, tsc_hz)?);
                    oc.push(per_io_us(r.host_cpu_ns));
                    if probe.anchor {
                        let q = qemu_run(opts, &elf, &cmd, &blk_args(drive), 1)?;
                        a.push(parse_iops(&q.out, tsc_hz)?);
                        ac.push(per_io_us(q.host_cpu_ns));
                    }
                }
                if probe.each {
                    println!("runs {metric}-{op} qd{qd}: iops {o:.0?} vs {a:.0?}; host cpu us/io {oc:.1?} vs {ac:.1?}");
                }
                emit(
                    BenchLine::new(
                        &format!("{metric}_rand{op}_qd{qd}_iops"),
                        median(o),
                        median(a),
                        anchor_name,
                        true,
                    ),
                    &mut lines,
                );
                emit(
                    BenchLine::new(
                        &format!("{metric}_rand{op}_qd{qd}_host_cpu_us_per_io"),
                        median(oc),
                        median(ac),
                        anchor_name,
                        false,
                    ),
                    &mut lines,
                );
            }
        }
    }
    drop(enginedisk);
    if let Some((engine, disk)) = engine {
        drop(disk);
        rt.block_on(engine.shutdown())
            .map_err(|e| VmmError::Backend(e.to_string()))?;
    }
    Ok(lines)
}

/// Only the virtio-net case of [`run`] (1 vs N queue pairs against QEMU), for quick runs.
pub fn run_net_only(opts: &BenchOptions) -> Result<Vec<BenchLine>> {
    std::fs::create_dir_all(&opts.work_dir).map_err(io_err("create bench dir"))?;
    let elf = opts.work_dir.join("guest.elf");
    std::fs::write(&elf, &opts.guest_elf).map_err(io_err("write guest elf"))?;
    crate::bench_net::run(opts, &elf, host_tsc_hz()?)
}

/// An engine with two file-backed pool disks (io_uring, O_DIRECT) in the work dir and one
/// pre-written vdisk of `disk_bytes`, as a VM disk backend.
fn engine_backend(
    opts: &BenchOptions,
    rt: &tokio::runtime::Runtime,
) -> Result<(engine::Engine, Arc<dyn DiskBackend>)> {
    let be = |e: &dyn std::fmt::Display| VmmError::Backend(e.to_string());
    let engine = rt.block_on(async {
        let e = engine::Engine::open(engine::EngineConfig {
            node_id: 1,
            node_name: "bench".into(),
        })
        .await
        .map_err(|e| be(&e))?;
        for i in 0..2 {
            let path = opts.work_dir.join(format!("pool{i}.img"));
            let _ = std::fs::remove_file(&path);
            prewrite_file(&path, (opts.disk_bytes * 4).max(1 << 30), 0)?;
            e.add_disk(blockdev::open_device(&path).map_err(|e| be(&e))?)
                .await
                .map_err(|e| be(&e))?;
        }
        e.create_vdisk("bench", opts.disk_bytes)
            .await
            .map_err(|e| be(&e))?;
        let h = e.open_vdisk("bench").map_err(|e| be(&e))?;
        let chunk = vec![0x5au8; 1 << 20];
        let mut off = 0;
        while off + chunk.len() as u64 <= opts.disk_bytes {
            h.write(off, &chunk).await.map_err(|e| be(&e))?;
            off += chunk.len() as u64;
        }
        h.flush().await.map_err(|e| be(&e))?;
        Ok::<_, VmmError>(e)
    })?;
    let handle = engine.open_vdisk("bench").map_err(|e| be(&e))?;
    Ok((
        engine,
        Arc::new(crate::EngineDisk::new(handle, rt.handle().clone())),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pre-written bench file is left out of the page cache: an O_DIRECT write over a cached
    /// page goes to io_uring's worker threads, which the measurement must not include.
    #[test]
    fn a_prewritten_file_is_not_left_in_the_page_cache() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let len = 4usize << 20;
        prewrite_file(&path, len as u64, 0x5a).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: all zeros is a valid statfs (plain integers).
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: fstatfs fills the struct for a descriptor we hold open.
        let r = unsafe { libc::fstatfs(f.as_raw_fd(), &mut fs) };
        assert_eq!(r, 0);
        if fs.f_type == libc::TMPFS_MAGIC {
            println!("skipped: the temporary directory is on tmpfs (pages are the file)");
            return;
        }
        // SAFETY: a read-only shared mapping of the whole file, unmapped below; mincore only
        // writes one byte per page into `resident`, which has room for every page.
        let resident = unsafe {
            let at = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(at, libc::MAP_FAILED);
            let mut v = vec![0u8; len.div_ceil(4096)];
            let r = libc::mincore(at, len, v.as_mut_ptr());
            libc::munmap(at, len);
            assert_eq!(r, 0);
            v.iter().filter(|b| *b & 1 != 0).count()
        };
        assert!(resident < len / 4096 / 8, "{resident} pages still cached");
    }

    #[test]
    fn overhead_leaves_out_the_guest_ram_mapping_only() {
        let smaps = "\
55d000000000-55d000400000 r-xp 00000000 fe:01 123 /usr/bin/cairn
Size:               4096 kB
Rss:                1024 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
7f0020000000-7f0020100000 r-xp 00026000 fe:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1024 kB
Rss:                 256 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:              131072 kB
Anonymous:        131072 kB
7f0010000000-7f0010100000 rw-p 00000000 00:00 0 [heap]
Size:               1024 kB
Rss:                 512 kB
Anonymous:           512 kB
";
        let m = overhead_from_smaps(smaps, 128 << 20);
        assert_eq!(
            m,
            MemOverhead {
                rss: (1024 + 256 + 512) << 10,
                anon: 512 << 10,
                libs: 256 << 10,
            }
        );
        assert_eq!(overhead_from_smaps("", 128 << 20), MemOverhead::default());
    }
}
