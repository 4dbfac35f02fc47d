//! Runs the VMM-vs-QEMU benchmark (`cairn bench vmm` will call the same function).
//! Usage: cargo run --release -p vmm --example bench_vmm [ops] [runs] [net | KIND...]
//! (`net`: only the virtio-net case; KIND = ram, file, engine, or e.g. engine-write: only
//! those disk cases.)

fn main() -> anyhow::Result<()> {
    if !vmm::kvm_available() {
        println!("skipped: /dev/kvm not available");
        return Ok(());
    }
    let mut args = std::env::args().skip(1);
    let ops = args.next().and_then(|a| a.parse().ok()).unwrap_or(20000);
    let runs = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let opts = vmm::bench::BenchOptions {
        work_dir: std::env::temp_dir().join("cairn-bench-vmm"),
        guest_elf: test_guests::GUEST_ELF.to_vec(),
        disk_bytes: 256 << 20,
        ops,
        runs,
        qemu: "qemu-system-x86_64".into(),
    };
    let rest: Vec<String> = args.collect();
    if rest.first().map(String::as_str) == Some("net") {
        vmm::bench::run_net_only(&opts)?;
    } else if !rest.is_empty() {
        let kinds: Vec<&str> = rest.iter().map(String::as_str).collect();
        vmm::bench::run_disks(&opts, &kinds)?;
    } else {
        vmm::bench::run(&opts)?;
    }
    Ok(())
}
