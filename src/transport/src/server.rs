//! The serving side: accepts mutual-TLS connections from cluster members, reads framed requests
//! and runs them on a [`Handler`], at most `max_in_flight` at a time per connection (beyond
//! that we stop reading, so TCP pushes back on the peer). A connection's requests run
//! concurrently inside its own task (no task per request), and that task writes their replies
//! too, many per TLS write, when nothing else is ready; when the connection ends, the requests
//! already started still run to their end.
//!
//! A peer whose certificate does not chain to the cluster CA fails the handshake and never
//! reaches a handler. A peer that breaks protocol is disconnected.
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::codec::{decode, encode};
use crate::frame::{Frame, FrameKind};
use crate::pki::node_id_from_cert;
use crate::stream::StreamRx;
use crate::{Error, NodeId};

/// Server limits and timeouts.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub max_frame_bytes: u32,
    pub max_in_flight_per_conn: usize,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    /// Chunks a streamed body may have buffered before the sender must wait for credit.
    pub stream_window_chunks: u32,
    /// Frames handlers may queue on their own (stream credit) before they wait.
    pub write_queue_frames: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_frame_bytes: 16 * 1024 * 1024,
            max_in_flight_per_conn: 64,
            max_connections: 256,
            handshake_timeout: Duration::from_secs(5),
            stream_window_chunks: 8,
            write_queue_frames: 128,
        }
    }
}

/// A handler's failure, sent to the caller as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError(pub String);

impl<E: std::fmt::Display> From<E> for RemoteError {
    fn from(e: E) -> Self {
        RemoteError(e.to_string())
    }
}

/// What a server runs for each request. `peer` is the verified node id of the caller (always
/// `Some` on a mutual-TLS server; `None` only on a server whose TLS config asks for no client
/// certificate, such as the join endpoint); `body` is present for streamed requests.
pub trait Handler: Send + Sync + 'static {
    type Request: DeserializeOwned + Send + 'static;
    type Response: Serialize + Send + 'static;
    fn handle(
        &self,
        peer: Option<NodeId>,
        req: Self::Request,
        body: Option<StreamRx>,
    ) -> impl Future<Output = Result<Self::Response, RemoteError>> + Send;
}

/// Binds and runs servers.
#[derive(Debug)]
pub struct Server;

/// A running server; dropping it (or `shutdown`) stops accepting and cuts every connection.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Server {
    /// Binds `addr` and serves `handler` to peers accepted by `tls`.
    pub async fn bind<H: Handler>(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        cfg: ServerConfig,
        handler: Arc<H>,
    ) -> Result<ServerHandle, Error> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(tls),
            cfg,
            handler,
            stop_rx,
        ));
        Ok(ServerHandle { local_addr, stop })
    }
}

async fn accept_loop<H: Handler>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    cfg: ServerConfig,
    handler: Arc<H>,
    mut stop: watch::Receiver<bool>,
) {
    let conns = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((tcp, _peer_addr)) = accepted else {
            // Out of descriptors and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            drop(tcp); // at the connection limit
            continue;
        };
        let (acceptor, cfg, handler, mut stop) =
            (acceptor.clone(), cfg.clone(), handler.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_conn(tcp, acceptor, cfg, handler, &mut stop).await {
                tracing::debug!("transport: connection ended: {e}");
            }
        });
    }
}

type Streams = Arc<Mutex<HashMap<u64, mpsc::Sender<Option<Vec<u8>>>>>>;

