//! The server against real NBD clients: nbdinfo, nbdcopy (libnbd) and fio's nbd engine.
//! Each test prints `skipped: <tool> not installed` if its client is missing.

use std::process::Command;
use std::sync::Arc;

use nbd::{BoxFuture, NbdExport, NbdHandle, NbdServer, RamExport};

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output();
    let ok = found.map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        println!("skipped: {tool} not installed");
    }
    ok
}

async fn start(exports: &[(&str, Arc<RamExport>)]) -> NbdHandle {
    let server = NbdServer::bind("127.0.0.1:0").await.unwrap();
    for (name, e) in exports {
        server.add_export(name, e.clone()).unwrap();
    }
    server.spawn().unwrap()
}

/// Run a client off the async threads so the server keeps serving.
async fn run(cmd: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || Command::new(&cmd[0]).args(&cmd[1..]).output().unwrap())
        .await
        .unwrap()
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn random_bytes(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_shows_size_and_lists_exports() {
    if !have("nbdinfo") {
        return;
    }
    let disk = Arc::new(RamExport::new(48 << 20, false));
    let snap = Arc::new(RamExport::new(1 << 20, true));
    let h = start(&[("disk", disk), ("snap", snap)]).await;
    let port = h.local_addr().port();
    let out = run(args(&[
        "nbdinfo",
        "--size",
        &format!("nbd://127.0.0.1:{port}/disk"),
    ]))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (48u64 << 20).to_string()
    );

    let out = run(args(&[
        "nbdinfo",
        "--json",
        &format!("nbd://127.0.0.1:{port}/snap"),
    ]))
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\"is_read_only\": true"), "{text}");
    assert!(text.contains("\"block_size_maximum\": 33554432"), "{text}");

    let out = run(args(&[
        "nbdinfo",
        "--list",
        &format!("nbd://127.0.0.1:{port}"),
    ]))
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("export=\"disk\"") && text.contains("export=\"snap\""),
        "{text}"
    );

    let out = run(args(&["nbdinfo", &format!("nbd://127.0.0.1:{port}/nope")])).await;
    assert!(!out.status.success(), "an unknown export is refused");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_round_trips_a_file() {
    if !have("nbdcopy") {
        return;
    }
    let size = 24 << 20;
    let disk = Arc::new(RamExport::new(size, false));
    let h = start(&[("disk", disk.clone())]).await;
    let uri = format!("nbd://127.0.0.1:{}/disk", h.local_addr().port());
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nbd-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join(format!("in-{}", std::process::id()));
    let output = dir.join(format!("out-{}", std::process::id()));
    let mut data = random_bytes(size, 42);
    // A zero run exercises nbdcopy's zero detection (WRITE_ZEROES / TRIM).
    data[(4 << 20)..(6 << 20)].fill(0);
    std::fs::write(&input, &data).unwrap();
    disk.set_contents(5 << 20, &[0xee; 4096]); // must be zeroed by the copy

    let out = run(args(&["nbdcopy", "--flush", input.to_str().unwrap(), &uri])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        disk.contents() == data,
        "export holds the file after copying in"
    );
    let out = run(args(&["nbdcopy", &uri, output.to_str().unwrap()])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&output).unwrap() == data,
        "file copied out is byte-identical"
    );
    assert!(disk.flushes() > 0, "nbdcopy --flush flushed the export");
    std::fs::remove_file(input).unwrap();
    std::fs::remove_file(output).unwrap();
    h.stop().await;
}

/// Flips a bit in one block it returns, so fio's verification must fail: proves the check bites.
struct Corrupting(RamExport);

impl NbdExport for Corrupting {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> BoxFuture<'a, std::io::Result<()>> {
        Box::pin(async move {
            self.0.read(offset, buf).await?;
            if offset.is_multiple_of(64 << 10) && !buf.is_empty() {
                buf[0] ^= 1;
            }
            Ok(())
        })
    }
    fn write<'a>(&'a self, offset: u64, data: &'a [u8]) -> BoxFuture<'a, std::io::Result<()>> {
        self.0.write(offset, data)
    }
    fn flush(&self) -> BoxFuture<'_, std::io::Result<()>> {
        self.0.flush()
    }
    fn trim(&self, offset: u64, len: u64) -> BoxFuture<'_, std::io::Result<()>> {
        self.0.trim(offset, len)
    }
    fn write_zeroes(&self, o: u64, l: u64, t: bool) -> BoxFuture<'_, std::io::Result<()>> {
        self.0.write_zeroes(o, l, t)
    }
}

fn fio_args(uri: &str) -> Vec<String> {
    args(&[
        "fio",
        "--name=nbd-verify",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randrw",
        "--bs=4k",
        "--size=32m",
        "--iodepth=16",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--output-format=json",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fio_randrw_verifies() {
    if !have("fio") {
        return;
    }
    let engines = Command::new("fio").arg("--enghelp").output().unwrap();
    if !String::from_utf8_lossy(&engines.stdout).contains("nbd") {
        println!("skipped: fio has no nbd engine");
        return;
    }
    let disk = Arc::new(RamExport::new(64 << 20, false));
    let h = start(&[("disk", disk.clone())]).await;
    let uri = format!("nbd://127.0.0.1:{}/disk", h.local_addr().port());
    let out = run(fio_args(&uri)).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\"error\" : 0"), "{text}");
    assert!(
        disk.contents().iter().any(|&b| b != 0),
        "fio really wrote through the server"
    );
    h.stop().await;

    // Negative control: the same run against an export that corrupts reads must fail.
    let bad = Arc::new(Corrupting(RamExport::new(64 << 20, false)));
    let server = NbdServer::bind("127.0.0.1:0").await.unwrap();
    server.add_export("bad", bad).unwrap();
    let h = server.spawn().unwrap();
    let uri = format!("nbd://127.0.0.1:{}/bad", h.local_addr().port());
    let out = run(fio_args(&uri)).await;
    assert!(!out.status.success(), "fio must detect corrupted reads");
    h.stop().await;
}

/// The whole real path: nbdcopy -> our server -> DeviceExport -> io_uring (O_DIRECT) -> file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_through_an_io_uring_file() {
    if !have("nbdcopy") {
        return;
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nbd-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let backing = dir.join(format!("backing-{}", std::process::id()));
    let input = dir.join(format!("uin-{}", std::process::id()));
    let output = dir.join(format!("uout-{}", std::process::id()));
    let size = 12 << 20;
    let _ = std::fs::remove_file(&backing);
    blockdev::create_sparse_file(&backing, size as u64).unwrap();
    let dev = blockdev::open_device(&backing).unwrap();
    let server = NbdServer::bind("127.0.0.1:0").await.unwrap();
    server
        .add_export("file", Arc::new(nbd::DeviceExport::new(dev, false)))
        .unwrap();
    let h = server.spawn().unwrap();
    let uri = format!("nbd://127.0.0.1:{}/file", h.local_addr().port());
    let data = random_bytes(size, 7);
    std::fs::write(&input, &data).unwrap();
    let out = run(args(&[
        "nbdcopy",
        "--flush",
        "--request-size=65536",
        input.to_str().unwrap(),
        &uri,
    ]))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(args(&["nbdcopy", &uri, output.to_str().unwrap()])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&output).unwrap() == data,
        "round trip through io_uring"
    );
    assert!(
        std::fs::read(&backing).unwrap() == data,
        "the backing file holds the data"
    );
    h.stop().await;
    for p in [backing, input, output] {
        std::fs::remove_file(p).unwrap();
    }
}
