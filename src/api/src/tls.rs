//! TLS: the node's certificate and the rustls server configuration.
//!
//! Owns `state_dir/tls/{cert,key}.pem`. On first start a self-signed certificate is made for the
//! node's host name, `localhost`, 127.0.0.1, ::1 and the host's own addresses. An uploaded
//! certificate replaces it only after it parses, its key matches, and it is valid now; the
//! switch is live (new handshakes use it) without a restart. Never accepts a certificate it has
//! not validated, never logs key material.
//!
//! Protocols: TLS 1.3 and 1.2 only, AEAD suites with forward secrecy only (ring provider).

use crate::error::{ApiError, Result};
use crate::files::{now_unix, read_optional, write_atomic};
use parking_lot::RwLock;
use rustls::crypto::ring as ring_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest PEM upload accepted (a chain of a few certificates plus a key).
pub const MAX_PEM_BYTES: usize = 64 * 1024;

/// What the API shows about the certificate in use.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub names: Vec<String>,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    pub self_signed: bool,
    pub sha256_fingerprint: String,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    info: CertInfo,
}

/// The live certificate: handshakes read it, an admin upload swaps it.
pub struct CertStore {
    dir: PathBuf,
    current: RwLock<Loaded>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").field("dir", &self.dir).finish()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().key.clone())
    }
}

impl CertStore {
    /// Load the stored certificate, or create a self-signed one on first start.
    pub fn open(state_dir: &Path) -> Result<Arc<CertStore>> {
        let dir = state_dir.join("tls");
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        let loaded = match (read_optional(&cert_path)?, read_optional(&key_path)?) {
            (Some(c), Some(k)) => validate(&c, &k).map_err(|e| ApiError::State {
                path: cert_path.clone(),
                reason: e,
            })?,
            _ => {
                let (c, k) = self_signed()?;
                let loaded = validate(c.as_bytes(), k.as_bytes()).map_err(ApiError::Certificate)?;
                write_atomic(&key_path, k.as_bytes())?;
                write_atomic(&cert_path, c.as_bytes())?;
                loaded
            }
        };
        Ok(Arc::new(CertStore {
            dir,
            current: RwLock::new(loaded),
        }))
    }

    pub fn info(&self) -> CertInfo {
        self.current.read().info.clone()
    }

    /// The certificate in use, PEM (what a client pins or adds as a trust root).
    pub fn cert_pem(&self) -> Result<String> {
        let p = self.dir.join("cert.pem");
        std::fs::read_to_string(&p).map_err(|e| ApiError::io("read", &p, e))
    }

    /// Validate and install an uploaded certificate chain and key. On any error the old one stays.
    pub fn replace(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<CertInfo, String> {
        if cert_pem.len() > MAX_PEM_BYTES || key_pem.len() > MAX_PEM_BYTES {
            return Err(format!(
                "certificate or key is larger than {MAX_PEM_BYTES} bytes"
            ));
        }
        let loaded = validate(cert_pem, key_pem)?;
        let info = loaded.info.clone();
        // Key first: a crash between the two writes leaves a pair that fails validation at the
        // next start rather than a silently mismatched one... so keep the old pair until both
        // new files are on disk under temporary names, then rename.
        let cert_path = self.dir.join("cert.pem");
        let key_path = self.dir.join("key.pem");
        write_atomic(&self.dir.join("new-key.pem"), key_pem).map_err(|e| e.to_string())?;
        write_atomic(&self.dir.join("new-cert.pem"), cert_pem).map_err(|e| e.to_string())?;
        std::fs::rename(self.dir.join("new-key.pem"), &key_path).map_err(|e| e.to_string())?;
        std::fs::rename(self.dir.join("new-cert.pem"), &cert_path).map_err(|e| e.to_string())?;
        *self.current.write() = loaded;
        Ok(info)
    }
}

/// Parse a PEM chain and key; check the key matches the leaf and the leaf is valid now.
fn validate(cert_pem: &[u8], key_pem: &[u8]) -> std::result::Result<Loaded, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("the certificate is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate found (expected a PEM 'BEGIN CERTIFICATE' block)".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("the private key is not a valid PEM key: {e}"))?;
    let signing = ring_provider::sign::any_supported_type(&key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&certs[0])
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let now = now_unix() as i64;
    let nb = leaf.validity().not_before.timestamp();
    let na = leaf.validity().not_after.timestamp();
    if now < nb {
        return Err("the certificate is not valid yet".into());
    }
    if now >= na {
        return Err("the certificate has expired".into());
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*ip) {
                        names.push(std::net::Ipv4Addr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*ip) {
                        names.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let info = CertInfo {
        subject: leaf.subject().to_string(),
        issuer: leaf.issuer().to_string(),
        self_signed: leaf.subject() == leaf.issuer(),
        names,
        not_before_unix: nb,
        not_after_unix: na,
        sha256_fingerprint: crate::files::sha256_hex(&certs[0]),
    };
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|_| "the private key does not belong to the certificate".to_string())?;
    Ok(Loaded {
        key: Arc::new(ck),
        info,
    })
}

/// A fresh self-signed certificate (PEM cert, PEM key) for this host's names and addresses.
pub fn self_signed() -> Result<(String, String)> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Some(h) = hostname() {
        if !names.contains(&h) {
            names.insert(0, h);
        }
    }
    for a in host_addresses() {
        if !names.contains(&a) {
            names.push(a);
        }
    }
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| ApiError::Certificate(e.to_string()))?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

