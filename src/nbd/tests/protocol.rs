//! The server against a hand-written client: every option and command, malformed input and
//! garbage, pipelining, several clients, export removal.

use std::sync::Arc;
use std::time::Duration;

use nbd::proto::*;
use nbd::{NbdHandle, NbdServer, RamExport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start() -> (NbdHandle, Arc<RamExport>, Arc<RamExport>) {
    let server = NbdServer::bind("127.0.0.1:0").await.unwrap();
    let rw = Arc::new(RamExport::new(1 << 20, false));
    let ro = Arc::new(RamExport::new(64 << 10, true));
    server.add_export("rw", rw.clone()).unwrap();
    server.add_export("ro", ro.clone()).unwrap();
    (server.spawn().unwrap(), rw, ro)
}

/// Connect and read the greeting; send `client_flags`.
async fn hello(h: &NbdHandle, client_flags: u32) -> TcpStream {
    let mut s = TcpStream::connect(h.local_addr()).await.unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).await.unwrap();
    assert_eq!(g, server_greeting());
    s.write_u32(client_flags).await.unwrap();
    s
}

async fn send_option(s: &mut TcpStream, option: u32, data: &[u8]) {
    s.write_u64(IHAVEOPT).await.unwrap();
    s.write_u32(option).await.unwrap();
    s.write_u32(data.len() as u32).await.unwrap();
    s.write_all(data).await.unwrap();
}

/// (option, reply type, data)
async fn read_reply(s: &mut TcpStream) -> (u32, u32, Vec<u8>) {
    assert_eq!(s.read_u64().await.unwrap(), OPT_REPLY_MAGIC);
    let option = s.read_u32().await.unwrap();
    let kind = s.read_u32().await.unwrap();
    let len = s.read_u32().await.unwrap();
    let mut d = vec![0u8; len as usize];
    s.read_exact(&mut d).await.unwrap();
    (option, kind, d)
}

fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

/// Handshake with NBD_OPT_GO; returns (size, transmission flags).
async fn go(s: &mut TcpStream, name: &str) -> (u64, u16) {
    send_option(s, OPT_GO, &info_data(name, &[INFO_BLOCK_SIZE])).await;
    let mut size = None;
    loop {
        let (opt, kind, d) = read_reply(s).await;
        assert_eq!(opt, OPT_GO);
        match kind {
            REP_INFO if d[..2] == INFO_EXPORT.to_be_bytes() => {
                size = Some((
                    u64::from_be_bytes(d[2..10].try_into().unwrap()),
                    u16::from_be_bytes(d[10..12].try_into().unwrap()),
                ))
            }
            REP_INFO => {}
            REP_ACK => return size.expect("NBD_INFO_EXPORT before ACK"),
            other => panic!("unexpected reply {other:#x}"),
        }
    }
}

async fn connect_go(h: &NbdHandle, name: &str) -> TcpStream {
    let mut s = hello(h, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
    go(&mut s, name).await;
    s
}

async fn request(s: &mut TcpStream, kind: u16, flags: u16, handle: u64, offset: u64, len: u32) {
    s.write_u32(REQUEST_MAGIC).await.unwrap();
    s.write_u16(flags).await.unwrap();
    s.write_u16(kind).await.unwrap();
    s.write_u64(handle).await.unwrap();
    s.write_u64(offset).await.unwrap();
    s.write_u32(len).await.unwrap();
}

/// (error, handle)
async fn simple(s: &mut TcpStream) -> (u32, u64) {
    assert_eq!(s.read_u32().await.unwrap(), SIMPLE_REPLY_MAGIC);
    (s.read_u32().await.unwrap(), s.read_u64().await.unwrap())
}

/// The server closed the connection (EOF or reset, within a few seconds).
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1024];
    for _ in 0..100 {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // drain whatever it said before closing
            Err(_) => return false,
        }
    }
    false
}

