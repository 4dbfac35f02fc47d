//! The CLI's way in: a unix socket (`DATA/cairn.sock`, mode 0600) carrying newline-delimited
//! JSON. Each line from the client is one `control::Request`; each answer is one line,
//! `{"ok":<Reply>}` or `{"error":{"code":..,"message":..}}`.
//!
//! Frames are bounded; a bad frame gets an error reply (and a too-long one also closes the
//! connection). Connections are bounded too. The socket only forwards to the controller: it never
//! decides anything itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;

use control::{Actor, ControlError, Controller, ErrorCode, Reply, Request};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{watch, Semaphore};

/// Largest request or reply line.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Largest reply line the client accepts (lists can be long).
pub const MAX_REPLY_BYTES: usize = 64 << 20;
/// Bound on simultaneously served connections.
pub const MAX_CONNECTIONS: usize = 64;

/// One answer line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    Error(ControlError),
}

impl From<Result<Reply, ControlError>> for Response {
    fn from(r: Result<Reply, ControlError>) -> Self {
        match r {
            Ok(v) => Response::Ok(v),
            Err(e) => Response::Error(e),
        }
    }
}

enum Frame {
    Line(Vec<u8>),
    Eof,
    TooLong,
}

async fn read_frame<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Frame> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if line.is_empty() {
                Frame::Eof
            } else {
                Frame::Line(line)
            });
        }
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&buf[..i]);
            r.consume(i + 1);
            return Ok(if line.len() > max {
                Frame::TooLong
            } else {
                Frame::Line(line)
            });
        }
        let n = buf.len();
        line.extend_from_slice(buf);
        r.consume(n);
        if line.len() > max {
            return Ok(Frame::TooLong);
        }
    }
}

fn encode(resp: &Response) -> Vec<u8> {
    let mut out = serde_json::to_vec(resp).unwrap_or_else(|e| {
        serde_json::to_vec(&Response::Error(ControlError::internal(format!(
            "could not encode the reply: {e}"
        ))))
        .unwrap_or_default()
    });
    out.push(b'\n');
    out
}

/// Serve connections until `shutdown` turns true.
pub(crate) async fn serve(
    listener: UnixListener,
    ctl: Arc<dyn Controller>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let mut s = stream;
            let busy = Response::Error(ControlError::new(
                ErrorCode::Busy,
                format!("the node serves at most {MAX_CONNECTIONS} CLI connections at once"),
            ));
            let _ = s.write_all(&encode(&busy)).await;
            continue;
        };
        let ctl = ctl.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, ctl).await {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
    }
}

async fn connection(
    stream: tokio::net::UnixStream,
    ctl: Arc<dyn Controller>,
) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = tokio::io::BufReader::new(rd);
    loop {
        let line = match read_frame(&mut rd, MAX_FRAME_BYTES).await? {
            Frame::Eof => return Ok(()),
            Frame::TooLong => {
                let e = ControlError::invalid(format!(
                    "request frame longer than {MAX_FRAME_BYTES} bytes"
                ));
                wr.write_all(&encode(&Response::Error(e))).await?;
                return Ok(());
            }
            Frame::Line(l) => l,
        };
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let resp = match serde_json::from_slice::<Request>(&line) {
            Ok(req) => Response::from(ctl.execute(Actor::local_cli(), req).await),
            Err(e) => Response::Error(ControlError::invalid(format!("bad request frame: {e}"))),
        };
        wr.write_all(&encode(&resp)).await?;
    }
}

/// Send one request to the node listening on `socket` and wait for its answer (blocking; used
/// by the CLI). A node that cannot be reached is `ErrorCode::Unavailable`.
pub fn call(socket: &Path, req: &Request) -> Result<Reply, ControlError> {
    let unreachable = |e: std::io::Error| {
        ControlError::new(
            ErrorCode::Unavailable,
            format!(
                "cannot reach the node at {}: {e} (is `cairn node` running?)",
                socket.display()
            ),
        )
    };
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(unreachable)?;
    let mut line = serde_json::to_vec(req)
        .map_err(|e| ControlError::internal(format!("cannot encode request: {e}")))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(unreachable)?;
    let mut reader = BufReader::new(stream).take(MAX_REPLY_BYTES as u64);
    let mut answer = Vec::new();
    reader.read_until(b'\n', &mut answer).map_err(unreachable)?;
    if answer.last() != Some(&b'\n') {
        return Err(ControlError::new(
            ErrorCode::Unavailable,
            "the node closed the connection without a complete answer",
        ));
    }
    match serde_json::from_slice::<Response>(&answer) {
        Ok(Response::Ok(r)) => Ok(r),
        Ok(Response::Error(e)) => Err(e),
        Err(e) => Err(ControlError::new(
            ErrorCode::Unavailable,
            format!("the node sent an answer this CLI does not understand: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_bounded() {
        let mut r = tokio::io::BufReader::new(&b"abc\n\nxyz"[..]);
        assert!(matches!(read_frame(&mut r, 10).await.unwrap(), Frame::Line(l) if l == b"abc"));
        assert!(matches!(read_frame(&mut r, 10).await.unwrap(), Frame::Line(l) if l.is_empty()));
        assert!(matches!(read_frame(&mut r, 10).await.unwrap(), Frame::Line(l) if l == b"xyz"));
        assert!(matches!(read_frame(&mut r, 10).await.unwrap(), Frame::Eof));
        let long = [b'a'; 100];
        let mut r = tokio::io::BufReader::with_capacity(8, &long[..]);
        assert!(matches!(
            read_frame(&mut r, 10).await.unwrap(),
            Frame::TooLong
        ));
    }

    #[test]
    fn responses_have_the_api_error_shape() {
        let r = Response::Error(ControlError::not_found("no disk x"));
        let v: serde_json::Value = serde_json::from_slice(&encode(&r)).unwrap();
        assert_eq!(v["error"]["code"], "not_found");
        assert_eq!(v["error"]["message"], "no disk x");
    }
}
