//! The VM serial console over a WebSocket (`GET /api/v1/vms/{name}/console/ws`): the RFC 6455
//! upgrade over hyper 1, then a bridge between the socket and the node's
//! [`control::ConsolePort`].
//!
//! Wire form. Server to browser: binary frames carry console bytes (first the recent tail, then
//! whatever the guest writes); text frames carry one JSON object, `{"type":"hello","can_type":
//! bool}` first, later `{"type":"error","message":...}` (for example typing without the right
//! to). Browser to server: text or binary frames are keystrokes for the serial port.
//!
//! Output is pushed: the node says when the guest writes ([`control::ConsolePort::watch`]), so
//! an idle console costs nothing and new bytes leave at once (a busy one is looked at every
//! [`MIN_GAP`] at most).
//!
//! Security: the caller is authenticated like every API call (session cookie or token) before
//! the upgrade; a browser `Origin` must be this host (no cross-site socket riding on the
//! cookie); read-only callers watch, operators and admins type (the node decides, see
//! `Controller::console_port`). The socket closes when the session ends or the VM is deleted.
//! Bounded: at most [`MAX_CONSOLES`] sockets, [`MAX_INPUT_MESSAGE`] bytes per message.
//!
//! What it must never do: block a runtime worker (port calls run on the blocking pool) or
//! write anything to the VM but the caller's keystrokes.

use crate::http::{empty, Resp};
use crate::state::{Auth, Caller, State};
use control::{
    ConsoleChunk, ConsolePlace, ConsolePort, ConsoleWatch, ControlError, ErrorCode, Request,
};
use futures::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Console sockets open at once on this node.
pub const MAX_CONSOLES: usize = 64;
/// Largest keystroke message accepted (a paste); bigger ones close the socket.
pub const MAX_INPUT_MESSAGE: usize = 64 << 10;
/// Console bytes sent when a socket opens (per output stream).
const INITIAL_TAIL: usize = 64 << 10;
/// Most bytes of one stream sent per look (a guest that wrote more meanwhile: its newest).
const MAX_DELTA: usize = 1 << 20;
/// How often the console logs are looked at when the node cannot say when the guest writes
/// (a controller without `ConsolePort::watch`).
const POLL: Duration = Duration::from_millis(100);
/// Least time between two looks at a busy console: the first bytes after a quiet spell go out
/// at once, a burst is gathered (each look copies the logs).
const MIN_GAP: Duration = Duration::from_millis(20);
/// How often the session and the VM's existence are re-checked.
const RECHECK: Duration = Duration::from_secs(3);

static OPEN: AtomicUsize = AtomicUsize::new(0);

struct Slot;
impl Drop for Slot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::SeqCst);
    }
}

fn bad(msg: &str) -> ControlError {
    ControlError::invalid(msg.to_string())
}

fn has_token(h: &HeaderMap, name: header::HeaderName, want: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
            .unwrap_or(false)
    })
}

/// Check the upgrade request and return the `Sec-WebSocket-Accept` value.
fn check_upgrade(h: &HeaderMap) -> Result<String, ControlError> {
    if !has_token(h, header::UPGRADE, "websocket") || !has_token(h, header::CONNECTION, "upgrade") {
        return Err(bad(
            "this is a WebSocket endpoint: send Connection: Upgrade and Upgrade: websocket",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(bad("only WebSocket version 13 is supported"));
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|v| v.as_bytes())
        .filter(|k| k.len() == 24)
        .ok_or_else(|| bad("Sec-WebSocket-Key is missing or malformed"))?;
    // A browser always sends Origin; it must name this host so another site's page cannot
    // open a console with the user's cookie. Non-browser clients (no Origin) use tokens.
    if let Some(origin) = h.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = h
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let origin_host = origin
            .strip_prefix("https://")
            .unwrap_or("")
            .trim_end_matches('/');
        if host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
            return Err(ControlError::new(
                ErrorCode::Forbidden,
                "console connections from another site are refused",
            ));
        }
    }
    Ok(derive_accept_key(key))
}

