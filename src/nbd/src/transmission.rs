//! The transmission phase of one connection: read requests, run them concurrently against the
//! export (bounded in count and bytes), send simple replies as they finish (possibly out of
//! order), and close on NBD_CMD_DISC, a malformed stream, export removal or server stop.
//!
//! It never trusts a length or offset from the client: every request is checked against the
//! export's size and `MAX_REQUEST_BYTES` before any buffer is allocated.

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::export::nbd_errno;
use crate::handshake::Chosen;
use crate::proto::*;
use crate::{NbdError, NbdExport, MAX_REQUEST_BYTES};

/// Requests one connection may have in flight.
const MAX_IN_FLIGHT_REQUESTS: usize = 64;
/// Payload bytes one connection may have in flight (reads and writes).
const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

struct Reply {
    header: [u8; 16],
    data: Option<Vec<u8>>,
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

/// What the reader hands the executor: an answer already known, or a request to run.
enum Job {
    Now(Reply),
    Run(BoxFuture<'static, Reply>),
}

/// Runs the connection's requests (all in this one task, so a request costs no task spawn or
/// cross-thread wake) and writes their replies in completion order, batching replies that are
/// ready together into one send. Returns when the reader is gone and everything is answered.
async fn execute<W: AsyncWrite + Unpin>(w: W, mut rx: mpsc::Receiver<Job>) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(256 << 10, w);
    let mut running = FuturesUnordered::new();
    let mut open = true;
    loop {
        let first = tokio::select! {
            Some(r) = running.next(), if !running.is_empty() => r,
            job = rx.recv(), if open => match job {
                Some(Job::Now(r)) => r,
                Some(Job::Run(f)) => {
                    running.push(f);
                    continue;
                }
                None => {
                    open = false;
                    continue;
                }
            },
            else => break,
        };
        let mut reply = Some(first);
        while let Some(r) = reply.take() {
            w.write_all(&r.header).await?;
            if let Some(d) = &r.data {
                w.write_all(d).await?;
            }
            drop(r);
            // More answers ready right now go out in the same send.
            reply = match running.next().now_or_never() {
                Some(Some(r)) => Some(r),
                _ => match rx.try_recv() {
                    Ok(Job::Now(r)) => Some(r),
                    Ok(Job::Run(f)) => {
                        running.push(f);
                        running.next().now_or_never().flatten()
                    }
                    Err(_) => None,
                },
            };
        }
        w.flush().await?;
    }
    w.flush().await?;
    w.shutdown().await
}

/// What a request does, decided before running it.
enum Op {
    Read,
    Write(Vec<u8>),
    Flush,
    Trim,
    Zeroes { may_trim: bool },
}

async fn run(
    export: &dyn NbdExport,
    op: Op,
    offset: u64,
    len: u64,
    fua: bool,
) -> io::Result<Option<Vec<u8>>> {
    let data = match op {
        Op::Read => {
            let mut buf = vec![0u8; len as usize];
            export.read(offset, &mut buf).await?;
            return Ok(Some(buf));
        }
        Op::Write(data) => export.write(offset, &data).await.map(|_| None)?,
        Op::Flush => return export.flush().await.map(|_| None),
        Op::Trim => export.trim(offset, len).await.map(|_| None)?,
        Op::Zeroes { may_trim } => export
            .write_zeroes(offset, len, may_trim)
            .await
            .map(|_| None)?,
    };
    // FUA: the write must be durable before it is acknowledged.
    if fua {
        export.flush().await?;
    }
    Ok(data)
}

/// Check a request and say what to run, or the error to reply with.
fn decide(export: &dyn NbdExport, req: &Request, payload: Option<Vec<u8>>) -> Result<Op, u32> {
    let len = u64::from(req.length);
    let in_range = req
        .offset
        .checked_add(len)
        .is_some_and(|end| end <= export.size_bytes());
    let allowed = match req.kind {
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        _ => CMD_FLAG_FUA,
    };
    if req.flags & !allowed != 0 {
        return Err(EINVAL);
    }
    let writes = matches!(req.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && export.read_only() {
        return Err(EPERM);
    }
    match req.kind {
        CMD_FLUSH => Ok(Op::Flush),
        _ if !in_range => Err(if writes && req.kind != CMD_TRIM {
            ENOSPC
        } else {
            EINVAL
        }),
        CMD_READ if len > u64::from(MAX_REQUEST_BYTES) => Err(EOVERFLOW),
        CMD_READ => Ok(Op::Read),
        CMD_WRITE => Ok(Op::Write(payload.unwrap_or_default())),
        CMD_TRIM => Ok(Op::Trim),
        CMD_WRITE_ZEROES => Ok(Op::Zeroes {
            may_trim: req.flags & CMD_FLAG_NO_HOLE == 0,
        }),
        _ => Err(EINVAL),
    }
}

/// Serve requests until the client disconnects, the stream turns bad, the export is removed or
/// `stop` fires. Requests already running are answered before returning.
pub(crate) async fn serve<R, W>(
    mut reader: R,
    writer: W,
    chosen: Chosen,
    mut stop: watch::Receiver<bool>,
) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Chosen {
        export,
        mut removed,
    } = chosen;
    let (tx, rx) = mpsc::channel::<Job>(MAX_IN_FLIGHT_REQUESTS);
    let executor = tokio::spawn(execute(writer, rx));
    let requests = Arc::new(Semaphore::new(MAX_IN_FLIGHT_REQUESTS));
    let bytes = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES));
    let result = loop {
        let mut hdr = [0u8; 28];
        tokio::select! {
            r = reader.read_exact(&mut hdr) => if let Err(e) = r {
                // A client that just hangs up without NBD_CMD_DISC is not an error worth more.
                break if e.kind() == io::ErrorKind::UnexpectedEof { Ok(()) } else { Err(e.into()) };
            },
            _ = stop.changed() => break Ok(()),
            _ = removed.changed() => break Ok(()),
        }
        let Some(req) = parse_request(&hdr) else {
            break Err(NbdError::Protocol("bad request magic".into()));
        };
        if req.kind == CMD_DISC {
            break Ok(());
        }
        if req.kind == CMD_WRITE && req.length > MAX_REQUEST_BYTES {
            // Its payload cannot be skipped cheaply; the stream is given up.
            break Err(NbdError::Protocol(format!("write of {} bytes", req.length)));
        }
        let req_permit = requests
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let payload_bytes = match req.kind {
            CMD_READ | CMD_WRITE => req.length.min(MAX_REQUEST_BYTES),
            _ => 0,
        };
        let byte_permit = if payload_bytes > 0 {
            Some(
                bytes
                    .clone()
                    .acquire_many_owned(payload_bytes)
                    .await
                    .expect("never closed"),
            )
        } else {
            None
        };
        let payload = if req.kind == CMD_WRITE {
            let mut buf = vec![0u8; req.length as usize];
            if let Err(e) = reader.read_exact(&mut buf).await {
                break Err(e.into());
            }
            Some(buf)
        } else {
            None
        };
        let permits = (req_permit, byte_permit);
        let job = match decide(export.as_ref(), &req, payload) {
            Err(errno) => Job::Now(Reply {
                header: simple_reply(errno, req.handle),
                data: None,
                _permits: permits,
            }),
            Ok(op) => {
                let export = export.clone();
                Job::Run(Box::pin(async move {
                    let fua = req.flags & CMD_FLAG_FUA != 0;
                    let fut = run(export.as_ref(), op, req.offset, u64::from(req.length), fua);
                    let (errno, data) = match AssertUnwindSafe(fut).catch_unwind().await {
                        Ok(Ok(data)) => (0, data),
                        Ok(Err(e)) => (nbd_errno(&e), None),
                        // A backend bug fails this request, not the connection or the server.
                        Err(_) => (EIO, None),
                    };
                    Reply {
                        header: simple_reply(errno, req.handle),
                        data,
                        _permits: permits,
                    }
                }))
            }
        };
        if tx.send(job).await.is_err() {
            // The executor stopped: the client is not reading any more.
            break Ok(());
        }
    };
    drop(tx);
    let written = executor.await;
    match (result, written) {
        (Err(e), _) => Err(e),
        (Ok(()), Ok(Err(e))) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        (Ok(()), _) => Ok(()),
    }
}
