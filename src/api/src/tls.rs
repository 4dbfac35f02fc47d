//! TLS: the node's certificate and the rustls server configuration.
//!
//! Owns `state_dir/tls/{cert,key,origin}`. On first start a self-signed certificate is made for
//! the node's host name, `localhost`, 127.0.0.1, ::1 and the host's own addresses. An uploaded
//! certificate replaces it only after it parses, its key matches, and it is valid now; the
//! switch is live (new handshakes use it) without a restart. Never accepts a certificate it has
//! not validated, never logs key material.
//!
//! Addresses change after the certificate is made (an appliance gets a new DHCP lease), and a
//! client that reaches the node on an address the certificate does not name fails the name
//! check. So before each handshake the listener asks [`CertStore::name_address`] about the
//! address the connection arrived on; when the certificate in use is the one this node
//! generated and does not name it, it is re-issued for the host's current addresses plus that
//! one, live. The re-issue keeps the key and the subject: a client that saved the old
//! certificate as its trust root (`cairn --ca-cert`) still verifies the new one, because a trust
//! anchor is a subject and a key, and the new certificate is signed by that key under that
//! subject. An uploaded certificate is never touched (`origin` says which is in use).
//!
//! Protocols: TLS 1.3 and 1.2 only, AEAD suites with forward secrecy only (ring provider).

use crate::error::{ApiError, Result};
use crate::files::{now_unix, read_optional, write_atomic};
use parking_lot::{Mutex, RwLock};
use rustls::crypto::ring as ring_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Serialize;
use std::net::IpAddr;
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
    /// SHA-256 of the leaf's public key (SubjectPublicKeyInfo): unlike the fingerprint, it stays
    /// the same when the node re-issues its own certificate for a new address.
    pub key_sha256: String,
}

/// Where the certificate in use came from. Only one this node generated is ever re-issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Generated,
    Uploaded,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Generated => "generated",
            Origin::Uploaded => "uploaded",
        }
    }
}

/// The subject every certificate this node generates carries (rcgen's default). A re-issue must
/// keep it: clients that trust the old certificate match the new one's issuer against it.
const GENERATED_SUBJECT: &str = "CN=rcgen self signed cert";

/// At most this many addresses a re-issue keeps that the host does not list as its own
/// (loopback and link-local ones clients reached the node on), newest first.
const MAX_REACHED_ADDRESSES: usize = 8;

struct Loaded {
    key: Arc<CertifiedKey>,
    info: CertInfo,
    /// The addresses the leaf names, parsed once: every connection checks them.
    ips: Vec<IpAddr>,
    origin: Origin,
}

/// The live certificate: handshakes read it, an admin upload swaps it, a new address re-issues
/// the generated one.
pub struct CertStore {
    dir: PathBuf,
    current: RwLock<Loaded>,
    /// Held while the files are rewritten (upload or re-issue), so a re-issue that decided on
    /// the generated certificate cannot overwrite an upload that landed meanwhile.
    writing: Mutex<()>,
    /// The address whose re-issue failed last, and when.
    failed: Mutex<Option<(IpAddr, std::time::Instant)>>,
}