async fn serve_conn<H: Handler>(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    cfg: ServerConfig,
    handler: Arc<H>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Error> {
    tcp.set_nodelay(true)?;
    let handshake = tokio::time::timeout(
        cfg.handshake_timeout,
        acceptor.accept(crate::read_buffered(tcp)),
    );
    let tls = tokio::select! {
        t = handshake => t
            .map_err(|_| Error::Tls("handshake timed out".into()))?
            .map_err(|e| Error::Tls(e.to_string()))?,
        _ = stop.changed() => return Ok(()),
    };
    // rustls has verified any certificate against the CA already; no certificate at all is
    // only possible when the TLS config does not ask for one (the join endpoint).
    let peer = match tls.get_ref().1.peer_certificates() {
        Some(certs) => Some(node_id_from_cert(
            certs
                .first()
                .ok_or_else(|| Error::Cert("empty chain".into()))?,
        )?),
        None => None,
    };
    let (rd, wr) = tokio::io::split(tls);
    // Frames a handler sends on its own (credit for a streamed body); replies come back from
    // the request futures themselves.
    let (tx, mut rx) = mpsc::channel::<Frame>(cfg.write_queue_frames.max(1));
    let max = cfg.max_frame_bytes;
    let max_in_flight = cfg.max_in_flight_per_conn.max(1);
    let mut out = Out::new(wr);
    let streams: Streams = Arc::new(Mutex::new(HashMap::new()));
    // Requests run inside this task, not one spawned task each: a burst of requests then
    // costs no task spawns, and their completions (io_uring, replies) wake this one task
    // instead of one task per request, each of which could wake another worker thread.
    // Replies are written by this task too, not handed to a writer task: everything that is
    // ready (finished requests, frames read) is taken first, and only when nothing more is
    // the replies gathered meanwhile go out in one TLS write — one wake-up per burst, no
    // channel hop and no second task to wake.
    let mut running = FuturesUnordered::new();
    let mut next = std::pin::pin!(read_next(rd, max));
    let result = loop {
        // At the in-flight bound, or with replies piling up unwritten (the peer does not read),
        // stop reading (TCP pushes back on the peer) and only run and write.
        let full = running.len() >= max_in_flight || out.backlog() >= OUT_BACKLOG_BYTES;
        let writing = out.pending();
        let event = tokio::select! {
            biased;
            Some(reply) = running.next(), if !running.is_empty() => Event::Reply(reply),
            Some(frame) = rx.recv() => Event::Sent(frame),
            r = next.as_mut(), if !full => Event::Read(r),
            w = std::future::poll_fn(|cx| out.poll_write_out(cx)), if writing => Event::Wrote(w),
            _ = stop.changed() => break Ok(()),
        };
        let frame = match event {
            Event::Reply(reply) => {
                // Frames a handler sent before it finished go out before its reply.
                let mut pushed = Ok(());
                while let (Ok(()), Ok(f)) = (&pushed, rx.try_recv()) {
                    pushed = out.push(&f, max);
                }
                match pushed.and_then(|()| out.push(&reply, max)) {
                    Ok(()) => continue,
                    Err(e) => break Err(e),
                }
            }
            Event::Sent(f) => match out.push(&f, max) {
                Ok(()) => continue,
                Err(e) => break Err(e),
            },
            Event::Wrote(w) => match w {
                Ok(()) => continue,
                Err(e) => break Err(e),
            },
            Event::Read((rd, frame)) => {
                next.set(read_next(rd, max));
                match frame {
                    Ok(Some(f)) => f,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
        };
        match frame.kind {
            FrameKind::Request | FrameKind::StreamRequest => {
                let body = if frame.kind == FrameKind::StreamRequest {
                    let (body, credit) =
                        open_stream(&streams, &tx, frame.id, cfg.stream_window_chunks);
                    if let Err(e) = out.push(&credit, max) {
                        break Err(e);
                    }
                    Some(body)
                } else {
                    None
                };
                let (handler, streams) = (handler.clone(), streams.clone());
                running.push(async move {
                    let reply =
                        run_handler(&*handler, peer, frame.id, &frame.payload, body, max).await;
                    if frame.kind == FrameKind::StreamRequest {
                        lock(&streams).remove(&frame.id);
                    }
                    reply
                });
            }
            FrameKind::Chunk | FrameKind::End => {
                let chunk = (frame.kind == FrameKind::Chunk).then_some(frame.payload);
                let is_end = chunk.is_none();
                let sender = lock(&streams).get(&frame.id).cloned();
                if let Some(sender) = sender {
                    // The channel holds exactly the granted window (+1 for End): a full
                    // channel means the peer ignored flow control.
                    match sender.try_send(chunk) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            break Err(Error::Stream("peer exceeded its credit".into()));
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                    if is_end {
                        lock(&streams).remove(&frame.id);
                    }
                }
                // Unknown id: the handler already finished and dropped its stream.
            }
            other => {
                break Err(Error::BadFrame(format!("unexpected {other:?} from client")));
            }
        }
    };
    // The connection is done, but requests it started run to their end, as they would in
    // tasks of their own: a write half-done on a store must not be cut off by a peer hanging
    // up. Their replies go nowhere (the connection closes when this returns).
    drop(out);
    drop(tx);
    if !running.is_empty() {
        tokio::spawn(async move { while running.next().await.is_some() {} });
    }
    result
}

/// Unwritten reply bytes past which a connection stops reading requests until the peer takes
/// some (the replies of requests already running still join them, so the most is this plus
/// `max_in_flight_per_conn` replies).
const OUT_BACKLOG_BYTES: usize = 1024 * 1024;

/// What woke a connection's task.
enum Event<R> {
    /// A finished request's reply.
    Reply(Frame),
    /// A frame a handler sent on its own (stream credit).
    Sent(Frame),
    /// A frame read (with the reader handed back).
    Read((R, Result<Option<Frame>, Error>)),
    /// The replies gathered so far were written (or the write failed).
    Wrote(Result<(), Error>),
}

/// A connection's outgoing bytes: frames are encoded onto the end of one buffer, which is
/// written from where the last write stopped. A frame added while a write is under way simply
/// joins the bytes still to go; nothing is reordered.
struct Out<W> {
    wr: W,
    buf: Vec<u8>,
    /// Bytes of `buf` the TLS layer has taken.
    written: usize,
    /// The TLS layer took bytes it may still hold (a flush is owed).
    unflushed: bool,
}

impl<W: tokio::io::AsyncWrite + Unpin> Out<W> {
    fn new(wr: W) -> Self {
        Out {
            wr,
            buf: Vec::with_capacity(64 * 1024),
            written: 0,
            unflushed: false,
        }
    }

    /// Encodes `f` behind what is queued. A frame over the limit fails without adding bytes.
    fn push(&mut self, f: &Frame, max_frame_bytes: u32) -> Result<(), Error> {
        f.encode_into(&mut self.buf, max_frame_bytes)
    }

    /// Bytes queued and not yet taken by the TLS layer.
    fn backlog(&self) -> usize {
        self.buf.len() - self.written
    }

    /// Whether anything is left to write or flush.
    fn pending(&self) -> bool {
        self.backlog() > 0 || self.unflushed
    }

    /// Writes and flushes everything queued; `Pending` while the socket is full (what was
    /// taken stays taken, the rest goes when polled again).
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.wr).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(
                    std::io::Error::from(std::io::ErrorKind::WriteZero).into()
                ));
            }
            self.written += n;
            self.unflushed = true;
        }
        if self.unflushed {
            ready!(Pin::new(&mut self.wr).poll_flush(cx))?;
            self.unflushed = false;
        }
        self.buf.clear();
        self.written = 0;
        if self.buf.capacity() > 4 * OUT_BACKLOG_BYTES {
            // One huge reply (a chunk export) must not pin its buffer for the connection's life.
            self.buf = Vec::with_capacity(64 * 1024);
        }
        Poll::Ready(Ok(()))
    }
}

