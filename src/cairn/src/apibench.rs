//! `cairn bench api`: the HTTPS API under load, against nginx serving the same JSON body as a
//! static file over TLS (the anchor in BENCHMARKS.md). A benchmark, never part of the test run.
//!
//! Defines `--vdisks` virtual disks (default 5,000) and `--vms` VM definitions (default 1,000;
//! within the node's bounds of 4,096 VMs and the pool metadata's ~5,800 short-named disks; a
//! bound reached earlier stops defining, which is reported) on a throwaway node with small
//! file-backed disks, serves the API on 127.0.0.1, and runs wrk (100 connections, keep-alive,
//! one TLS handshake per connection) against the VM list and virtual disk list (one page of
//! `--page` entries), a single VM get and a single virtual disk get. Owned by the api work.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use control::{Actor, Controller, Request};

#[derive(Debug, Args)]
pub struct ApiBenchArgs {
    /// Scratch directory (node data, nginx files).
    #[arg(long, default_value = "/var/tmp/cairn-bench-api")]
    pub dir: PathBuf,
    /// Virtual disks to define before measuring.
    #[arg(long, default_value_t = 5000)]
    pub vdisks: usize,
    /// VM definitions to create before measuring (never started).
    #[arg(long, default_value_t = 1000)]
    pub vms: usize,
    /// Entries per list page requested.
    #[arg(long, default_value_t = 100)]
    pub page: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Serve lists without the api's list cache (to measure what the cache saves).
    #[arg(long)]
    pub no_list_cache: bool,
    /// Measure only these (comma-separated: vm_list, vm_get, vdisk_list, vdisk_get); all by
    /// default. For A/B runs and profiling one request kind.
    #[arg(long, value_delimiter = ',', value_parser = ["vm_list", "vm_get", "vdisk_list", "vdisk_get"])]
    pub only: Vec<String>,
}

struct Wrk {
    rps: f64,
    p99_ms: f64,
}

fn wrk(url: &str, token: Option<&str>, a: &ApiBenchArgs) -> Result<Wrk> {
    let mut cmd = Command::new(ensure_tool("wrk", "wrk")?);
    cmd.args([
        "-t2",
        &format!("-c{}", a.connections),
        &format!("-d{}s", a.seconds),
        "--latency",
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd
        .arg(url)
        .output()
        .context("run wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("wrk output without Requests/sec:\n{text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| parse_ms(v.trim()))
        .with_context(|| format!("wrk output without a 99% line:\n{text}"))??;
    if text.contains("Non-2xx") {
        bail!("wrk saw error answers from {url}:\n{text}");
    }
    Ok(Wrk { rps, p99_ms: p99 })
}

/// Where `bin` is on PATH (or in /usr/sbin, where nginx lives).
fn find_tool(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// The load generator and the anchor must be there: install a missing one from apt (as
/// ci/setup.sh would), and say plainly when that is not possible instead of measuring nothing.
fn ensure_tool(bin: &str, apt_pkg: &str) -> Result<PathBuf> {
    if let Some(p) = find_tool(bin) {
        return Ok(p);
    }
    eprintln!("{bin} is missing: installing the Debian package {apt_pkg}");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends", apt_pkg])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    match find_tool(bin) {
        Some(p) => Ok(p),
        None => bail!(
            "cannot measure: {bin} is not installed and `apt-get install {apt_pkg}` {} \
             (install it by hand, or run ci/setup.sh)",
            if ok { "did not provide it" } else { "failed" }
        ),
    }
}

fn parse_ms(v: &str) -> Result<f64> {
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("unknown latency unit in {v:?}")
    };
    Ok(num.parse::<f64>()? * mult)
}

/// The 1-minute load average: figures on the shared 2-core machine mean little without it.
fn load_avg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn print(metric: &str, ours: f64, anchor: f64, higher_is_better: bool) {
    let ratio = if anchor > 0.0 { ours / anchor } else { 0.0 };
    let line = serde_json::json!({
        "bench": "api", "metric": metric, "ours": (ours * 100.0).round() / 100.0,
        "anchor": (anchor * 100.0).round() / 100.0, "anchor_name": "nginx static file (TLS)",
        "ratio": (ratio * 1000.0).round() / 1000.0, "higher_is_better": higher_is_better,
        "load_1m": load_avg(),
    });
    println!("{line}");
}

pub fn run(a: ApiBenchArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cairn bench api: {e}");
            return 1;
        }
    };
    match rt.block_on(bench(&a)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cairn bench api: {e:#}");
            1
        }
    }
}

