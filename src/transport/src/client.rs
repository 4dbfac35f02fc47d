//! The calling side: one TLS connection per peer, many requests multiplexed on it by request id.
//!
//! Back-pressure: at most `max_in_flight` requests per connection; further callers wait for a
//! slot (with their timeout running). Outgoing frames go through a bounded queue to one writer
//! task. A broken connection fails every request on it; the next call reconnects.
use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::codec::decode;
use crate::frame::{Frame, FrameKind};
use crate::Error;

/// Client limits and timeouts.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub max_frame_bytes: u32,
    pub max_in_flight: usize,
    pub connect_timeout: Duration,
    pub call_timeout: Duration,
    /// Chunk size for streamed bodies.
    pub chunk_bytes: usize,
    /// Frames queued for the writer before senders wait.
    pub write_queue_frames: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            max_frame_bytes: 16 * 1024 * 1024,
            max_in_flight: 64,
            connect_timeout: Duration::from_secs(3),
            call_timeout: Duration::from_secs(10),
            chunk_bytes: 256 * 1024,
            write_queue_frames: 128,
        }
    }
}

struct Pending {
    resp: oneshot::Sender<Result<Vec<u8>, Error>>,
    credits: Option<Arc<Semaphore>>,
}

/// Request ids are sequential and chosen here (a peer's reply only looks one up, it never
/// inserts): a multiplicative hash spreads them with one multiply instead of a SipHash per
/// insert and lookup.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type PendingMap = HashMap<u64, Pending, std::hash::BuildHasherDefault<IdHasher>>;

struct Conn {
    tx: mpsc::Sender<Frame>,
    pending: Mutex<PendingMap>,
    next_id: AtomicU64,
    inflight: Arc<Semaphore>,
    closed: AtomicBool,
    /// Silent after a call timed out while others still wait on it: no new calls (see
    /// [`Conn::retire_if_silent_since`]); dropped with the last call holding it.
    retired: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Frames that arrived from the server so far (a counter: no clock read per reply).
    rx_frames: AtomicU64,
}

impl Conn {
    /// After a call timed out: if nothing at all arrived on this connection since the call was
    /// sent (`rx_at_send`: [`Conn::rx_frames`] then), the peer (or the path to it) may be gone,
    /// not just slow. The next call then dials afresh instead of queueing behind TCP's
    /// backed-off retransmissions (after a healed partition that can take tens of seconds). A
    /// connection that is still carrying other replies is kept: one slow request must not fail
    /// its neighbours. Nor does a silent connection fail the calls still waiting on it: a peer
    /// busy with one long request (a VM move) can leave a short one (a raft heartbeat with a
    /// few hundred ms to live) unanswered on a loaded machine, and closing then failed the long
    /// one, whose outcome the caller could no longer learn. The connection is retired instead:
    /// new calls go to a new one, and this one closes when its last waiting call ends (each
    /// has its own timeout, so a dead peer still fails them).
    fn retire_if_silent_since(&self, rx_at_send: u64) {
        if self.rx_frames.load(Ordering::SeqCst) != rx_at_send {
            return;
        }
        if lock(&self.pending).is_empty() {
            self.close();
        } else {
            self.retired.store(true, Ordering::SeqCst);
        }
    }