#[tokio::test]
async fn handshake_options() {
    let (h, _rw, _ro) = start().await;
    let mut s = hello(&h, FLAG_C_FIXED_NEWSTYLE).await;
    send_option(&mut s, 9999, b"whatever").await;
    let (opt, kind, msg) = read_reply(&mut s).await;
    assert_eq!((opt, kind), (9999, REP_ERR_UNSUP));
    assert!(!msg.is_empty(), "errors carry a message");
    send_option(&mut s, 8, &[]).await; // NBD_OPT_STRUCTURED_REPLY: not offered
    assert_eq!(read_reply(&mut s).await.1, REP_ERR_UNSUP);

    send_option(&mut s, OPT_LIST, &[]).await;
    let mut names = Vec::new();
    loop {
        let (_, kind, d) = read_reply(&mut s).await;
        if kind == REP_ACK {
            break;
        }
        assert_eq!(kind, REP_SERVER);
        let n = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
        names.push(String::from_utf8(d[4..4 + n].to_vec()).unwrap());
    }
    assert_eq!(names, ["ro", "rw"]);
    send_option(&mut s, OPT_LIST, b"x").await;
    assert_eq!(read_reply(&mut s).await.1, REP_ERR_INVALID);

    send_option(&mut s, OPT_GO, &[0, 0, 0, 9, b'r']).await;
    assert_eq!(
        read_reply(&mut s).await.1,
        REP_ERR_INVALID,
        "truncated GO data"
    );
    send_option(&mut s, OPT_GO, &info_data("nope", &[])).await;
    assert_eq!(read_reply(&mut s).await.1, REP_ERR_UNKNOWN);

    send_option(
        &mut s,
        OPT_INFO,
        &info_data("ro", &[INFO_NAME, INFO_BLOCK_SIZE]),
    )
    .await;
    let mut kinds = Vec::new();
    loop {
        let (_, kind, d) = read_reply(&mut s).await;
        if kind == REP_ACK {
            break;
        }
        assert_eq!(kind, REP_INFO);
        let t = u16::from_be_bytes([d[0], d[1]]);
        if t == INFO_EXPORT {
            assert_eq!(u64::from_be_bytes(d[2..10].try_into().unwrap()), 64 << 10);
            let flags = u16::from_be_bytes(d[10..12].try_into().unwrap());
            assert!(flags & TFLAG_READ_ONLY != 0);
        }
        if t == INFO_BLOCK_SIZE {
            assert_eq!(u32::from_be_bytes(d[2..6].try_into().unwrap()), 1);
            assert_eq!(u32::from_be_bytes(d[10..14].try_into().unwrap()), 32 << 20);
        }
        kinds.push(t);
    }
    assert_eq!(kinds, [INFO_EXPORT, INFO_NAME, INFO_BLOCK_SIZE]);
    // INFO does not end the handshake; GO does.
    let (size, flags) = go(&mut s, "rw").await;
    assert_eq!(size, 1 << 20);
    assert!(flags & TFLAG_SEND_FLUSH != 0 && flags & TFLAG_SEND_TRIM != 0);
    request(&mut s, CMD_FLUSH, 0, 1, 0, 0).await;
    assert_eq!(simple(&mut s).await, (0, 1));

    // NBD_OPT_ABORT is acknowledged and the connection closed.
    let mut s = hello(&h, FLAG_C_FIXED_NEWSTYLE).await;
    send_option(&mut s, OPT_ABORT, &[]).await;
    assert_eq!(read_reply(&mut s).await.1, REP_ACK);
    assert!(closed(&mut s).await);
    h.stop().await;
}