/// How long after a failed re-issue the same address waits for the next attempt.
pub const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

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
        let origin_path = dir.join("origin");
        let loaded = match (read_optional(&cert_path)?, read_optional(&key_path)?) {
            (Some(c), Some(k)) => {
                let origin = read_optional(&origin_path)?;
                let mut loaded =
                    validate(&c, &k, Origin::Uploaded).map_err(|e| ApiError::State {
                        path: cert_path.clone(),
                        reason: e,
                    })?;
                loaded.origin = match origin.as_deref().map(|o| o.trim_ascii()) {
                    Some(b"generated") => Origin::Generated,
                    Some(_) => Origin::Uploaded,
                    // Written before `origin` existed: only a certificate this node made could
                    // be self-signed under rcgen's default subject.
                    None if loaded.info.self_signed && loaded.info.subject == GENERATED_SUBJECT => {
                        Origin::Generated
                    }
                    None => Origin::Uploaded,
                };
                loaded
            }
            _ => {
                let (c, k) = self_signed()?;
                let loaded = validate(c.as_bytes(), k.as_bytes(), Origin::Generated)
                    .map_err(ApiError::Certificate)?;
                write_atomic(&key_path, k.as_bytes())?;
                write_atomic(&cert_path, c.as_bytes())?;
                write_atomic(&origin_path, Origin::Generated.as_str().as_bytes())?;
                loaded
            }
        };
        Ok(Arc::new(CertStore {
            dir,
            current: RwLock::new(loaded),
            writing: Mutex::new(()),
            failed: Mutex::new(None),
        }))
    }

    /// True when a connection that arrived on `local` needs [`CertStore::name_address`]: the
    /// certificate in use is the generated one and does not name that address. Cheap (every
    /// connection asks).
    pub fn needs_name(&self, local: IpAddr) -> bool {
        let local = local.to_canonical();
        let needed = {
            let cur = self.current.read();
            cur.origin == Origin::Generated && !cur.ips.contains(&local)
        };
        let failed_lately = matches!(
            *self.failed.lock(),
            Some((ip, at)) if ip == local && at.elapsed() < RETRY_AFTER
        );
        needed && !failed_lately
    }

    /// Re-issue the generated certificate so that it names `local` (the address a client
    /// reached this node on) and the host's current addresses, with the same key and subject;
    /// the next handshake serves it. Returns whether it re-issued: never for an uploaded
    /// certificate, nor when the one in use already names `local`. On any error the certificate
    /// in use stays, and [`CertStore::needs_name`] says no for that address for [`RETRY_AFTER`]
    /// (a full disk must not cost a write attempt and a log line per connection).
    pub fn name_address(&self, local: IpAddr) -> Result<bool> {
        let local = local.to_canonical();
        let r = self.reissue_for(local);
        if r.is_err() {
            *self.failed.lock() = Some((local, std::time::Instant::now()));
        }
        r
    }

    fn reissue_for(&self, local: IpAddr) -> Result<bool> {
        let _writing = self.writing.lock();
        let reached: Vec<IpAddr> = {
            let cur = self.current.read();
            if cur.origin != Origin::Generated || cur.ips.contains(&local) {
                return Ok(false);
            }
            // Loopback and link-local addresses are not in the host's list (only /32 local
            // routes and global IPv6 are); keep those clients reached the node on before, so
            // two of them do not take turns re-issuing.
            std::iter::once(local)
                .chain(
                    cur.ips
                        .iter()
                        .copied()
                        .filter(|ip| *ip != local && reached_only(*ip)),
                )
                .take(MAX_REACHED_ADDRESSES)
                .collect()
        };
        let key_path = self.dir.join("key.pem");
        let key_pem =
            std::fs::read_to_string(&key_path).map_err(|e| ApiError::io("read", &key_path, e))?;
        let key = rcgen::KeyPair::from_pem(&key_pem)
            .map_err(|e| ApiError::Certificate(format!("the stored key cannot be used: {e}")))?;
        let cert_pem = issue(&key, node_names(&reached))?;
        let loaded = validate(cert_pem.as_bytes(), key_pem.as_bytes(), Origin::Generated)
            .map_err(ApiError::Certificate)?;
        // Only the certificate changes, and it is written atomically: a crash leaves the old
        // or the new one, each matching the key.
        write_atomic(&self.dir.join("cert.pem"), cert_pem.as_bytes())?;
        tracing::info!(
            "TLS certificate re-issued (same key) to name {local}: {}",
            loaded.info.names.join(", ")
        );
        *self.current.write() = loaded;
        Ok(true)
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
        let loaded = validate(cert_pem, key_pem, Origin::Uploaded)?;
        let info = loaded.info.clone();
        let _writing = self.writing.lock();
        // Key first: a crash between the two writes leaves a pair that fails validation at the
        // next start rather than a silently mismatched one... so keep the old pair until both
        // new files are on disk under temporary names, then rename.
        let cert_path = self.dir.join("cert.pem");
        let key_path = self.dir.join("key.pem");
        write_atomic(&self.dir.join("new-key.pem"), key_pem).map_err(|e| e.to_string())?;
        write_atomic(&self.dir.join("new-cert.pem"), cert_pem).map_err(|e| e.to_string())?;
        // Marked uploaded before it is in place: a crash in between leaves the generated pair
        // marked uploaded (never re-issued, still served), never an upload marked generated.
        write_atomic(
            &self.dir.join("origin"),
            Origin::Uploaded.as_str().as_bytes(),
        )
        .map_err(|e| e.to_string())?;
        std::fs::rename(self.dir.join("new-key.pem"), &key_path).map_err(|e| e.to_string())?;
        std::fs::rename(self.dir.join("new-cert.pem"), &cert_path).map_err(|e| e.to_string())?;
        *self.current.write() = loaded;
        Ok(info)
    }
}