/// Handle `GET /vms/{name}/console/ws` for an authenticated caller.
pub fn console(
    st: Arc<State>,
    caller: Caller,
    name: &str,
    mut req: hyper::Request<hyper::body::Incoming>,
) -> Result<Resp, ControlError> {
    let accept = check_upgrade(req.headers())?;
    let port = st.controller.console_port(caller.actor(), name)?;
    if OPEN.fetch_add(1, Ordering::SeqCst) >= MAX_CONSOLES {
        OPEN.fetch_sub(1, Ordering::SeqCst);
        return Err(ControlError::new(
            ErrorCode::Busy,
            "too many consoles are open on this node; close one and retry",
        ));
    }
    let slot = Slot;
    if port.can_type() {
        // Typing into a VM changes it: record who opened a console that can.
        st.audit_result(&caller, "vm_console_attach", name, Ok(()));
    }
    let upgrade = hyper::upgrade::on(&mut req);
    let name = name.to_string();
    tokio::spawn(async move {
        let _slot = slot;
        let io = match upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!("console {name}: upgrade failed: {e}");
                return;
            }
        };
        let cfg = WebSocketConfig::default()
            .max_message_size(Some(MAX_INPUT_MESSAGE))
            .max_frame_size(Some(MAX_INPUT_MESSAGE));
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(cfg)).await;
        bridge(st, caller, name, port, ws).await;
    });
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).map_err(|e| ControlError::internal(e.to_string()))?,
    );
    Ok(r)
}

/// What of a bounded, oldest-dropped log is new since the last look. Remembers the length and
/// the last bytes seen; when the log stopped growing at its cap, finds those bytes again. A log
/// that does not contain them (the VM restarted, or more than a whole log was written between
/// looks) is new in full.
#[derive(Default)]
struct Seen {
    len: usize,
    tail: Vec<u8>,
}

const TAIL_MATCH: usize = 64;

impl Seen {
    fn fresh<'a>(&mut self, cur: &'a [u8]) -> &'a [u8] {
        let start = if cur.len() >= self.len
            && cur[self.len - self.tail.len().min(self.len)..self.len] == self.tail[..]
        {
            self.len
        } else if self.tail.is_empty() {
            0
        } else {
            cur.windows(self.tail.len())
                .rposition(|w| w == self.tail)
                .map_or(0, |p| p + self.tail.len())
        };
        self.len = cur.len();
        self.tail = cur[cur.len().saturating_sub(TAIL_MATCH)..].to_vec();
        &cur[start..]
    }
}

/// Ends the wake-up task with the socket.
struct Waker(tokio::task::JoinHandle<()>);

impl Drop for Waker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Turn the node's output notifications (or a timer, without them) into wake-ups, at most one
/// per [`MIN_GAP`].
async fn wake_on_output(watch: Option<Box<dyn ConsoleWatch>>, wake: Arc<tokio::sync::Notify>) {
    match watch {
        Some(mut w) => loop {
            w.changed().await;
            wake.notify_one();
            tokio::time::sleep(MIN_GAP).await;
        },
        None => loop {
            tokio::time::sleep(POLL).await;
            wake.notify_one();
        },
    }
}

async fn since(
    port: &Arc<dyn ConsolePort>,
    places: &[ConsolePlace],
    max: usize,
) -> Option<Result<Vec<ConsoleChunk>, ControlError>> {
    let (p, at) = (port.clone(), places.to_vec());
    tokio::task::spawn_blocking(move || p.output_since(&at, max))
        .await
        .unwrap_or_else(|e| Some(Err(ControlError::internal(e.to_string()))))
}

async fn output(port: &Arc<dyn ConsolePort>) -> Result<Vec<Vec<u8>>, ControlError> {
    let p = port.clone();
    tokio::task::spawn_blocking(move || p.output())
        .await
        .map_err(|e| ControlError::internal(e.to_string()))?
}

fn json_msg(v: serde_json::Value) -> Message {
    Message::Text(v.to_string().into())
}