#[tokio::test]
async fn export_name_option() {
    let (h, rw, _ro) = start().await;
    rw.set_contents(0, b"hello");
    // Without NO_ZEROES the reply is padded with 124 zero bytes.
    let mut s = hello(&h, FLAG_C_FIXED_NEWSTYLE).await;
    send_option(&mut s, OPT_EXPORT_NAME, b"rw").await;
    assert_eq!(s.read_u64().await.unwrap(), 1 << 20);
    let flags = s.read_u16().await.unwrap();
    assert!(flags & TFLAG_HAS_FLAGS != 0 && flags & TFLAG_READ_ONLY == 0);
    let mut pad = [1u8; 124];
    s.read_exact(&mut pad).await.unwrap();
    assert_eq!(pad, [0u8; 124]);
    request(&mut s, CMD_READ, 0, 5, 0, 5).await;
    assert_eq!(simple(&mut s).await, (0, 5));
    let mut d = [0u8; 5];
    s.read_exact(&mut d).await.unwrap();
    assert_eq!(&d, b"hello");

    let mut s = hello(&h, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
    send_option(&mut s, OPT_EXPORT_NAME, b"missing").await;
    assert!(
        closed(&mut s).await,
        "unknown EXPORT_NAME closes the connection"
    );
    h.stop().await;
}

#[tokio::test]
async fn malformed_handshakes_close() {
    let (h, _rw, _ro) = start().await;
    let mut s = hello(&h, 0x8000_0000).await;
    assert!(closed(&mut s).await, "unknown client flags");
    let mut s = hello(&h, FLAG_C_FIXED_NEWSTYLE).await;
    s.write_all(&[0x55; 16]).await.unwrap();
    assert!(closed(&mut s).await, "bad option magic");
    let mut s = hello(&h, FLAG_C_FIXED_NEWSTYLE).await;
    s.write_u64(IHAVEOPT).await.unwrap();
    s.write_u32(OPT_GO).await.unwrap();
    s.write_u32(u32::MAX).await.unwrap();
    assert!(closed(&mut s).await, "oversized option");
    let mut s = hello(&h, FLAG_C_FIXED_NEWSTYLE).await;
    for _ in 0..70 {
        send_option(&mut s, 4242, &[]).await;
    }
    assert!(closed(&mut s).await, "endless option haggling");
    // The server still serves a well-behaved client.
    let mut s = connect_go(&h, "rw").await;
    request(&mut s, CMD_FLUSH, 0, 1, 0, 0).await;
    assert_eq!(simple(&mut s).await, (0, 1));
    h.stop().await;
}

#[tokio::test]
async fn commands_and_errors() {
    let (h, rw, ro) = start().await;
    let mut s = connect_go(&h, "rw").await;
    // WRITE with FUA, then READ it back.
    request(&mut s, CMD_WRITE, CMD_FLAG_FUA, 1, 4095, 3).await;
    s.write_all(b"abc").await.unwrap();
    assert_eq!(simple(&mut s).await, (0, 1));
    assert_eq!(rw.flushes(), 1, "FUA write is flushed before the reply");
    assert_eq!(&rw.contents()[4095..4098], b"abc");
    // WRITE_ZEROES with NO_HOLE, and TRIM.
    request(&mut s, CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 2, 4096, 2).await;
    assert_eq!(simple(&mut s).await, (0, 2));
    assert_eq!(&rw.contents()[4095..4098], b"a\0\0");
    rw.set_contents(8192, &[7; 10]);
    request(&mut s, CMD_TRIM, 0, 3, 8192, 10).await;
    assert_eq!(simple(&mut s).await, (0, 3));
    assert_eq!(&rw.contents()[8192..8202], &[0; 10]);
    // Out of range, overflowing, oversized, unknown command, unknown flag.
    request(&mut s, CMD_READ, 0, 4, (1 << 20) - 1, 2).await;
    assert_eq!(simple(&mut s).await, (EINVAL, 4));
    request(&mut s, CMD_READ, 0, 5, u64::MAX, 2).await;
    assert_eq!(simple(&mut s).await, (EINVAL, 5));
    request(&mut s, CMD_WRITE, 0, 6, 1 << 20, 4).await;
    s.write_all(b"zzzz").await.unwrap();
    assert_eq!(
        simple(&mut s).await,
        (ENOSPC, 6),
        "payload of a refused write is consumed"
    );
    request(&mut s, 77, 0, 7, 0, 0).await;
    assert_eq!(simple(&mut s).await, (EINVAL, 7));
    request(&mut s, CMD_READ, 1 << 9, 8, 0, 1).await;
    assert_eq!(simple(&mut s).await, (EINVAL, 8));
    request(&mut s, CMD_READ, 0, 9, 0, 64 << 20).await;
    assert_eq!(simple(&mut s).await, (EINVAL, 9), "beyond the export");
    request(&mut s, CMD_DISC, 0, 10, 0, 0).await;
    assert!(closed(&mut s).await);

    // A read-only export refuses every kind of write with EPERM.
    let mut s = connect_go(&h, "ro").await;
    request(&mut s, CMD_WRITE, 0, 1, 0, 2).await;
    s.write_all(b"no").await.unwrap();
    assert_eq!(simple(&mut s).await, (EPERM, 1));
    request(&mut s, CMD_TRIM, 0, 2, 0, 2).await;
    assert_eq!(simple(&mut s).await, (EPERM, 2));
    request(&mut s, CMD_WRITE_ZEROES, 0, 3, 0, 2).await;
    assert_eq!(simple(&mut s).await, (EPERM, 3));
    assert!(ro.contents().iter().all(|&b| b == 0));

    // Garbage instead of a request, and an oversized write, close the connection.
    let mut s = connect_go(&h, "rw").await;
    s.write_all(&[0xab; 28]).await.unwrap();
    assert!(closed(&mut s).await);
    let mut s = connect_go(&h, "rw").await;
    request(&mut s, CMD_WRITE, 0, 1, 0, 64 << 20).await;
    assert!(closed(&mut s).await);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_and_concurrent_clients() {
    let (h, rw, _ro) = start().await;
    let mut clients = Vec::new();
    for c in 0..4u64 {
        let addr_h = connect_go(&h, "rw").await;
        clients.push(tokio::spawn(async move {
            let mut s = addr_h;
            // 100 writes back to back, then read all replies: handles must all come back.
            for i in 0..100u64 {
                request(&mut s, CMD_WRITE, 0, i, (c * 100 + i) * 512, 512).await;
                s.write_all(&[(c * 100 + i) as u8; 512]).await.unwrap();
            }
            let mut seen = [false; 100];
            for _ in 0..100 {
                let (err, handle) = simple(&mut s).await;
                assert_eq!(err, 0);
                assert!(
                    !std::mem::replace(&mut seen[handle as usize], true),
                    "duplicate reply"
                );
            }
            for i in 0..100u64 {
                request(&mut s, CMD_READ, 0, 1000 + i, (c * 100 + i) * 512, 512).await;
            }
            for _ in 0..100 {
                let (err, handle) = simple(&mut s).await;
                assert_eq!(err, 0);
                let mut d = vec![0u8; 512];
                s.read_exact(&mut d).await.unwrap();
                let want = (c * 100 + handle - 1000) as u8;
                assert!(
                    d.iter().all(|&b| b == want),
                    "read reply carries its own data"
                );
            }
            request(&mut s, CMD_DISC, 0, 0, 0, 0).await;
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let data = rw.contents();
    for k in 0..400usize {
        assert!(data[k * 512..(k + 1) * 512].iter().all(|&b| b == k as u8));
    }
    h.stop().await;
}

#[tokio::test]
async fn removal_and_stop_close_connections() {
    let (h, _rw, _ro) = start().await;
    let mut s = connect_go(&h, "ro").await;
    assert!(h.exports().remove("ro"));
    assert!(!h.exports().remove("ro"));
    assert!(
        closed(&mut s).await,
        "removing an export closes its connections"
    );
    let mut s = hello(&h, FLAG_C_FIXED_NEWSTYLE).await;
    send_option(&mut s, OPT_GO, &info_data("ro", &[])).await;
    assert_eq!(read_reply(&mut s).await.1, REP_ERR_UNKNOWN);
    assert!(
        h.exports()
            .add("rw", Arc::new(RamExport::new(4096, false)))
            .is_err(),
        "duplicate"
    );
    assert!(h
        .exports()
        .add("bad\nname", Arc::new(RamExport::new(4096, false)))
        .is_err());

    let mut s = connect_go(&h, "rw").await;
    let addr = h.local_addr();
    h.stop().await;
    assert!(closed(&mut s).await, "stop closes open connections");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "nothing listens after stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_never_kills_the_server() {
    let (h, _rw, _ro) = start().await;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..300 {
        let len = (next() % 300) as usize;
        let mut junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Some rounds start well-formed so the junk reaches deeper states.
        let mut s = match round % 3 {
            0 => TcpStream::connect(h.local_addr()).await.unwrap(),
            1 => hello(&h, FLAG_C_FIXED_NEWSTYLE).await,
            _ => {
                let mut s = connect_go(&h, "rw").await;
                if let Some(b) = junk.get_mut(..4) {
                    b.copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
                }
                s.flush().await.unwrap();
                s
            }
        };
        let _ = s.write_all(&junk).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
    }
    let mut s = connect_go(&h, "rw").await;
    request(&mut s, CMD_FLUSH, 0, 42, 0, 0).await;
    assert_eq!(
        simple(&mut s).await,
        (0, 42),
        "still serving after 300 garbage connections"
    );
    h.stop().await;
}

/// Writes and reads take a while, so requests pile up against the in-flight bounds.
struct Slow(RamExport);

impl nbd::NbdExport for Slow {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read<'a>(&'a self, o: u64, b: &'a mut [u8]) -> nbd::BoxFuture<'a, std::io::Result<()>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            self.0.read(o, b).await
        })
    }
    fn write<'a>(&'a self, o: u64, d: &'a [u8]) -> nbd::BoxFuture<'a, std::io::Result<()>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.0.write(o, d).await
        })
    }
    fn flush(&self) -> nbd::BoxFuture<'_, std::io::Result<()>> {
        self.0.flush()
    }
    fn trim(&self, o: u64, l: u64) -> nbd::BoxFuture<'_, std::io::Result<()>> {
        self.0.trim(o, l)
    }
    fn write_zeroes(&self, o: u64, l: u64, t: bool) -> nbd::BoxFuture<'_, std::io::Result<()>> {
        self.0.write_zeroes(o, l, t)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_backpressure_and_abandoned_requests() {
    let server = NbdServer::bind("127.0.0.1:0").await.unwrap();
    let slow = Arc::new(Slow(RamExport::new(1 << 20, false)));
    server.add_export("slow", slow.clone()).unwrap();
    let h = server.spawn().unwrap();
    // 300 pipelined reads (more than may be in flight at once): every one is answered.
    let mut s = connect_go(&h, "slow").await;
    let (mut rd, mut wr) = s.split();
    let send = async {
        for i in 0..300u64 {
            request_on(&mut wr, CMD_READ, i, i * 512, 512).await;
        }
    };
    let recv = async {
        let mut seen = [false; 300];
        for _ in 0..300 {
            assert_eq!(rd.read_u32().await.unwrap(), SIMPLE_REPLY_MAGIC);
            assert_eq!(rd.read_u32().await.unwrap(), 0);
            let handle = rd.read_u64().await.unwrap() as usize;
            let mut d = [0u8; 512];
            rd.read_exact(&mut d).await.unwrap();
            assert!(!std::mem::replace(&mut seen[handle], true));
        }
    };
    tokio::join!(send, recv);
    drop(s);
    // A write whose client vanishes right after sending it still completes.
    let mut s = connect_go(&h, "slow").await;
    request(&mut s, CMD_WRITE, 0, 1, 8192, 4).await;
    s.write_all(b"kept").await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(s);
    // The write takes 50 ms once the server has read it; wait for it rather than a fixed
    // pause (a loaded machine may take longer), bounded.
    let t = std::time::Instant::now();
    while &slow.0.contents()[8192..8196] != b"kept" {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the abandoned write never completed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.stop().await;
}

async fn request_on<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    kind: u16,
    handle: u64,
    offset: u64,
    len: u32,
) {
    let mut b = Vec::with_capacity(28);
    b.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&handle.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    w.write_all(&b).await.unwrap();
}