/// Parse a PEM chain and key; check the key matches the leaf and the leaf is valid now.
fn validate(
    cert_pem: &[u8],
    key_pem: &[u8],
    origin: Origin,
) -> std::result::Result<Loaded, String> {
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
    let fp = fingerprints(&certs[0], &leaf);
    let info = CertInfo {
        subject: leaf.subject().to_string(),
        issuer: leaf.issuer().to_string(),
        self_signed: leaf.subject() == leaf.issuer(),
        names,
        not_before_unix: nb,
        not_after_unix: na,
        sha256_fingerprint: fp.certificate,
        key_sha256: fp.key,
    };
    let ips = info.names.iter().filter_map(|n| n.parse().ok()).collect();
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|_| "the private key does not belong to the certificate".to_string())?;
    Ok(Loaded {
        key: Arc::new(ck),
        info,
        ips,
        origin,
    })
}

/// The SHA-256 fingerprints of a certificate, lowercase hex: the ones [`CertInfo`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprints {
    /// Of the certificate's DER bytes (what a browser shows as its SHA-256 fingerprint).
    pub certificate: String,
    /// Of its public key (SubjectPublicKeyInfo), the same across the node's re-issues.
    pub key: String,
}

fn fingerprints(der: &[u8], leaf: &x509_parser::certificate::X509Certificate<'_>) -> Fingerprints {
    Fingerprints {
        certificate: crate::files::sha256_hex(der),
        key: crate::files::sha256_hex(leaf.public_key().raw),
    }
}

/// The fingerprints of the first certificate (the leaf) in a PEM file such as
/// `state_dir/tls/cert.pem`, for showing where the API cannot be asked (the appliance's
/// console). Checks nothing but that it parses.
pub fn pem_fingerprints(cert_pem: &[u8]) -> std::result::Result<Fingerprints, String> {
    let der = CertificateDer::pem_slice_iter(cert_pem)
        .next()
        .ok_or("no certificate found (expected a PEM 'BEGIN CERTIFICATE' block)")?
        .map_err(|e| format!("the certificate is not valid PEM: {e}"))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    Ok(fingerprints(&der, &leaf))
}

/// A fresh self-signed certificate (PEM cert, PEM key) for this host's names and addresses.
pub fn self_signed() -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate().map_err(|e| ApiError::Certificate(e.to_string()))?;
    Ok((issue(&key, node_names(&[]))?, key.serialize_pem()))
}

/// A self-signed certificate (PEM) for `names` under [`GENERATED_SUBJECT`], signed by `key`.
fn issue(key: &rcgen::KeyPair, names: Vec<String>) -> Result<String> {
    let cert_err = |e: rcgen::Error| ApiError::Certificate(e.to_string());
    let mut params = rcgen::CertificateParams::new(names).map_err(cert_err)?;
    // A fresh serial each time: rcgen's default is a hash of the key, the same for every
    // re-issue, and browsers refuse a certificate whose issuer and serial match a different
    // one they have seen (Firefox: SEC_ERROR_REUSED_ISSUER_AND_SERIAL).
    let mut serial = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut serial);
    serial[0] = (serial[0] & 0x7f) | 0x01;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    Ok(params.self_signed(key).map_err(cert_err)?.pem())
}

