//! TLS 1.3 configurations. Members: mutual TLS where each side accepts only certificates chaining
//! to the cluster CA (and nothing else: no system roots). Joiners: a node that has no
//! certificate yet talks to a member's join endpoint with server-only TLS, trusting the member
//! only if it presents the CA whose fingerprint the join token carries.
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::pki::fingerprint_of;
use crate::{Error, NodeIdentity};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

fn ca_roots(ca_cert_der: &[u8]) -> Result<Arc<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_cert_der.to_vec()))
        .map_err(tls_err)?;
    Ok(Arc::new(roots))
}

/// Server side of member-to-member mutual TLS.
pub fn server_tls_config(id: &NodeIdentity) -> Result<Arc<rustls::ServerConfig>, Error> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(ca_roots(&id.ca_cert_der)?, provider())
            .build()
            .map_err(tls_err)?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain(), id.key())
        .map_err(tls_err)?;
    Ok(Arc::new(cfg))
}

/// Client side of member-to-member mutual TLS.
pub fn client_tls_config(id: &NodeIdentity) -> Result<Arc<rustls::ClientConfig>, Error> {
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(ca_roots(&id.ca_cert_der)?)
        .with_client_auth_cert(id.chain(), id.key())
        .map_err(tls_err)?;
    Ok(Arc::new(cfg))
}

/// Server side of the join endpoint: no client certificate (the joiner has none yet); the
/// request itself must carry a valid join token.
pub fn join_server_tls_config(id: &NodeIdentity) -> Result<Arc<rustls::ServerConfig>, Error> {
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(id.chain(), id.key())
        .map_err(tls_err)?;
    Ok(Arc::new(cfg))
}

/// Client side of the join endpoint: trusts a server only if the CA it presents has the
/// fingerprint from the join token and its certificate chains to that CA.
pub fn join_client_tls_config(ca_fingerprint: &str) -> Result<Arc<rustls::ClientConfig>, Error> {
    let verifier = Arc::new(PinnedCaVerifier {
        fingerprint: ca_fingerprint.to_ascii_lowercase(),
        provider: provider(),
    });
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Verifies a server chain `[node cert, CA cert]` where the CA is pinned by fingerprint.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint_of(c) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General("server did not present the pinned cluster CA".into())
            })?;
        let roots = ca_roots(ca).map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = WebPkiServerVerifier::builder_with_provider(roots, self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
