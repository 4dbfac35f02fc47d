//! A small HTTPS client for the `cairn` CLI's `--server` mode: sends one `control::Request` to
//! `POST /api/v1/control` with a bearer token and returns the typed `Reply`. The server's
//! certificate must chain to the PEM the caller trusts (the node's self-signed certificate, or
//! its CA); there is no "insecure" switch. Blocking callers run it on a small runtime.

use control::{ControlError, ErrorCode, Reply, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use std::sync::Arc;
use std::time::Duration;

/// Largest reply accepted (a list of thousands of disks fits easily).
pub const MAX_REPLY_BYTES: usize = 64 << 20;

fn unreachable(msg: impl Into<String>) -> ControlError {
    ControlError::new(ErrorCode::Unavailable, msg)
}

/// `https://host:port` (a trailing path is ignored) -> (host, port).
fn parse_server(url: &str) -> Result<(String, u16), ControlError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| ControlError::invalid(format!("server {url:?} must start with https://")))?;
    let hostport = rest.split('/').next().unwrap_or("");
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| ControlError::invalid(format!("bad port in {url:?}")))?;
            (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                port,
            )
        }
        _ => (hostport.to_string(), 8443),
    };
    if host.is_empty() {
        return Err(ControlError::invalid(format!("no host in {url:?}")));
    }
    Ok((host, port))
}

/// Execute `req` on the node at `server`.
pub async fn call(
    server: &str,
    token: &str,
    ca_pem: &[u8],
    req: &Request,
) -> Result<Reply, ControlError> {
    let (host, port) = parse_server(server)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| ControlError::invalid(format!("CA certificate file: {e}")))?;
        roots
            .add(c)
            .map_err(|e| ControlError::invalid(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ControlError::invalid(
            "the CA certificate file holds no certificate",
        ));
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ControlError::internal(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|_| ControlError::invalid(format!("{host:?} is not a host name or address")))?;
    let work = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| unreachable(format!("cannot connect to {host}:{port}: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(format!("TLS with {host}:{port} failed: {e}")))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let body = serde_json::to_vec(req).map_err(|e| ControlError::internal(e.to_string()))?;
        let r = http::Request::post("/api/v1/control")
            .header("host", host.as_str())
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|e| ControlError::internal(e.to_string()))?;
        let resp = send
            .send_request(r)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = http_body_util::Limited::new(resp.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| unreachable(format!("reading the reply: {e}")))?
            .to_bytes();
        if status == 200 {
            return serde_json::from_slice::<Reply>(&bytes)
                .map_err(|e| unreachable(format!("the server's reply is not understood: {e}")));
        }
        #[derive(serde::Deserialize)]
        struct Body {
            error: ControlError,
        }
        match serde_json::from_slice::<Body>(&bytes) {
            Ok(b) => Err(b.error),
            Err(_) => Err(unreachable(format!("the server answered HTTP {status}"))),
        }
    };
    tokio::time::timeout(Duration::from_secs(3600), work)
        .await
        .map_err(|_| unreachable("no answer within an hour"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(
            parse_server("https://n1:9443/x").unwrap(),
            ("n1".into(), 9443)
        );
        assert_eq!(
            parse_server("https://127.0.0.1").unwrap(),
            ("127.0.0.1".into(), 8443)
        );
        assert_eq!(
            parse_server("https://[::1]:8443").unwrap(),
            ("::1".into(), 8443)
        );
        assert!(parse_server("http://n1").is_err());
        assert!(parse_server("https://n1:x").is_err());
    }
}