    /// Whether new calls may use this connection.
    fn usable(&self) -> bool {
        !self.closed.load(Ordering::SeqCst) && !self.retired.load(Ordering::SeqCst)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.inflight.close();
        let drained: Vec<Pending> = lock(&self.pending).drain().map(|(_, p)| p).collect();
        for p in drained {
            if let Some(c) = &p.credits {
                c.close();
            }
            let _ = p.resp.send(Err(Error::Closed));
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent (single inserts and
    // removes), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A typed RPC client to one peer.
pub struct Client<Req, Resp> {
    inner: Arc<Inner>,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> Clone for Client<Req, Resp> {
    fn clone(&self) -> Self {
        Client {
            inner: self.inner.clone(),
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> std::fmt::Debug for Client<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &*lock(&self.inner.addr))
            .finish()
    }
}

struct Inner {
    cfg: ClientConfig,
    /// Where the peer is; changed by [`Client::retarget`].
    addr: Mutex<SocketAddr>,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    /// Request payload buffers the connections' writers hand back (see [`Client::encode`]).
    spare: Arc<crate::writer::Spare>,
    /// Held while dialing, so concurrent callers make one connection.
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// The same connection, for the fast path (`conn` writes both, under its lock).
    current: Mutex<Option<Arc<Conn>>>,
}

impl<Req: Serialize, Resp: DeserializeOwned> Client<Req, Resp> {
    /// A client for the peer at `addr` whose certificate must carry `server_name`. Does not
    /// connect until the first call.
    pub fn new(
        addr: SocketAddr,
        server_name: ServerName<'static>,
        tls: Arc<rustls::ClientConfig>,
        cfg: ClientConfig,
    ) -> Self {
        Client {
            inner: Arc::new(Inner {
                cfg,
                addr: Mutex::new(addr),
                server_name,
                tls,
                spare: Arc::default(),
                conn: tokio::sync::Mutex::new(None),
                current: Mutex::new(None),
            }),
            _types: PhantomData,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        *lock(&self.inner.addr)
    }

    /// The peer moved to `addr`: later connections go there, and the current one (to the old
    /// address) is closed, its calls failing with `Closed`.
    pub async fn retarget(&self, addr: SocketAddr) {
        *lock(&self.inner.addr) = addr;
        self.disconnect().await;
    }

    /// Connects now (calls do this on their own); useful to surface handshake errors.
    pub async fn connect(&self) -> Result<(), Error> {
        self.conn().await.map(|_| ())
    }

    /// Drops the current connection; the next call reconnects.
    pub async fn disconnect(&self) {
        let mut slot = self.inner.conn.lock().await;
        lock(&self.inner.current).take();
        if let Some(c) = slot.take() {
            c.close();
        }
    }

    /// One request, one response, with the configured timeout.
    pub async fn call(&self, req: &Req) -> Result<Resp, Error> {
        self.call_timeout(req, self.inner.cfg.call_timeout).await
    }

    /// One request, one response, with an explicit timeout covering connecting, waiting for an
    /// in-flight slot, sending and the reply.
    pub async fn call_timeout(&self, req: &Req, timeout: Duration) -> Result<Resp, Error> {
        let payload = self.encode(req)?;
        self.call_encoded(payload, timeout).await
    }

    /// Encodes a request for [`Client::call_encoded`] (like [`crate::encode`] with this
    /// client's frame limit) into a buffer an earlier request on this client left behind once
    /// it was sent: no allocation per request.
    pub fn encode<T: Serialize>(&self, msg: &T) -> Result<Vec<u8>, Error> {
        let mut payload = self.inner.spare.take();
        crate::codec::encode_into(msg, &mut payload, u64::from(self.inner.cfg.max_frame_bytes))?;
        Ok(payload)
    }

    /// Like [`Client::call_timeout`] with the request already encoded (`encode` of a value
    /// that encodes exactly as some `Req` does: a caller may serialize a borrowed view of a
    /// large request instead of building an owned copy first).
    pub async fn call_encoded(&self, payload: Vec<u8>, timeout: Duration) -> Result<Resp, Error> {
        self.call_encoded_noting(payload, timeout, &AtomicBool::new(false))
            .await
    }

    /// [`Client::call_encoded`] that sets `sent` just before the request is handed to the
    /// connection: a caller that gives the call up can tell a request that may reach the
    /// peer (set) from one that never left (still connecting or waiting for a slot).
    pub async fn call_encoded_noting(
        &self,
        payload: Vec<u8>,
        timeout: Duration,
        sent: &AtomicBool,
    ) -> Result<Resp, Error> {
        if payload.len() > self.inner.cfg.max_frame_bytes as usize {
            return Err(Error::Encode(format!(
                "request of {} bytes exceeds the limit of {}",
                payload.len(),
                self.inner.cfg.max_frame_bytes
            )));
        }
        // One timer for the whole call (connecting, a slot, sending, the reply): a timer per
        // step cost three timer-wheel entries per request.
        let mut sent_on: Option<(Arc<Conn>, u64)> = None;
        let reply = until(Instant::now() + timeout, timeout, async {
            let conn = self.conn().await?;
            let _permit = conn
                .inflight
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::Closed)?;
            let (id, rx) = register(&conn, None);
            let mut guard = PendingGuard {
                conn: &conn,
                id,
                armed: true,
            };
            sent_on = Some((conn.clone(), conn.rx_frames.load(Ordering::SeqCst)));
            sent.store(true, Ordering::Release);
            send(&conn, Frame::new(FrameKind::Request, id, payload)).await?;
            let r = rx.await;
            // Resolved either way means the entry is gone already: the reader removed it to
            // answer, or `close` drained it. No second lock and lookup per call.
            guard.armed = false;
            r.map_err(|_| Error::Closed)?
        })
        .await;
        if let (Err(Error::Timeout { .. }), Some((conn, rx_at_send))) = (&reply, &sent_on) {
            conn.retire_if_silent_since(*rx_at_send);
        }
        decode(&reply?, u64::from(self.inner.cfg.max_frame_bytes))
    }

    /// A request followed by a streamed body read from `body` in chunks, sent only as fast as
    /// the receiver grants credit. `stall_timeout` bounds each wait (for a slot, credit or the
    /// reply), not the whole transfer.
    pub async fn call_streaming<R: AsyncRead + Unpin>(
        &self,
        req: &Req,
        body: &mut R,
        stall_timeout: Duration,
    ) -> Result<Resp, Error> {
        let payload = self.encode(req)?;
        let conn = run_with_timeout(self.conn(), stall_timeout).await?;
        let _permit = run_with_timeout(
            async {
                conn.inflight
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::Closed)
            },
            stall_timeout,
        )
        .await?;
        let credits = Arc::new(Semaphore::new(0));
        let (id, rx) = register(&conn, Some(credits.clone()));
        let _guard = PendingGuard {
            conn: &conn,
            id,
            armed: true,
        };
        send(&conn, Frame::new(FrameKind::StreamRequest, id, payload)).await?;
        let max_chunk = self.inner.cfg.max_frame_bytes as usize - crate::FRAME_HEADER_BYTES;
        let mut buf = vec![0u8; self.inner.cfg.chunk_bytes.clamp(1, max_chunk)];
        loop {
            let n = read_full(body, &mut buf).await?;
            if n == 0 {
                break;
            }
            let permit = run_with_timeout(
                async { credits.acquire().await.map_err(|_| Error::Closed) },
                stall_timeout,
            )
            .await?;
            permit.forget();
            send(&conn, Frame::new(FrameKind::Chunk, id, buf[..n].to_vec())).await?;
        }
        send(&conn, Frame::new(FrameKind::End, id, Vec::new())).await?;
        let bytes = run_with_timeout(
            async { rx.await.map_err(|_| Error::Closed)? },
            stall_timeout,
        )
        .await?;
        decode(&bytes, u64::from(self.inner.cfg.max_frame_bytes))
    }

    async fn conn(&self) -> Result<Arc<Conn>, Error> {
        // Every call passes here: a live connection is found without the async lock (which
        // only serializes dialing).
        if let Some(c) = lock(&self.inner.current).as_ref() {
            if c.usable() {
                return Ok(c.clone());
            }
        }
        let mut slot = self.inner.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.usable() {
                return Ok(c.clone());
            }
        }
        *slot = None;
        *lock(&self.inner.current) = None;
        let c = connect(&self.inner).await?;
        *slot = Some(c.clone());
        *lock(&self.inner.current) = Some(c.clone());
        Ok(c)
    }
}

/// Removes a request's pending entry however the call ends (a late reply is then dropped),
/// unless disarmed once the entry is known to be gone.
struct PendingGuard<'a> {
    conn: &'a Conn,
    id: u64,
    armed: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.conn.pending).remove(&self.id);
        }
    }
}

