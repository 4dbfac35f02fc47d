//! The virtio-net part of `cairn bench vmm`: guest transmit throughput (1514-byte frames) with
//! one queue pair and with N pairs (N = host CPUs, 2..=8), Cairn's VMM versus QEMU's
//! virtio-net-pci on the same multi-queue tap (`vhost=off`: both move frames in userspace),
//! same test guest, same frame count, in one invocation. BENCHMARKS.md names no network anchor;
//! QEMU is the anchor every other `bench vmm` figure uses. Everything happens inside a network
//! namespace this benchmark creates for its own thread (the tap and the VMs' threads and the
//! QEMU child live there and vanish with it); the frames use an ethertype the host stack drops.
//! Where tap devices or namespaces cannot be had, it prints `skipped: <reason>` and returns no
//! lines. Never used by tests.

use crate::bench::{median, qemu_run, BenchLine, BenchOptions};
use crate::error::{Result, VmmError};
use crate::{BootConfig, NetConfig, Vm, VmConfig};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TAP: &str = "cairn-bench0";
const MAC: [u8; 6] = [0x52, 0x54, 0, 0xbe, 0x4c, 0x01];
const FRAME_BYTES: u64 = 1514;
const ANCHOR: &str = "qemu virtio-net-pci tap vhost=off";

/// Queue pairs of the multi-queue case: one per host CPU, at least 2, at most 8.
pub fn multi_queue_pairs() -> u8 {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    u8::try_from(cpus.clamp(2, 8)).unwrap_or(2)
}

fn ip(args: &[&str]) -> std::result::Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Parses "bench net-tx pairs=N frames=M bytes=B tsc=T errors=0" into bits per second.
fn parse_bps(out: &str, tsc_hz: f64) -> Result<f64> {
    let line = out
        .lines()
        .find(|l| l.starts_with("bench net-tx "))
        .ok_or_else(|| VmmError::Backend(format!("guest printed no net bench line: {out}")))?;
    let field = |k: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k).and_then(|v| v.parse::<f64>().ok()))
    };
    match (field("bytes="), field("tsc="), field("errors=")) {
        (Some(bytes), Some(tsc), Some(e)) if tsc > 0.0 && e == 0.0 => {
            Ok(bytes * 8.0 / (tsc / tsc_hz))
        }
        _ => Err(VmmError::Backend(format!("bad net bench line: {line}"))),
    }
}

fn ours(elf: &Path, cmdline: &str, pairs: u8) -> Result<String> {
    let boot = BootConfig {
        kernel: elf.to_path_buf(),
        initrd: None,
        cmdline: cmdline.into(),
    };
    let mut cfg = VmConfig::new("bench-net", boot);
    cfg.vcpus = pairs;
    cfg.memory_bytes = 128 << 20;
    cfg.nets.push(NetConfig {
        id: "nic0".into(),
        tap: TAP.into(),
        mac: MAC,
    });
    let mut vm = Vm::create(cfg)?;
    vm.start()?;
    let reason = vm.wait_exit(Duration::from_secs(300));
    let out = String::from_utf8_lossy(&vm.debug_output()).into_owned();
    vm.delete();
    if reason != Some(crate::ExitReason::DebugExit(0)) {
        return Err(VmmError::Backend(format!(
            "guest failed ({reason:?}): {out}"
        )));
    }
    Ok(out)
}

fn qemu_net_args(pairs: u8) -> Vec<String> {
    let mac = MAC.map(|b| format!("{b:02x}")).join(":");
    let (netdev, device) = if pairs > 1 {
        (
            format!("tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off,queues={pairs}"),
            format!(
                "virtio-net-pci,netdev=n0,mac={mac},disable-legacy=on,mq=on,vectors={}",
                2 * u32::from(pairs) + 2
            ),
        )
    } else {
        (
            format!("tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off"),
            format!("virtio-net-pci,netdev=n0,mac={mac},disable-legacy=on"),
        )
    };
    vec!["-netdev".into(), netdev, "-device".into(), device]
}

/// The whole net case inside a fresh namespace (call from a thread of its own).
fn run_in_namespace(
    opts: &BenchOptions,
    elf: &Path,
    tsc_hz: f64,
) -> std::result::Result<Result<Vec<BenchLine>>, String> {
    // SAFETY: unshare only moves the calling thread into a new network namespace; the VMs'
    // threads and the QEMU child are started from this thread and inherit it.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "cannot create a network namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err("/dev/net/tun not available".into());
    }
    let frames = (opts.ops * 50).max(10_000);
    let mut lines = Vec::new();
    for pairs in [1u8, multi_queue_pairs()] {
        // A persistent tap, up, that both VMMs attach to in turn: single-queue for one pair
        // (both open it without IFF_MULTI_QUEUE then), multi-queue otherwise.
        let _ = ip(&["link", "del", TAP]);
        let mut add = vec!["tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr"];
        if pairs > 1 {
            add.push("multi_queue");
        }
        ip(&add).and_then(|_| ip(&["link", "set", TAP, "up"]))?;
        let cmd = format!("bench-net pairs={pairs} frames={frames} len={FRAME_BYTES}");
        let (mut o, mut a) = (Vec::new(), Vec::new());
        for _ in 0..opts.runs.max(1) {
            let run = || -> Result<(f64, f64)> {
                let ours = parse_bps(&ours(elf, &cmd, pairs)?, tsc_hz)?;
                let q = qemu_run(opts, elf, &cmd, &qemu_net_args(pairs), pairs)?;
                Ok((ours, parse_bps(&q.out, tsc_hz)?))
            };
            match run() {
                Ok((x, y)) => {
                    o.push(x / 1e6);
                    a.push(y / 1e6);
                }
                Err(e) => return Ok(Err(e)),
            }
        }
        let line = BenchLine::new(
            &format!("net_tx_{FRAME_BYTES}b_{pairs}q_mbps"),
            median(o),
            median(a),
            ANCHOR,
            true,
        );
        println!("{}", line.to_json());
        lines.push(line);
    }
    Ok(Ok(lines))
}

/// Runs the net case; prints its JSON lines (or `skipped: <reason>`) and returns the lines.
pub fn run(opts: &BenchOptions, elf: &Path, tsc_hz: f64) -> Result<Vec<BenchLine>> {
    let (opts2, elf2) = (opts.clone(), elf.to_path_buf());
    let joined = std::thread::Builder::new()
        .name("bench-net".into())
        .spawn(move || run_in_namespace(&opts2, &elf2, tsc_hz))
        .map_err(crate::error::io_err("spawn bench-net thread"))?
        .join()
        .map_err(|_| VmmError::Backend("net benchmark thread panicked".into()))?;
    match joined {
        Ok(r) => r,
        Err(reason) => {
            println!("skipped: net benchmark: {reason}");
            Ok(Vec::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_guest_line() {
        let out = "x\nbench net-tx pairs=2 frames=1000 bytes=1514000 tsc=1000000 errors=0\n";
        let bps = parse_bps(out, 1e9).unwrap();
        assert!((bps - 1_514_000.0 * 8.0 / 1e-3).abs() < 1.0, "{bps}");
        assert!(parse_bps("bench net-tx frames=1 bytes=1 tsc=1 errors=3", 1e9).is_err());
        assert!(parse_bps("nothing", 1e9).is_err());
        assert!(multi_queue_pairs() >= 2);
        assert!(qemu_net_args(2)[3].contains("mq=on,vectors=6"));
    }
}
