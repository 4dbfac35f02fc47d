//! The serving side: accepts mutual-TLS connections from cluster members, reads framed requests
//! and runs them on a [`Handler`], at most `max_in_flight` at a time per connection (beyond
//! that we stop reading, so TCP pushes back on the peer). A connection's requests run
//! concurrently inside its own task (no task per request); when the connection ends, the ones
//! already started still run to their end.
//!
//! A peer whose certificate does not chain to the cluster CA fails the handshake and never
//! reaches a handler. A peer that breaks protocol is disconnected.
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::codec::{decode, encode_into};
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

    /// Something to hold while the server starts a burst of requests that arrived together
    /// (one socket read often carries several): taken before the first of them is started,
    /// dropped once each has been polled and the connection has nothing more to read at once
    /// (or [`MAX_BATCH`] frames were read under it), and always before the connection task
    /// waits. A handler whose requests go to a device can hold the device's submissions
    /// back meanwhile, so the burst reaches it in one go. `None` (the default): nothing held.
    fn batch(&self) -> Option<Batch> {
        None
    }
}

/// What [`Handler::batch`] hands the server to hold (dropping it ends the batch).
pub type Batch = Box<dyn Send>;

/// Frames read under one [`Handler::batch`] at most (requests, and a streamed body's chunks): a
/// peer sending without pause does not hold back the first of its requests behind ever more.
pub const MAX_BATCH: usize = 32;