async fn until<T>(
    deadline: Instant,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout_at(deadline, fut)
        .await
        .map_err(|_| Error::Timeout {
            timeout_ms: timeout.as_millis() as u64,
        })?
}

async fn run_with_timeout<T>(
    fut: impl std::future::Future<Output = Result<T, Error>>,
    timeout: Duration,
) -> Result<T, Error> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Error::Timeout {
            timeout_ms: timeout.as_millis() as u64,
        })?
}

/// Fills `buf` as far as the reader allows; returns bytes read (0 only at EOF).
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<usize, Error> {
    let mut n = 0;
    while n < buf.len() {
        let got = r.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

fn register(
    conn: &Conn,
    credits: Option<Arc<Semaphore>>,
) -> (u64, oneshot::Receiver<Result<Vec<u8>, Error>>) {
    let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    lock(&conn.pending).insert(id, Pending { resp: tx, credits });
    (id, rx)
}

async fn send(conn: &Conn, frame: Frame) -> Result<(), Error> {
    conn.tx.send(frame).await.map_err(|_| Error::Closed)
}

async fn connect(inner: &Inner) -> Result<Arc<Conn>, Error> {
    let addr = *lock(&inner.addr);
    let cerr = |reason: String| Error::Connect {
        addr: addr.to_string(),
        reason,
    };
    let tls = tokio::time::timeout(inner.cfg.connect_timeout, async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| cerr(e.to_string()))?;
        tcp.set_nodelay(true).map_err(|e| cerr(e.to_string()))?;
        TlsConnector::from(inner.tls.clone())
            .connect(inner.server_name.clone(), crate::read_buffered(tcp))
            .await
            .map_err(|e| cerr(format!("tls handshake: {e}")))
    })
    .await
    .map_err(|_| cerr("timed out".into()))??;
    let (mut rd, wr) = tokio::io::split(tls);
    let (tx, rx) = mpsc::channel(inner.cfg.write_queue_frames.max(1));
    let conn = Arc::new(Conn {
        tx,
        pending: Mutex::new(PendingMap::default()),
        next_id: AtomicU64::new(1),
        inflight: Arc::new(Semaphore::new(inner.cfg.max_in_flight.max(1))),
        closed: AtomicBool::new(false),
        retired: AtomicBool::new(false),
        tasks: Mutex::new(Vec::new()),
        rx_frames: AtomicU64::new(0),
    });
    let max = inner.cfg.max_frame_bytes;
    let weak = Arc::downgrade(&conn);
    let inflight = crate::writer::InFlight {
        sem: conn.inflight.clone(),
        max: inner.cfg.max_in_flight.max(1),
    };
    let writer = tokio::spawn(writer_loop(
        wr,
        rx,
        max,
        inflight,
        inner.spare.clone(),
        weak.clone(),
    ));
    let reader = tokio::spawn(async move {
        loop {
            let frame = match Frame::read_from(&mut rd, max).await {
                Ok(Some(f)) => f,
                Ok(None) | Err(_) => break,
            };
            let Some(conn) = weak.upgrade() else { break };
            conn.rx_frames.fetch_add(1, Ordering::SeqCst);
            if !on_client_frame(&conn, frame) {
                break;
            }
        }
        if let Some(conn) = weak.upgrade() {
            conn.close();
        }
    });
    lock(&conn.tasks).extend([writer, reader]);
    Ok(conn)
}