/// The host's name, from the kernel.
pub fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    (!h.is_empty() && h.len() <= 253).then(|| h.to_string())
}

/// The host's own IPv4 addresses (local routes in /proc/net/fib_trie) and global IPv6 ones.
fn host_addresses() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/proc/net/fib_trie") {
        let mut last: Option<&str> = None;
        for line in t.lines() {
            let l = line.trim_start_matches([' ', '|', '-', '+']);
            if l.contains("/32 host LOCAL") {
                if let Some(a) = last {
                    if !out.iter().any(|o: &String| o == a)
                        && a.parse::<std::net::Ipv4Addr>().is_ok()
                    {
                        out.push(a.to_string());
                    }
                }
            } else if !l.starts_with('/') {
                last = l.split_whitespace().next();
            }
        }
    }
    if let Ok(t) = std::fs::read_to_string("/proc/net/if_inet6") {
        for line in t.lines().take(64) {
            let hexaddr = line.split_whitespace().next().unwrap_or("");
            if hexaddr.len() == 32 && !hexaddr.starts_with("fe80") {
                let mut b = [0u8; 16];
                let ok = (0..16).all(|i| {
                    u8::from_str_radix(&hexaddr[2 * i..2 * i + 2], 16)
                        .map(|v| b[i] = v)
                        .is_ok()
                });
                if ok {
                    out.push(std::net::Ipv6Addr::from(b).to_string());
                }
            }
        }
    }
    out.truncate(32);
    out
}

/// The rustls server config: TLS 1.3 + 1.2, modern AEAD suites, ALPN h2 and http/1.1.
pub fn server_config(certs: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut provider = ring_provider::default_provider();
    provider.cipher_suites = vec![
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ApiError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_validates_and_bad_uploads_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::open(dir.path()).unwrap();
        let first = store.info();
        assert!(first.names.iter().any(|n| n == "localhost"));
        assert!(first.names.iter().any(|n| n == "127.0.0.1"));
        // Garbage is refused and the old certificate stays.
        assert!(store.replace(b"nope", b"nope").is_err());
        // A key that belongs to another certificate is refused.
        let (c1, _k1) = self_signed().unwrap();
        let (_c2, k2) = self_signed().unwrap();
        let err = store.replace(c1.as_bytes(), k2.as_bytes()).unwrap_err();
        assert!(err.contains("does not belong"), "{err}");
        assert_eq!(store.info(), first);
        // A matching pair is installed and survives a reopen.
        let (c3, k3) = self_signed().unwrap();
        let info = store.replace(c3.as_bytes(), k3.as_bytes()).unwrap();
        assert_ne!(info.sha256_fingerprint, first.sha256_fingerprint);
        let again = CertStore::open(dir.path()).unwrap();
        assert_eq!(again.info(), info);
    }
}