/// What a generated certificate names: the host name, `localhost`, the loopback addresses, the
/// host's own addresses, and `reached` (addresses clients reached the node on).
fn node_names(reached: &[IpAddr]) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Some(h) = hostname() {
        if !names.contains(&h) {
            names.insert(0, h);
        }
    }
    let reached = reached.iter().map(|a| a.to_string());
    for a in host_addresses().into_iter().chain(reached) {
        if !names.contains(&a) {
            names.push(a);
        }
    }
    names
}

/// An address the host's list ([`host_addresses`]) leaves out, so a re-issue keeps it once a
/// client reached the node on it.
fn reached_only(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback() || a.is_link_local(),
        IpAddr::V6(a) => a.is_loopback() || a.is_unicast_link_local(),
    }
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

    #[test]
    fn pem_fingerprints_are_the_ones_the_api_shows() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::open(dir.path()).unwrap();
        let check = |store: &CertStore| {
            let fp = pem_fingerprints(store.cert_pem().unwrap().as_bytes()).unwrap();
            let info = store.info();
            assert_eq!(fp.certificate, info.sha256_fingerprint);
            assert_eq!(fp.key, info.key_sha256);
            for h in [&fp.certificate, &fp.key] {
                assert_eq!(h.len(), 64, "{h}");
                assert!(h
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            }
            fp
        };
        let generated = check(&store);
        // A re-issue for a new address: another certificate, the same key.
        assert!(store.name_address("192.0.2.7".parse().unwrap()).unwrap());
        let reissued = check(&store);
        assert_ne!(reissued.certificate, generated.certificate);
        assert_eq!(reissued.key, generated.key);
        // A chain: the leaf (first block) counts, not what follows it.
        let (c, k) = self_signed().unwrap();
        let (other, _) = self_signed().unwrap();
        store
            .replace(format!("{c}{other}").as_bytes(), k.as_bytes())
            .unwrap();
        assert_eq!(check(&store), pem_fingerprints(c.as_bytes()).unwrap());
        assert_ne!(
            pem_fingerprints(other.as_bytes()),
            pem_fingerprints(c.as_bytes())
        );
        // Bad input is an error that says what is wrong.
        let e = pem_fingerprints(b"").unwrap_err();
        assert!(e.contains("no certificate found"), "{e}");
        let e = pem_fingerprints(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(e.contains("cannot be parsed"), "{e}");
    }

    /// Whether a client that trusts `trusted_pem` (as `cairn --ca-cert` does) accepts `served`
    /// from a server it reached at `ip`.
    fn client_accepts(trusted_pem: &str, served: &CertStore, ip: &str) -> Result<(), String> {
        use rustls::client::danger::ServerCertVerifier;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(trusted_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(ring_provider::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = served.current.read().key.cert[0].clone();
        let name = rustls::pki_types::ServerName::try_from(ip.to_string()).unwrap();
        let now = rustls::pki_types::UnixTime::now();
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], now)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_new_address_reissues_the_generated_certificate_with_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::open(dir.path()).unwrap();
        let before = store.info();
        let pinned = store.cert_pem().unwrap();
        let key_before = std::fs::read(dir.path().join("tls/key.pem")).unwrap();
        // 127.0.0.2 is not a /32 local route, so the certificate made at start leaves it out
        // and a client reaching the node there fails the name check.
        let new: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(!before.names.iter().any(|n| n == "127.0.0.2"), "{before:?}");
        let err = client_accepts(&pinned, &store, "127.0.0.2").unwrap_err();
        assert!(err.contains("not valid for name"), "{err}");
        assert!(store.needs_name(new));

        assert!(store.name_address(new).unwrap());
        let after = store.info();
        assert!(after.names.iter().any(|n| n == "127.0.0.2"), "{after:?}");
        assert!(after.names.iter().any(|n| n == "localhost"), "{after:?}");
        assert_ne!(after.sha256_fingerprint, before.sha256_fingerprint);
        assert_eq!(after.key_sha256, before.key_sha256);
        assert_eq!(after.subject, before.subject);
        assert_eq!(
            std::fs::read(dir.path().join("tls/key.pem")).unwrap(),
            key_before
        );
        // The client's saved (old) certificate still verifies the new one, now at the new
        // address too, and a second connection there changes nothing.
        client_accepts(&pinned, &store, "127.0.0.2").unwrap();
        client_accepts(&pinned, &store, "127.0.0.1").unwrap();
        assert!(!store.needs_name(new));
        assert!(!store.name_address(new).unwrap());
        // An IPv4-mapped address (a dual-stack listener) names the IPv4 one.
        let mapped: IpAddr = "::ffff:127.0.0.3".parse().unwrap();
        assert!(store.name_address(mapped).unwrap());
        let names = store.info().names;
        assert!(names.iter().any(|n| n == "127.0.0.3"), "{names:?}");
        assert!(names.iter().any(|n| n == "127.0.0.2"), "kept: {names:?}");
        // What is on disk is what is served, and a restart still knows it is the generated one.
        let again = CertStore::open(dir.path()).unwrap();
        assert_eq!(again.info(), store.info());
        assert!(again.name_address("127.0.0.4".parse().unwrap()).unwrap());
    }

    #[test]
    fn a_failed_reissue_keeps_the_certificate_and_is_not_retried_per_connection() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::open(dir.path()).unwrap();
        let before = store.info();
        std::fs::write(dir.path().join("tls/key.pem"), "not a key").unwrap();
        let new: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(store.needs_name(new));
        let err = store.name_address(new).unwrap_err().to_string();
        assert!(err.contains("stored key cannot be used"), "{err}");
        assert_eq!(store.info(), before);
        assert!(!store.needs_name(new), "not again for {RETRY_AFTER:?}");
        assert!(store.needs_name("127.0.0.3".parse().unwrap()));
    }

    #[test]
    fn an_uploaded_certificate_is_never_reissued() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::open(dir.path()).unwrap();
        // The upload is made the way an operator might: self-signed under rcgen's defaults.
        let (c, k) = self_signed().unwrap();
        let uploaded = store.replace(c.as_bytes(), k.as_bytes()).unwrap();
        let new: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(!store.needs_name(new));
        assert!(!store.name_address(new).unwrap());
        assert_eq!(store.info(), uploaded);
        assert_eq!(store.cert_pem().unwrap(), c);
        // Also after a restart: the origin is stored, not guessed from the subject.
        let again = CertStore::open(dir.path()).unwrap();
        assert!(!again.needs_name(new));
        assert!(!again.name_address(new).unwrap());
        assert_eq!(again.info(), uploaded);
        assert_eq!(again.cert_pem().unwrap(), c);
    }

    #[test]
    fn a_certificate_stored_before_origin_existed() {
        // Generated by an older version: rcgen's subject, no origin file -> re-issued.
        let dir = tempfile::tempdir().unwrap();
        drop(CertStore::open(dir.path()).unwrap());
        std::fs::remove_file(dir.path().join("tls/origin")).unwrap();
        let store = CertStore::open(dir.path()).unwrap();
        assert!(store.name_address("127.0.0.2".parse().unwrap()).unwrap());
        // Uploaded by an older version (another subject), no origin file -> left alone.
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["node.example".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "node.example");
        let cert = params.self_signed(&key).unwrap().pem();
        write_atomic(&dir.path().join("tls/cert.pem"), cert.as_bytes()).unwrap();
        write_atomic(
            &dir.path().join("tls/key.pem"),
            key.serialize_pem().as_bytes(),
        )
        .unwrap();
        let store = CertStore::open(dir.path()).unwrap();
        assert!(!store.name_address("127.0.0.2".parse().unwrap()).unwrap());
        assert_eq!(store.cert_pem().unwrap(), cert);
    }
}