/// Handles one frame from the server; `false` means the server broke protocol.
fn on_client_frame(conn: &Conn, frame: Frame) -> bool {
    match frame.kind {
        FrameKind::Response | FrameKind::Error => {
            // An unknown id is a reply to a request we gave up on (timeout): drop it.
            if let Some(p) = lock(&conn.pending).remove(&frame.id) {
                let r = if frame.kind == FrameKind::Response {
                    Ok(frame.payload)
                } else {
                    Err(Error::Remote(
                        String::from_utf8_lossy(&frame.payload).into_owned(),
                    ))
                };
                let _ = p.resp.send(r);
            }
            true
        }
        FrameKind::Credit => {
            let Ok(n) = <[u8; 4]>::try_from(frame.payload.as_slice()).map(u32::from_le_bytes)
            else {
                return false;
            };
            if let Some(c) = lock(&conn.pending)
                .get(&frame.id)
                .and_then(|p| p.credits.clone())
            {
                // Bound what a confused server can grant.
                let room = Semaphore::MAX_PERMITS.saturating_sub(c.available_permits());
                c.add_permits((n as usize).min(room).min(1 << 20));
            }
            true
        }
        _ => false,
    }
}

async fn writer_loop<W: tokio::io::AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<Frame>,
    max_frame_bytes: u32,
    inflight: crate::writer::InFlight,
    spare: Arc<crate::writer::Spare>,
    conn: std::sync::Weak<Conn>,
) {
    if crate::writer::write_frames(wr, &mut rx, max_frame_bytes, inflight, Some(&spare))
        .await
        .is_err()
    {
        if let Some(c) = conn.upgrade() {
            c.close();
        }
    }
}