/// Reads served from the export's own buffers (`read_owned`), split into uneven parts; the
/// `short` export returns one byte too few for reads at offset 0.
struct Parts {
    ram: RamExport,
    short: bool,
}

impl nbd::NbdExport for Parts {
    fn size_bytes(&self) -> u64 {
        self.ram.size_bytes()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read<'a>(&'a self, _: u64, _: &'a mut [u8]) -> nbd::BoxFuture<'a, std::io::Result<()>> {
        // Every read must go through `read_owned`.
        Box::pin(async { Err(std::io::Error::from_raw_os_error(ENOTSUP as i32)) })
    }
    fn read_owned(&self, o: u64, len: u32) -> nbd::BoxFuture<'_, std::io::Result<Vec<nbd::Bytes>>> {
        Box::pin(async move {
            let mut all = vec![0u8; len as usize];
            self.ram.read(o, &mut all).await?;
            if self.short && o == 0 {
                all.pop();
            }
            let all = nbd::Bytes::from(all);
            // Parts of 1, 4095, 7 bytes, ... and the rest.
            let mut parts = Vec::new();
            let mut at = 0;
            for n in [1usize, 4095, 7].into_iter().cycle() {
                if at >= all.len() {
                    break;
                }
                let end = (at + n).min(all.len());
                parts.push(all.slice(at..end));
                at = end;
            }
            Ok(parts)
        })
    }
    fn write<'a>(&'a self, o: u64, d: &'a [u8]) -> nbd::BoxFuture<'a, std::io::Result<()>> {
        self.ram.write(o, d)
    }
    fn flush(&self) -> nbd::BoxFuture<'_, std::io::Result<()>> {
        self.ram.flush()
    }
    fn trim(&self, o: u64, l: u64) -> nbd::BoxFuture<'_, std::io::Result<()>> {
        self.ram.trim(o, l)
    }
    fn write_zeroes(&self, o: u64, l: u64, t: bool) -> nbd::BoxFuture<'_, std::io::Result<()>> {
        self.ram.write_zeroes(o, l, t)
    }
}

