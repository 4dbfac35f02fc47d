//! The live statistics stream (Server-Sent Events) and the alert list derived from the latest
//! sample and the certificate. At most `MAX_STREAMS` streams at once; each sends one sample a
//! second and a comment line when idle so proxies keep it open.

use crate::http::Resp;
use crate::state::State;
use bytes::Bytes;
use control::{ControlError, ErrorCode};
use futures::StreamExt;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub const MAX_STREAMS: usize = 64;

struct Slot(Arc<State>);
impl Drop for Slot {
    fn drop(&mut self) {
        self.0.sse_clients.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn stream(st: Arc<State>) -> Result<Resp, ControlError> {
    if st.sse_clients.fetch_add(1, Ordering::SeqCst) >= MAX_STREAMS {
        st.sse_clients.fetch_sub(1, Ordering::SeqCst);
        return Err(ControlError::new(
            ErrorCode::Busy,
            "too many live statistics streams are open",
        ));
    }
    let slot = Slot(st.clone());
    let rx = st.stats.subscribe();
    let first = st.stats.latest();
    let init = futures::stream::iter(first.map(|s| event(&s)));
    let live = futures::stream::unfold((rx, slot), |(mut rx, slot)| async move {
        loop {
            match tokio::time::timeout(std::time::Duration::from_secs(15), rx.recv()).await {
                Ok(Ok(s)) => return Some((event(&s), (rx, slot))),
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(_)) => return None,
                Err(_) => return Some((Bytes::from_static(b": keep-alive\n\n"), (rx, slot))),
            }
        }
    });
    let body = StreamBody::new(
        init.chain(live)
            .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))),
    )
    .boxed_unsync();
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

fn event(s: &crate::stats::Sample) -> Bytes {
    let j = serde_json::to_string(s).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: sample\ndata: {j}\n\n"))
}

/// Current alerts: failed or draining disks, degraded data, a nearly full pool, a certificate
/// near expiry, a node under memory pressure.
pub fn alerts(st: &State) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(s) = st.stats.latest() {
        for d in &s.disks {
            if d.state == "failed" {
                out.push(json!({"severity": "critical", "kind": "disk_failed", "message": format!("disk {} has failed; its data is being re-mirrored", d.name)}));
            }
        }
        if s.degraded_chunks > 0 {
            out.push(json!({"severity": "warning", "kind": "degraded", "message": format!("{} chunks have only one good copy; repair is running", s.degraded_chunks)}));
        }
        if s.pool_raw_bytes > 0 && s.pool_used_bytes * 100 / s.pool_raw_bytes >= 85 {
            out.push(json!({"severity": "warning", "kind": "pool_full", "message": format!("the pool is {}% full", s.pool_used_bytes * 100 / s.pool_raw_bytes)}));
        }
        if s.mem_total_bytes > 0 && s.mem_used_bytes * 100 / s.mem_total_bytes >= 95 {
            out.push(json!({"severity": "warning", "kind": "memory", "message": "the node is using more than 95% of its memory"}));
        }
    }
    let cert = st.certs.info();
    let left = cert.not_after_unix - crate::files::now_unix() as i64;
    if left < 30 * 86_400 {
        out.push(json!({"severity": "warning", "kind": "certificate", "message": format!("the TLS certificate expires in {} days", left.max(0) / 86_400)}));
    }
    out
}