/// One turn of a connection's loop.
enum Step<F> {
    /// A running request finished.
    Ran,
    /// The next frame (or the end of the connection, or a read error).
    Read(F),
    /// The server is shutting down.
    Stop,
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
    let (tx, mut rx) = mpsc::channel::<Frame>(cfg.write_queue_frames.max(1));
    let max = cfg.max_frame_bytes;
    let max_in_flight = cfg.max_in_flight_per_conn.max(1);
    let inflight = Arc::new(Semaphore::new(max_in_flight));
    let busy = crate::writer::InFlight {
        sem: inflight.clone(),
        max: max_in_flight,
    };
    // Reply payloads come back from the writer once they are in its batch, for the next replies
    // to encode into (no allocation per reply).
    let spare = Arc::new(crate::writer::Spare::default());
    let writer = AbortOnDrop(tokio::spawn({
        let spare = spare.clone();
        async move { crate::writer::write_frames(wr, &mut rx, max, busy, Some(&spare)).await }
    }));
    let streams: Streams = Arc::new(Mutex::new(HashMap::new()));
    // Requests run inside this task, not one spawned task each: a burst of requests then
    // costs no task spawns, and their completions (io_uring, replies) wake this one task
    // instead of one task per request, each of which could wake another worker thread.
    let mut running = FuturesUnordered::new();
    // One payload buffer for the connection's frames: a request is decoded as soon as it is
    // read (as its handler would first thing), so the buffer is free again for the next frame
    // (an allocation per request of a few KiB cost malloc's slow path each time).
    let mut next = std::pin::pin!(read_next(rd, max, Vec::new()));
    // The handler's batch while requests that arrived together are being started, and how
    // many frames were read under it.
    let mut batch: Option<Batch> = None;
    let mut batched = 0usize;
    let result = loop {
        // At the in-flight bound, stop reading (TCP pushes back on the peer) and only run.
        let full = running.len() >= max_in_flight;
        let step = {
            let mut turn = std::pin::pin!(async {
                tokio::select! {
                    biased;
                    // New requests are polled (started) here first, under the batch.
                    Some(()) = running.next(), if !running.is_empty() => Step::Ran,
                    r = next.as_mut(), if !full => Step::Read(r),
                    _ = stop.changed() => Step::Stop,
                }
            });
            // Nothing more can be done at once (every request waits, nothing more to read):
            // the batch ends before the task waits, so what it held back goes now.
            std::future::poll_fn(|cx| {
                let p = turn.as_mut().poll(cx);
                if p.is_pending() && batch.take().is_some() {
                    batched = 0;
                }
                p
            })
            .await
        };
        let frame = match step {
            Step::Ran => continue,
            Step::Read(r) => r,
            Step::Stop => break Ok(()),
        };
        // Every frame read while a batch is held counts (a streamed body's chunks too): past
        // the bound, what was started so far goes now.
        if batch.is_some() {
            batched += 1;
            if batched > MAX_BATCH {
                batch = None;
                batched = 0;
            }
        }
        let (rd, mut payload, frame) = frame;
        let (kind, id) = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        match kind {
            FrameKind::Request | FrameKind::StreamRequest => {
                let req = decode::<H::Request>(&payload, u64::from(max));
                next.set(read_next(rd, max, reusable(payload)));
                // Bounded by `running.len()` above: a permit is always free here. The writer
                // counts permits to know whether more replies are on their way.
                let Ok(permit) = inflight.clone().try_acquire_owned() else {
                    break Err(Error::Closed);
                };
                let body = if kind == FrameKind::StreamRequest {
                    match open_stream(&streams, &tx, id, cfg.stream_window_chunks).await {
                        Ok(b) => Some(b),
                        Err(e) => break Err(e),
                    }
                } else {
                    None
                };
                if batch.is_none() {
                    batch = handler.batch();
                    batched = 1;
                }
                let (handler, tx, streams, spare) =
                    (handler.clone(), tx.clone(), streams.clone(), spare.clone());
                running.push(async move {
                    let reply = run_handler(&*handler, peer, id, req, body, max, &spare).await;
                    if kind == FrameKind::StreamRequest {
                        lock(&streams).remove(&id);
                    }
                    let _ = tx.send(reply).await;
                    drop(permit);
                });
            }
            FrameKind::Chunk | FrameKind::End => {
                // A chunk keeps its bytes (the handler takes them); the next frame gets a new
                // buffer.
                let chunk = (kind == FrameKind::Chunk).then(|| std::mem::take(&mut payload));
                next.set(read_next(rd, max, reusable(payload)));
                let is_end = chunk.is_none();
                let sender = lock(&streams).get(&id).cloned();
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
                        lock(&streams).remove(&id);
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
    // up. Their replies go nowhere (the writer is stopped first, so nothing waits for it).
    drop(batch);
    drop(writer);
    drop(tx);
    if !running.is_empty() {
        tokio::spawn(async move { while running.next().await.is_some() {} });
    }
    result
}

/// Reads the next frame into `payload`, handing the reader and the buffer back with its kind
/// and id (so the read can live in a `select!` across loop turns without being cancelled
/// half-way).
async fn read_next<R: tokio::io::AsyncRead + Unpin>(
    mut rd: R,
    max: u32,
    mut payload: Vec<u8>,
) -> (R, Vec<u8>, Result<Option<(FrameKind, u64)>, Error>) {
    let r = Frame::read_into(&mut rd, max, &mut payload).await;
    (rd, payload, r)
}

/// Frames whose payload the connection keeps reusing stay below this; a larger one (a chunk
/// import) does not pin its allocation for the connection's life.
const KEEP_PAYLOAD_BYTES: usize = 256 * 1024;

fn reusable(payload: Vec<u8>) -> Vec<u8> {
    if payload.capacity() > KEEP_PAYLOAD_BYTES {
        Vec::new()
    } else {
        payload
    }
}

/// Cuts the writer (and so the connection) when the connection task ends or is dropped by
/// shutdown, instead of leaving it to outlive the server.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn open_stream(
    streams: &Streams,
    tx: &mpsc::Sender<Frame>,
    id: u64,
    window: u32,
) -> Result<StreamRx, Error> {
    let window = window.max(1);
    let (stx, srx) = mpsc::channel(window as usize + 1);
    lock(streams).insert(id, stx);
    tx.send(Frame::new(
        FrameKind::Credit,
        id,
        window.to_le_bytes().to_vec(),
    ))
    .await
    .map_err(|_| Error::Closed)?;
    Ok(StreamRx {
        id,
        rx: srx,
        out: tx.clone(),
        done: false,
    })
}

async fn run_handler<H: Handler>(
    handler: &H,
    peer: Option<NodeId>,
    id: u64,
    req: Result<H::Request, Error>,
    body: Option<StreamRx>,
    max_frame_bytes: u32,
    spare: &crate::writer::Spare,
) -> Frame {
    let limit = u64::from(max_frame_bytes);
    let result = match req {
        Ok(req) => handler.handle(peer, req, body).await,
        Err(e) => Err(RemoteError(format!("bad request: {e}"))),
    };
    let encoded = result.map_err(|e| e.0).and_then(|resp| {
        let mut bytes = spare.take();
        encode_into(&resp, &mut bytes, limit)
            .map(|()| bytes)
            .map_err(|e| e.to_string())
    });
    match encoded {
        Ok(bytes) => Frame::new(FrameKind::Response, id, bytes),
        Err(msg) => Frame::new(FrameKind::Error, id, msg.into_bytes()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
