//! NBD figures: fio's nbd engine against our NBD export (a two-replica engine disk on the two
//! bench files) vs against qemu-storage-daemon serving a qcow2 image on the same file system.
//! Both images are written in full first so reads hit the device. Server CPU per I/O is compared
//! too (our process vs the daemon's, from /proc).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{engine_on, fio, load, median, selected, EngineBenchArgs, Figure};

/// CPU seconds of another process (utime + stime; USER_HZ = 100).
fn proc_cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(port: u16, child: &mut Child) -> Result<()> {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(s) = child.try_wait()? {
            bail!("qemu-storage-daemon exited: {s}");
        }
        if t.elapsed() > Duration::from_secs(20) {
            bail!("qemu-storage-daemon did not listen on {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

struct Qsd {
    child: Child,
    uri: String,
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_qsd(image: &Path, span: u64) -> Result<Qsd> {
    // Its stderr goes to a log next to the image (the readiness probe makes it complain).
    let log = std::fs::File::create(image.with_extension("log"))?;
    let _ = std::fs::remove_file(image);
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(image)
        .arg(span.to_string())
        .status()
        .context("qemu-img (ci/setup.sh installs qemu-utils)")?;
    if !st.success() {
        bail!("qemu-img create failed");
    }
    let port = free_port()?;
    let mut child = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=f0,filename={},cache.direct=on,aio=io_uring",
            image.display()
        ))
        .args(["--blockdev", "driver=qcow2,node-name=q0,file=f0"])
        .arg("--nbd-server")
        .arg(format!(
            "addr.type=inet,addr.host=127.0.0.1,addr.port={port}"
        ))
        .args([
            "--export",
            "type=nbd,id=e0,node-name=q0,name=bench,writable=on",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("start qemu-storage-daemon")?;
    wait_listening(port, &mut child)?;
    Ok(Qsd {
        child,
        uri: format!("nbd://127.0.0.1:{port}/bench"),
    })
}

fn fio_args(uri: &str, rw: &str, bs: &str, qd: usize, span: u64, secs: Option<u64>) -> Vec<String> {
    let mut a = vec![
        "--name=nbd".to_string(),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
        format!("--rw={rw}"),
        format!("--bs={bs}"),
        format!("--iodepth={qd}"),
        format!("--size={span}"),
    ];
    if let Some(s) = secs {
        a.push("--time_based".into());
        a.push(format!("--runtime={s}"));
    }
    a
}

/// Run fio on a blocking thread (our NBD server keeps running on the runtime meanwhile) and
/// measure the server's CPU with `cpu`.
async fn measure(args: Vec<String>, cpu: impl Fn() -> f64) -> Result<(f64, f64)> {
    let c0 = cpu();
    let r = tokio::task::spawn_blocking(move || fio::run(&args)).await??;
    let c1 = cpu();
    Ok((r.iops, (c1 - c0) / r.ios.max(1.0) * 1e6))
}

pub async fn run(
    a: &EngineBenchArgs,
    files: &[PathBuf; 2],
    span: u64,
    dur: Duration,
) -> Result<()> {
    for tool in ["fio", "qemu-img", "qemu-storage-daemon"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("cairn bench engine: skipped: NBD figures ({tool} not installed)");
            return Ok(());
        }
    }
    let (engine, h) = engine_on(files, "nbdbench", span).await?;
    load::prefill(&h, span).await?;
    let server = nbd::NbdServer::bind("127.0.0.1:0").await?;
    server.add_export("bench", Arc::new(node::VdiskExport::new(h.clone(), false)))?;
    let server = server.spawn()?;
    let ours_uri = format!("nbd://{}/bench", server.local_addr());

    let qsd = start_qsd(&a.dir.join("qsd.qcow2"), span)?;
    let qsd_pid = qsd.child.id();
    let fill = fio_args(&qsd.uri, "write", "1m", 8, span, None);
    tokio::task::spawn_blocking(move || fio::run(&fill)).await??;

    for (stem, pat, rw, bs) in selected(a, span) {
        let (mut ours, mut ours_cpu, mut anchor, mut anchor_cpu) = (vec![], vec![], vec![], vec![]);
        for _ in 0..a.runs {
            let (i, c) = measure(
                fio_args(&ours_uri, rw, bs, pat.qd, span, Some(dur.as_secs())),
                load::cpu_secs,
            )
            .await?;
            ours.push(i);
            ours_cpu.push(c);
            let (i, c) = measure(
                fio_args(&qsd.uri, rw, bs, pat.qd, span, Some(dur.as_secs())),
                move || proc_cpu_secs(qsd_pid),
            )
            .await?;
            anchor.push(i);
            anchor_cpu.push(c);
        }
        let seq = stem.starts_with("seq");
        Figure {
            metric: format!("nbd_{stem}_{}", if seq { "mib_s" } else { "iops" }),
            ours: median(ours),
            anchor: median(anchor),
            anchor_name: "qemu-storage-daemon qcow2 over NBD (fio nbd engine)".into(),
            higher_is_better: true,
        }
        .print();
        Figure {
            metric: format!("nbd_{stem}_server_cpu_us_per_io"),
            ours: median(ours_cpu),
            anchor: median(anchor_cpu),
            anchor_name: "qemu-storage-daemon usr+sys".into(),
            higher_is_better: false,
        }
        .print();
    }
    drop(qsd);
    let _ = std::fs::remove_file(a.dir.join("qsd.qcow2"));
    let _ = std::fs::remove_file(a.dir.join("qsd.log"));
    server.stop().await;
    drop(h);
    engine.shutdown().await?;
    Ok(())
}