#[tokio::test]
async fn reads_are_sent_from_the_exports_own_buffers() {
    let server = NbdServer::bind("127.0.0.1:0").await.unwrap();
    let good = Arc::new(Parts {
        ram: RamExport::new(1 << 20, false),
        short: false,
    });
    let short = Arc::new(Parts {
        ram: RamExport::new(1 << 20, false),
        short: true,
    });
    let pattern: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    good.ram.set_contents(0, &pattern);
    short.ram.set_contents(0, &pattern);
    server.add_export("good", good).unwrap();
    server.add_export("short", short).unwrap();
    let h = server.spawn().unwrap();
    let mut s = connect_go(&h, "good").await;
    for (handle, off, len) in [(1u64, 0u64, 1u32), (2, 5, 70_000), (3, 4096, 1 << 19)] {
        request(&mut s, CMD_READ, 0, handle, off, len).await;
        assert_eq!(simple(&mut s).await, (0, handle));
        let mut d = vec![0u8; len as usize];
        s.read_exact(&mut d).await.unwrap();
        let o = off as usize;
        assert!(d == pattern[o..o + d.len()], "read {off}+{len}");
    }
    // An export answering with the wrong length fails that read (no data follows the reply)
    // and the connection goes on.
    let mut s = connect_go(&h, "short").await;
    request(&mut s, CMD_READ, 0, 1, 0, 4096).await;
    assert_eq!(simple(&mut s).await, (EIO, 1));
    request(&mut s, CMD_READ, 0, 2, 8192, 16).await;
    assert_eq!(simple(&mut s).await, (0, 2));
    let mut d = [0u8; 16];
    s.read_exact(&mut d).await.unwrap();
    assert_eq!(&d[..], &pattern[8192..8208]);
    h.stop().await;
}
