//! A small HTTPS client for the `cairn` CLI's `--server` mode: sends one `control::Request` to
//! `POST /api/v1/control` with a bearer token and returns the typed `Reply`. The server's
//! certificate must chain to the PEM the caller trusts (the node's self-signed certificate, or
//! its CA); there is no "insecure" switch. Blocking callers run it on a small runtime.
//!
//! The name check: when the node's key is itself one the caller trusts (the usual case: the
//! node's own certificate saved as `--ca-cert`), the caller has pinned that key, and the name in
//! the URL proves nothing more; requiring it would only fail where the node cannot know the
//! name (a port forward, NAT, a DNS alias). So the name is checked only when the node's
//! certificate is vouched for by another trusted certificate (a CA), where it is what tells the
//! CA's many certificates apart. The chain, validity and handshake signature are always checked.

use control::{ControlError, ErrorCode, Reply, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
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
    let verifier = NodeVerifier::new(ca_pem)?;
    let cfg = rustls::ClientConfig::builder_with_provider(verifier.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ControlError::internal(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
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

/// Checks the node's certificate against the certificates the caller trusts (see the module
/// comment for when the name is checked).
#[derive(Debug)]
struct NodeVerifier {
    roots: rustls::RootCertStore,
    /// The public keys (SubjectPublicKeyInfo, DER) of the trusted certificates.
    pinned_keys: Vec<Vec<u8>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl NodeVerifier {
    fn new(ca_pem: &[u8]) -> Result<NodeVerifier, ControlError> {
        let mut roots = rustls::RootCertStore::empty();
        let mut pinned_keys = Vec::new();
        for c in CertificateDer::pem_slice_iter(ca_pem) {
            let c = c.map_err(|e| ControlError::invalid(format!("CA certificate file: {e}")))?;
            let (_, parsed) = x509_parser::parse_x509_certificate(&c)
                .map_err(|e| ControlError::invalid(format!("CA certificate: {e}")))?;
            pinned_keys.push(parsed.public_key().raw.to_vec());
            roots
                .add(c)
                .map_err(|e| ControlError::invalid(format!("CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ControlError::invalid(
                "the CA certificate file holds no certificate",
            ));
        }
        Ok(NodeVerifier {
            roots,
            pinned_keys,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    /// Whether `cert`'s key is one of the trusted certificates' own keys.
    fn pinned(&self, cert: &CertificateDer<'_>) -> bool {
        x509_parser::parse_x509_certificate(cert).is_ok_and(|(_, c)| {
            self.pinned_keys
                .iter()
                .any(|k| k.as_slice() == c.public_key().raw)
        })
    }
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if !self.pinned(end_entity) {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(v: &NodeVerifier, chain: &[String], name: &str) -> Result<(), String> {
        let certs: Vec<CertificateDer<'static>> = chain
            .iter()
            .map(|p| CertificateDer::from_pem_slice(p.as_bytes()).unwrap())
            .collect();
        let name = ServerName::try_from(name.to_string()).unwrap();
        v.verify_server_cert(&certs[0], &certs[1..], &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_pinned_node_certificate_needs_no_name_a_ca_signed_one_does() {
        // The node's own certificate, trusted as itself: any name it is reached by will do.
        let (node, _) = crate::tls::self_signed().unwrap();
        let v = NodeVerifier::new(node.as_bytes()).unwrap();
        check(&v, std::slice::from_ref(&node), "localhost").unwrap();
        check(&v, std::slice::from_ref(&node), "10.9.8.7").unwrap();
        check(&v, std::slice::from_ref(&node), "forwarded.example").unwrap();
        // Another node's certificate is refused whatever it names (same subject, so it is
        // matched to the trusted one and its signature fails: another key made it).
        let (other, _) = crate::tls::self_signed().unwrap();
        let err = check(&v, &[other], "localhost").unwrap_err();
        assert!(err.contains("BadSignature"), "{err}");

        // A CA: its certificates are told apart by name, so the name is checked.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["n1.example".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap()
            .pem();
        let v = NodeVerifier::new(ca_cert.pem().as_bytes()).unwrap();
        check(&v, std::slice::from_ref(&leaf), "n1.example").unwrap();
        let err = check(&v, &[leaf], "n2.example").unwrap_err();
        assert!(err.contains("not valid for name"), "{err}");
    }

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
