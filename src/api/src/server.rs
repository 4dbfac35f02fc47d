//! The listener: TCP accept, TLS handshake (bounded in time), HTTP/1.1 or HTTP/2 per ALPN, and
//! the per-request entry that adds security headers and routes `/api/` vs the UI. Bounded: at
//! most `max_connections` at once (others wait in the kernel backlog), 10 s per handshake.

use crate::http::Resp;
use crate::state::State;
use http::{header, HeaderValue};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn accept_loop(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    st: Arc<State>,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let limit = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128);
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (tcp, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("api accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, st, builder, mut stop) =
            (acceptor.clone(), st.clone(), builder.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            // A client that reached the node on an address its certificate does not name (a
            // new DHCP lease) would fail the name check: name it first (see `tls`).
            if let Ok(local) = tcp.local_addr() {
                if st.certs.needs_name(local.ip()) {
                    let certs = st.certs.clone();
                    let named =
                        tokio::task::spawn_blocking(move || certs.name_address(local.ip())).await;
                    if let Ok(Err(e)) = named {
                        tracing::warn!("TLS certificate for {}: {e}", local.ip());
                    }
                }
            }
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                _ => return,
            };
            let svc = hyper::service::service_fn(move |req| {
                let st = st.clone();
                async move { Ok::<_, std::convert::Infallible>(entry(st, req, peer).await) }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {}
            }
        });
    }
}

async fn entry(
    st: Arc<State>,
    req: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> Resp {
    let path = req.uri().path();
    let body_unread_on = crate::http::BodyOnWire::of(&req);
    let mut resp = if path == "/api/v1" || path.starts_with("/api/") {
        crate::v1::handle(st, req, peer).await
    } else {
        crate::assets::serve(req.method(), path, req.headers())
    };
    if body_unread_on.must_close(resp.status()) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let h = resp.headers_mut();
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}