/// Reads the next frame, handing the reader back with it (so the read can live in a
/// `select!` across loop turns without being cancelled half-way).
async fn read_next<R: tokio::io::AsyncRead + Unpin>(
    mut rd: R,
    max: u32,
) -> (R, Result<Option<Frame>, Error>) {
    let r = Frame::read_from(&mut rd, max).await;
    (rd, r)
}

/// Opens the receiving end of a streamed body; returns it and the frame granting the sender
/// its first window.
fn open_stream(
    streams: &Streams,
    tx: &mpsc::Sender<Frame>,
    id: u64,
    window: u32,
) -> (StreamRx, Frame) {
    let window = window.max(1);
    let (stx, srx) = mpsc::channel(window as usize + 1);
    lock(streams).insert(id, stx);
    let credit = Frame::new(FrameKind::Credit, id, window.to_le_bytes().to_vec());
    let body = StreamRx {
        id,
        rx: srx,
        out: tx.clone(),
        done: false,
    };
    (body, credit)
}

async fn run_handler<H: Handler>(
    handler: &H,
    peer: Option<NodeId>,
    id: u64,
    payload: &[u8],
    body: Option<StreamRx>,
    max_frame_bytes: u32,
) -> Frame {
    let limit = u64::from(max_frame_bytes);
    let result = match decode::<H::Request>(payload, limit) {
        Ok(req) => handler.handle(peer, req, body).await,
        Err(e) => Err(RemoteError(format!("bad request: {e}"))),
    };
    match result
        .map_err(|e| e.0)
        .and_then(|resp| encode(&resp, limit).map_err(|e| e.to_string()))
    {
        Ok(bytes) => Frame::new(FrameKind::Response, id, bytes),
        Err(msg) => Frame::new(FrameKind::Error, id, msg.into_bytes()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `per_write` bytes per call and is full (Pending, woken at
    /// once) every other call; flushes are full the first time too.
    #[derive(Default)]
    struct Trickle {
        got: Vec<u8>,
        calls: usize,
        per_write: usize,
        flushes: usize,
    }

    impl tokio::io::AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(self.per_write);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.flushes += 1;
            if !self.flushes.is_multiple_of(2) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn frame(i: u64) -> Frame {
        Frame::new(
            FrameKind::Response,
            i,
            vec![i as u8; (i as usize * 331) % 3000],
        )
    }

    #[test]
    fn frames_added_while_the_socket_is_full_go_out_after_the_rest() {
        let mut out = Out::new(Trickle {
            per_write: 700,
            ..Trickle::default()
        });
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut pushed = 0;
        let mut polls = 0;
        // Frames join between every poll, including while a write is stuck half-way.
        while pushed < 50 || out.pending() {
            if pushed < 50 {
                out.push(&frame(pushed), 1 << 20).unwrap();
                pushed += 1;
            }
            if out.poll_write_out(&mut cx).is_ready() {
                assert!(!out.pending());
                assert_eq!(out.backlog(), 0);
            }
            polls += 1;
            assert!(polls < 10_000, "the writer made no progress");
        }
        let mut got = Vec::new();
        let mut b = &out.wr.got[..];
        while let Some((f, used)) = Frame::decode(b, 1 << 20).unwrap() {
            got.push(f);
            b = &b[used..];
        }
        assert!(b.is_empty(), "a partial frame was written");
        assert_eq!(got, (0..50).map(frame).collect::<Vec<_>>());
        assert!(out.wr.flushes >= 2, "written bytes were never flushed");
    }

    #[test]
    fn an_oversized_reply_adds_nothing() {
        let mut out = Out::new(Trickle::default());
        out.push(&frame(1), 1 << 20).unwrap();
        let before = out.backlog();
        let big = Frame::new(FrameKind::Response, 2, vec![0; 200]);
        assert!(matches!(
            out.push(&big, 100),
            Err(Error::FrameTooLarge { .. })
        ));
        assert_eq!(out.backlog(), before);
    }
}
