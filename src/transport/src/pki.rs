//! The cluster PKI: a CA made when the cluster is created, node certificates it issues, and
//! reading a peer's node id back out of its (already verified) certificate.
//!
//! A node certificate carries two DNS names: `node-<id>.cairn` (so a client can insist on talking
//! to one particular node) and [`CLUSTER_SERVER_NAME`] (any member of this cluster). Trust comes
//! only from the CA: the names are meaningless on a certificate another CA signed.
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, NodeId};

/// The DNS name every member certificate carries.
pub const CLUSTER_SERVER_NAME: &str = "member.cairn";

/// The DNS name that identifies node `id`.
pub fn node_server_name(id: NodeId) -> ServerName<'static> {
    ServerName::try_from(format!("node-{id}.cairn")).expect("node names are valid DNS names")
}

fn cert_err(e: impl std::fmt::Display) -> Error {
    Error::Cert(e.to_string())
}

/// The cluster certificate authority: its certificate and signing key. The key is cluster
/// secret: it lives only in the replicated cluster state, which only members can read.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterCa {
    pub cluster_id: String,
    pub cert_der: Vec<u8>,
    key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster_id", &self.cluster_id)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// The CA's parameters are a pure function of the cluster id so that the issuer can be rebuilt
/// from the stored key alone (the issuer name must match the CA certificate's subject).
fn ca_params(cluster_id: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("cairn cluster {cluster_id}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2120, 1, 1);
    params
}

impl ClusterCa {
    /// Creates a new CA (at cluster creation).
    pub fn generate(cluster_id: &str) -> Result<ClusterCa, Error> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = ca_params(cluster_id).self_signed(&key).map_err(cert_err)?;
        Ok(ClusterCa {
            cluster_id: cluster_id.to_string(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        })
    }

    /// SHA-256 of the CA certificate, lower-case hex: what a join token carries so the joiner
    /// can tell the real cluster from an impostor.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.cert_der)
    }

    /// Issues a certificate and fresh key for node `node_id`.
    pub fn issue(&self, node_id: NodeId) -> Result<NodeIdentity, Error> {
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(cert_err)?;
        let issuer = Issuer::new(ca_params(&self.cluster_id), ca_key);
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::new(vec![
            format!("node-{node_id}.cairn"),
            CLUSTER_SERVER_NAME.to_string(),
        ])
        .map_err(cert_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("node-{node_id}"));
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2120, 1, 1);
        let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;
        Ok(NodeIdentity {
            node_id,
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            ca_cert_der: self.cert_der.clone(),
        })
    }
}

/// Lower-case hex SHA-256 of a DER certificate.
pub fn fingerprint_of(cert_der: &[u8]) -> String {
    Sha256::digest(cert_der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a node needs to speak on the cluster network: its certificate and key, and the CA it
/// trusts.
#[derive(Clone, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub node_id: NodeId,
    pub cert_der: Vec<u8>,
    key_der: Vec<u8>,
    pub ca_cert_der: Vec<u8>,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Builds an identity from parts (for tests that need a certificate the cluster did not
    /// issue, and for loading one from disk).
    pub fn from_parts(
        node_id: NodeId,
        cert_der: Vec<u8>,
        key_der: Vec<u8>,
        ca_cert_der: Vec<u8>,
    ) -> Self {
        NodeIdentity {
            node_id,
            cert_der,
            key_der,
            ca_cert_der,
        }
    }

    /// Our chain: node certificate then CA certificate.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![
            CertificateDer::from(self.cert_der.clone()),
            CertificateDer::from(self.ca_cert_der.clone()),
        ]
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    pub fn ca_fingerprint(&self) -> String {
        fingerprint_of(&self.ca_cert_der)
    }
}

/// Reads the node id out of a peer certificate (which rustls has already verified against the
/// cluster CA). Looks for the `node-<id>.cairn` DNS name.
pub fn node_id_from_cert(cert_der: &[u8]) -> Result<NodeId, Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(cert_err)?;
    let san = cert
        .subject_alternative_name()
        .map_err(cert_err)?
        .ok_or_else(|| Error::Cert("peer certificate has no subject alt name".into()))?;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
            if let Some(id) = dns
                .strip_prefix("node-")
                .and_then(|rest| rest.strip_suffix(".cairn"))
                .and_then(|id| id.parse::<NodeId>().ok())
            {
                return Ok(id);
            }
        }
    }
    Err(Error::Cert("peer certificate names no node".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_and_read_back_node_id() {
        let ca = ClusterCa::generate("c1").unwrap();
        let id = ca.issue(42).unwrap();
        assert_eq!(node_id_from_cert(&id.cert_der).unwrap(), 42);
        assert_eq!(id.ca_fingerprint(), ca.fingerprint());
        assert_eq!(ca.fingerprint().len(), 64);
        let other = ClusterCa::generate("c1").unwrap();
        assert_ne!(other.fingerprint(), ca.fingerprint());
        assert!(node_id_from_cert(b"garbage").is_err());
    }
}
