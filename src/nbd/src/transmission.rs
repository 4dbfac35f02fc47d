//! The transmission phase of one connection: parse requests, run them concurrently against the
//! export (bounded in count and bytes), send simple replies as they finish (possibly out of
//! order), and close on NBD_CMD_DISC, a malformed stream, export removal or server stop.
//!
//! One task does all of it for a connection (reading into its own buffer, running requests as
//! futures, writing replies), so a request costs no task spawn and no cross-thread wake-up.
//! Requests that started always run to completion, even when the client goes away.
//!
//! It never trusts a length or offset from the client: every request is checked against the
//! export's size and `MAX_REQUEST_BYTES` before any buffer is allocated.

use std::io;
use std::panic::AssertUnwindSafe;

use bytes::{Buf, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::watch;

use crate::export::nbd_errno;
use crate::handshake::Chosen;
use crate::proto::*;
use crate::{NbdError, NbdExport, MAX_REQUEST_BYTES};

/// Requests one connection may have in flight.
const MAX_IN_FLIGHT_REQUESTS: usize = 64;
/// Payload bytes one connection may have in flight (reads and writes).
const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
const HEADER_BYTES: usize = 28;

/// A finished request: its reply and what it held of the connection's budget.
struct Done {
    header: [u8; 16],
    /// A read's data, sent as is (the export's own buffers: no copy here).
    data: Option<Vec<Bytes>>,
    cost_bytes: usize,
}

enum Op {
    Read,
    Write(Bytes),
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
) -> io::Result<Option<Vec<Bytes>>> {
    let data = match op {
        Op::Read => {
            // `decide` bounded the length by MAX_REQUEST_BYTES (a u32).
            let len = u32::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
            let parts = export.read_owned(offset, len).await?;
            let got: usize = parts.iter().map(Bytes::len).sum();
            if got != len as usize {
                // A reply must carry exactly the requested bytes or the stream is lost.
                return Err(io::Error::other(format!(
                    "export returned {got} bytes for a read of {len}"
                )));
            }
            return Ok(Some(parts));
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
fn decide(export: &dyn NbdExport, req: &Request, payload: Option<Bytes>) -> Result<Op, u32> {
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
/// `stop` fires. Requests already running are finished (and answered if the client still
/// listens) before returning.
pub(crate) async fn serve<R, W>(
    mut reader: R,
    writer: W,
    chosen: Chosen,
    mut stop: watch::Receiver<bool>,
) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Chosen {
        export,
        mut removed,
    } = chosen;
    let mut w = BufWriter::with_capacity(256 << 10, writer);
    let mut inbuf = BytesMut::with_capacity(256 << 10);
    let mut running: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
    let (mut in_flight, mut bytes_in_flight) = (0usize, 0usize);
    // Set once no more requests are taken: why the connection ends.
    let mut ending: Option<Result<(), NbdError>> = None;
    // Set once a reply could not be sent: requests still finish, their replies are dropped.
    let mut write_error: Option<io::Error> = None;
    loop {
        // Take every complete request the budget allows.
        let mut starved = true; // whether more input is what we wait for
        while ending.is_none() {
            if in_flight >= MAX_IN_FLIGHT_REQUESTS {
                starved = false;
                break;
            }
            let Some(hdr) = inbuf.get(..HEADER_BYTES) else {
                break;
            };
            let hdr: &[u8; HEADER_BYTES] = hdr.try_into().expect("sliced to the header size");
            let Some(req) = parse_request(hdr) else {
                ending = Some(Err(NbdError::Protocol("bad request magic".into())));
                break;
            };
            if req.kind == CMD_DISC {
                ending = Some(Ok(()));
                break;
            }
            if req.kind == CMD_WRITE && req.length > MAX_REQUEST_BYTES {
                // Its payload cannot be skipped cheaply; the stream is given up.
                ending = Some(Err(NbdError::Protocol(format!(
                    "write of {} bytes",
                    req.length
                ))));
                break;
            }
            let cost_bytes = match req.kind {
                CMD_READ | CMD_WRITE => req.length.min(MAX_REQUEST_BYTES) as usize,
                _ => 0,
            };
            if in_flight > 0 && bytes_in_flight + cost_bytes > MAX_IN_FLIGHT_BYTES {
                starved = false;
                break;
            }
            let payload_len = if req.kind == CMD_WRITE {
                req.length as usize
            } else {
                0
            };
            if inbuf.len() < HEADER_BYTES + payload_len {
                inbuf.reserve(HEADER_BYTES + payload_len - inbuf.len());
                break;
            }
            inbuf.advance(HEADER_BYTES);
            let payload = (req.kind == CMD_WRITE).then(|| inbuf.split_to(payload_len).freeze());
            in_flight += 1;
            bytes_in_flight += cost_bytes;
            let job: BoxFuture<'static, Done> = match decide(export.as_ref(), &req, payload) {
                Err(errno) => {
                    let header = simple_reply(errno, req.handle);
                    Box::pin(async move {
                        Done {
                            header,
                            data: None,
                            cost_bytes,
                        }
                    })
                }
                Ok(op) => {
                    let export = export.clone();
                    Box::pin(async move {
                        let fua = req.flags & CMD_FLAG_FUA != 0;
                        let fut = run(export.as_ref(), op, req.offset, u64::from(req.length), fua);
                        let (errno, data) = match AssertUnwindSafe(fut).catch_unwind().await {
                            Ok(Ok(data)) => (0, data),
                            Ok(Err(e)) => (nbd_errno(&e), None),
                            // A backend bug fails this request, not the connection or server.
                            Err(_) => (EIO, None),
                        };
                        Done {
                            header: simple_reply(errno, req.handle),
                            data,
                            cost_bytes,
                        }
                    })
                }
            };
            running.push(job);
        }
        if ending.is_some() && running.is_empty() {
            break;
        }
        if inbuf.capacity() - inbuf.len() < 16 << 10 {
            inbuf.reserve(64 << 10);
        }
        let want_input = ending.is_none() && starved;
        tokio::select! {
            Some(done) = running.next(), if !running.is_empty() => {
                let mut next = Some(done);
                while let Some(d) = next.take() {
                    in_flight -= 1;
                    bytes_in_flight -= d.cost_bytes;
                    if write_error.is_none() {
                        if let Err(e) = send(&mut w, &d).await {
                            write_error = Some(e);
                            ending.get_or_insert(Ok(()));
                        }
                    }
                    // Answers ready right now go out in the same send.
                    next = running.next().now_or_never().flatten();
                }
                if write_error.is_none() {
                    if let Err(e) = w.flush().await {
                        write_error = Some(e);
                        ending.get_or_insert(Ok(()));
                    }
                }
            }
            r = reader.read_buf(&mut inbuf), if want_input => match r {
                // A client that hangs up without NBD_CMD_DISC is not an error worth more.
                Ok(0) => ending = Some(Ok(())),
                Ok(_) => {}
                Err(e) => ending = Some(Err(e.into())),
            },
            _ = stop.changed(), if ending.is_none() => ending = Some(Ok(())),
            _ = removed.changed(), if ending.is_none() => ending = Some(Ok(())),
        }
    }
    if write_error.is_none() {
        let _ = w.flush().await;
        let _ = w.shutdown().await;
    }
    match (ending.unwrap_or(Ok(())), write_error) {
        (Err(e), _) => Err(e),
        (Ok(()), Some(e)) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        (Ok(()), _) => Ok(()),
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, d: &Done) -> io::Result<()> {
    w.write_all(&d.header).await?;
    for part in d.data.iter().flatten() {
        w.write_all(part).await?;
    }
    Ok(())
}