async fn bridge<S>(
    st: Arc<State>,
    caller: Caller,
    name: String,
    port: Arc<dyn ConsolePort>,
    ws: WebSocketStream<S>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let can_type = port.can_type();
    let hello = serde_json::json!({"type": "hello", "vm": name, "can_type": can_type});
    if tx.send(json_msg(hello)).await.is_err() {
        return;
    }
    let mut seen: Vec<Seen> = Vec::new();
    let mut places: Vec<ConsolePlace> = Vec::new();
    let mut first = true;
    // Told when the guest writes (pushed by the node), with a permit kept for a wake-up that
    // comes while the loop below is busy; polled only when the node cannot tell.
    let wake = Arc::new(tokio::sync::Notify::new());
    wake.notify_one();
    let _waker = Waker(tokio::spawn(wake_on_output(port.watch(), wake.clone())));
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.tick().await;
    let close_reason: Option<&str> = loop {
        tokio::select! {
            _ = wake.notified() => {
                let max = if first { INITIAL_TAIL } else { MAX_DELTA };
                let mut out = Vec::new();
                match since(&port, &places, max).await {
                    // Only what is new, copied once (the node counts each stream's bytes).
                    Some(Ok(chunks)) => {
                        places = chunks.iter().map(|c| c.place).collect();
                        for c in chunks {
                            out.extend_from_slice(&c.bytes);
                        }
                    }
                    Some(Err(_)) => break Some("console unavailable"),
                    // A node without counts: compare copies of the whole logs.
                    None => {
                        let Ok(logs) = output(&port).await else { break Some("console unavailable") };
                        seen.resize_with(logs.len(), Seen::default);
                        for (s, log) in seen.iter_mut().zip(&logs) {
                            let new = s.fresh(log);
                            out.extend_from_slice(&new[new.len().saturating_sub(max)..]);
                        }
                    }
                }
                first = false;
                if !out.is_empty() && tx.send(Message::Binary(out.into())).await.is_err() {
                    break None;
                }
            }
            _ = recheck.tick() => {
                if let Auth::Session { cookie, .. } = &caller.auth {
                    if st.sessions.get(cookie).is_none() {
                        break Some("your session ended; log in again");
                    }
                }
                let get = Request::VmGet { name: name.clone() };
                if let Err(e) = st.controller.execute(caller.actor(), get).await {
                    if e.code == ErrorCode::NotFound {
                        break Some("the VM was deleted");
                    }
                }
            }
            m = rx.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if !send_input(&port, &mut tx, t.as_bytes().to_vec()).await { break None; }
                }
                Some(Ok(Message::Binary(b))) => {
                    if !send_input(&port, &mut tx, b.to_vec()).await { break None; }
                }
                Some(Ok(Message::Close(_))) | None => break None,
                Some(Ok(_)) => {} // ping/pong are answered by tungstenite
                Some(Err(e)) => {
                    tracing::debug!("console {name}: {e}");
                    break None;
                }
            },
        }
    };
    if let Some(why) = close_reason {
        let _ = tx
            .send(json_msg(
                serde_json::json!({"type": "closed", "message": why}),
            ))
            .await;
    }
    let _ = tx.close().await;
}

/// Queue keystrokes; tell the browser in words when they were refused. False: socket gone.
async fn send_input<T>(port: &Arc<dyn ConsolePort>, tx: &mut T, bytes: Vec<u8>) -> bool
where
    T: futures::Sink<Message> + Unpin,
{
    let p = port.clone();
    let r = tokio::task::spawn_blocking(move || p.input(&bytes)).await;
    let msg = match r {
        Ok(Ok(_)) => return true,
        Ok(Err(e)) => e.message,
        Err(e) => e.to_string(),
    };
    tx.send(json_msg(
        serde_json::json!({"type": "error", "message": msg}),
    ))
    .await
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node-side watch that wakes once per message on a channel.
    struct Fake(tokio::sync::mpsc::Receiver<()>);

    impl ConsoleWatch for Fake {
        fn changed(&mut self) -> control::BoxFuture<'_, ()> {
            Box::pin(async move {
                if self.0.recv().await.is_none() {
                    std::future::pending::<()>().await;
                }
            })
        }
    }

    #[tokio::test]
    async fn output_wakes_the_socket_without_polling() {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let wake = Arc::new(tokio::sync::Notify::new());
        let _w = Waker(tokio::spawn(wake_on_output(
            Some(Box::new(Fake(rx))),
            wake.clone(),
        )));
        // Quiet guest: no wake-up, not even after several poll periods.
        let quiet = tokio::time::timeout(POLL * 3, wake.notified()).await;
        assert!(quiet.is_err(), "woken without output");
        tx.send(()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), wake.notified())
            .await
            .expect("output did not wake the socket");
    }

    #[test]
    fn seen_follows_growth_cap_and_restart() {
        let mut s = Seen::default();
        assert_eq!(s.fresh(b"hello"), b"hello");
        assert_eq!(s.fresh(b"hello world"), b" world");
        assert_eq!(s.fresh(b"hello world"), b"");
        // At the cap the oldest bytes go; the new ones are still found after the old tail.
        let full: Vec<u8> = (0..100u8).collect();
        let _ = s.fresh(&full);
        let mut shifted = full[10..].to_vec();
        shifted.extend(200..210u8);
        assert_eq!(s.fresh(&shifted), (200..210u8).collect::<Vec<_>>());
        // A restarted VM's log starts over: all of it is new.
        assert_eq!(s.fresh(b"boot"), b"boot");
    }

    #[test]
    fn upgrade_checks() {
        let mut h = HeaderMap::new();
        assert!(check_upgrade(&h).is_err());
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        assert!(check_upgrade(&h).is_err(), "no key");
        // RFC 6455 section 1.3's example.
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(check_upgrade(&h).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        h.insert(header::HOST, HeaderValue::from_static("node1:8443"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        let e = check_upgrade(&h).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://node1:8443"),
        );
        assert!(check_upgrade(&h).is_ok());
    }
}