/// Compressed bytes of the JavaScript and CSS the UI's first page load fetches: every script
/// and stylesheet `index.html` names (lazily loaded chunks, such as the console's, are not
/// fetched on first load), as the server sends them to a browser that accepts gzip. `None`
/// when the binary carries no built UI.
fn ui_first_load(base: &str) -> Result<Option<(u64, usize)>> {
    let index = Command::new("curl")
        .args(["-skf", &format!("{base}/")])
        .output()
        .context("run curl")?;
    let html = String::from_utf8_lossy(&index.stdout).to_string();
    let assets: Vec<&str> = html
        .split(['"', '\''])
        .filter(|t| t.starts_with('/') && (t.ends_with(".js") || t.ends_with(".css")))
        .collect();
    if assets.is_empty() {
        return Ok(None);
    }
    let mut total = 0u64;
    for path in &assets {
        let out = Command::new("curl")
            .args([
                "-skf",
                "-H",
                "Accept-Encoding: gzip, br",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
                &format!("{base}{path}"),
            ])
            .output()
            .context("run curl")?;
        if !out.status.success() {
            bail!("GET {path} (named by index.html) failed");
        }
        total += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .with_context(|| format!("size of {path}"))?;
    }
    Ok(Some((total, assets.len())))
}

async fn bench(a: &ApiBenchArgs) -> Result<()> {
    // Before the long set-up: without these there is nothing to measure.
    ensure_tool("curl", "curl")?;
    ensure_tool("wrk", "wrk")?;
    ensure_tool("nginx", "nginx-light")?;
    let _ = std::fs::remove_dir_all(&a.dir);
    std::fs::create_dir_all(&a.dir)?;
    let mut cfg = node::NodeConfig::new(a.dir.join("node"));
    cfg.disk_count = 2;
    cfg.disk_size_bytes = 1 << 30;
    cfg.api_listen = None;
    cfg.node_name = Some("bench".into());
    let n = node::Node::start(cfg).await.context("start node")?;
    let ctl: Arc<dyn Controller> = n.controller();
    eprintln!("defining {} virtual disks…", a.vdisks);
    let t0 = std::time::Instant::now();
    let mut next = 0usize;
    let mut defined = 0usize;
    'define: while next < a.vdisks {
        let batch: Vec<_> = (next..(next + 64).min(a.vdisks))
            .map(|i| {
                let ctl = ctl.clone();
                async move {
                    let req = Request::VdiskCreate {
                        name: format!("bench-{i:05}"),
                        size_bytes: 1 << 30,
                    };
                    ctl.execute(Actor::internal("bench"), req).await
                }
            })
            .collect();
        for r in futures::future::join_all(batch).await {
            match r {
                Ok(_) => defined += 1,
                // The engine bounds the number of virtual disks (a conflict since the bound is
                // the caller's to respect); measure with what fits.
                Err(e)
                    if matches!(
                        e.code,
                        control::ErrorCode::Conflict | control::ErrorCode::NoSpace
                    ) && defined > 0 =>
                {
                    eprintln!("engine limit reached: {}", e.message);
                    break 'define;
                }
                Err(e) => bail!("create: {e}"),
            }
        }
        next += 64;
    }
    println!(
        "{}",
        serde_json::json!({"bench": "api", "metric": "vdisks_defined", "ours": defined, "asked": a.vdisks})
    );
    eprintln!("defined in {:.1} s", t0.elapsed().as_secs_f64());
    // VMs are definitions only (never started): the kernel must merely be a file.
    let kernel = a.dir.join("kernel.bin");
    std::fs::write(&kernel, [0u8; 4096])?;
    let mut vms = 0usize;
    for i in 0..a.vms {
        let req = Request::VmCreate {
            name: format!("vm-{i:05}"),
            vcpus: 1,
            memory_mib: 64,
            disks: vec![format!("bench-{:05}", i % defined.max(1))],
            kernel: kernel.display().to_string(),
            cmdline: None,
            nics: Vec::new(),
        };
        match ctl.execute(Actor::internal("bench"), req).await {
            Ok(_) => vms += 1,
            Err(e) if vms > 0 => {
                eprintln!("VM limit reached: {}", e.message);
                break;
            }
            Err(e) => bail!("vm create: {e}"),
        }
    }
    println!(
        "{}",
        serde_json::json!({"bench": "api", "metric": "vms_defined", "ours": vms, "asked": a.vms,
            "list_cache": !a.no_list_cache})
    );

    let state = a.dir.join("api");
    api::bootstrap_admin(&state)?;
    let (_, token) = api::users::Directory::open(&state)?
        .create_token(api::BOOTSTRAP_ADMIN, "bench", control::Role::ReadOnly, 3600)
        .map_err(|(_, m)| anyhow::anyhow!(m))?;
    let mut api_cfg = api::ApiConfig::new("127.0.0.1:0".parse()?, state.clone());
    api_cfg.list_cache = !a.no_list_cache;
    let h = api::serve(api_cfg, ctl.clone()).await?;
    let base = format!("https://127.0.0.1:{}", h.local_addr.port());
    let list_url = format!("{base}/api/v1/vdisks?limit={}", a.page);
    let get_url = format!("{base}/api/v1/vdisks/bench-{:05}", defined / 2);
    let vm_list_url = format!("{base}/api/v1/vms?limit={}", a.page);
    let vm_get_url = format!("{base}/api/v1/vms/vm-{:05}", vms / 2);

    // The UI's first load (target: <= 250 KB of compressed JavaScript and CSS).
    match ui_first_load(&base)? {
        Some((bytes, files)) => println!(
            "{}",
            serde_json::json!({"bench": "api", "metric": "ui_first_load_kb",
                "ours": (bytes as f64 / 1000.0 * 10.0).round() / 10.0, "target_max": 250,
                "files": files, "what": "compressed JS + CSS named by index.html"})
        ),
        None => println!(
            "{}",
            serde_json::json!({"bench": "api", "metric": "ui_first_load_kb", "ours": null,
                "note": "this binary carries no built UI (build ui/ first)"})
        ),
    }

    // The anchor: nginx serving the very same bodies as static files over TLS.
    let www = a.dir.join("www");
    std::fs::create_dir_all(&www)?;
    for (url, file) in [
        (&list_url, "list.json"),
        (&get_url, "get.json"),
        (&vm_list_url, "vms.json"),
        (&vm_get_url, "vm.json"),
    ] {
        let out = Command::new("curl")
            .args(["-skf", "-H", &format!("Authorization: Bearer {token}"), url])
            .output()
            .context("run curl")?;
        if !out.status.success() {
            bail!("curl {url} failed");
        }
        std::fs::write(www.join(file), &out.stdout)?;
    }
    let nginx_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let conf = a.dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 2;\nerror_log {d}/nginx-error.log;\npid {d}/nginx.pid;\nevents {{ worker_connections 1024; }}\n\
             http {{ access_log off; keepalive_requests 100000; default_type application/json;\n\
             server {{ listen 127.0.0.1:{nginx_port} ssl; ssl_protocols TLSv1.3 TLSv1.2;\n\
             ssl_certificate {s}/tls/cert.pem; ssl_certificate_key {s}/tls/key.pem; root {w}; }} }}\n",
            d = a.dir.display(),
            s = state.display(),
            w = www.display()
        ),
    )?;
    let nginx_bin = ensure_tool("nginx", "nginx-light")?;
    let mut nginx = Command::new(&nginx_bin)
        .args([
            "-c",
            &conf.display().to_string(),
            "-p",
            &a.dir.display().to_string(),
            "-g",
            "daemon off;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start nginx (apt-get install nginx-light)")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let result = (|| -> Result<()> {
        let anchor = |f: &str| format!("https://127.0.0.1:{nginx_port}/{f}");
        for (metric, url, file) in [
            ("vm_list", &vm_list_url, "vms.json"),
            ("vm_get", &vm_get_url, "vm.json"),
            ("vdisk_list", &list_url, "list.json"),
            ("vdisk_get", &get_url, "get.json"),
        ] {
            if !a.only.is_empty() && !a.only.iter().any(|o| o == metric) {
                continue;
            }
            let ours = wrk(url, Some(&token), a)?;
            let nginx = wrk(&anchor(file), None, a)?;
            print(&format!("{metric}_rps"), ours.rps, nginx.rps, true);
            print(
                &format!("{metric}_p99_ms"),
                ours.p99_ms,
                nginx.p99_ms,
                false,
            );
        }
        Ok(())
    })();
    // SIGKILL on the master would orphan its workers: ask it to stop them first.
    let stopped = Command::new(&nginx_bin)
        .args([
            "-c",
            &conf.display().to_string(),
            "-p",
            &a.dir.display().to_string(),
            "-s",
            "stop",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !stopped {
        let _ = nginx.kill();
    }
    let _ = nginx.wait();
    h.shutdown().await;
    n.shutdown().await?;
    let _ = std::fs::remove_dir_all(&a.dir);
    result
}
