//! The node's own configuration record, kept on the pool disks (never on the boot medium).
//!
//! Where: a small virtual disk named [`RECORD_VDISK`] in the node's own pool, so it lives on the
//! pool disks, is replicated like any data, and needs nothing from the engine's on-disk layout.
//! Format of its first bytes: magic `CAIRNCFG`, u32 format version, u32 JSON length, u32 crc32c
//! of the JSON (all little-endian), then the JSON of [`NodeRecord`].
//!
//! Owns the encoding. Must never accept a record whose magic, length or checksum is wrong: a
//! damaged record reads as "not configured" with a reason, never as a half-configured node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::net::{ClusterNet, NetConfig};

/// The virtual disk that holds the record.
pub const RECORD_VDISK: &str = "cairn-node-config";
pub const RECORD_VDISK_BYTES: u64 = 1 << 20;
const MAGIC: &[u8; 8] = b"CAIRNCFG";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 20;
/// Largest JSON a record may hold.
pub const MAX_RECORD_BYTES: usize = RECORD_VDISK_BYTES as usize - HEADER_BYTES;

/// Files of the HTTPS API's state directory the record carries across reboots (the appliance's
/// filesystems are all in RAM). `tls/origin` says whether the certificate is the node's own
/// (re-issued when its address changes) or an upload (never touched).
pub const API_STATE_FILES: [&str; 5] = [
    "users.json",
    "tokens.json",
    "tls/cert.pem",
    "tls/key.pem",
    "tls/origin",
];

/// Who this node is and how it is set up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: u64,
    pub hostname: String,
    pub net: NetConfig,
    /// The cluster link, when the cluster's traffic has a link of its own (absent in records
    /// written before it existed: the cluster then uses the management address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_net: Option<ClusterNet>,
    /// "created" (this node created the cluster) or the address it joined.
    pub cluster: String,
    pub created_unix: u64,
    /// API state files (relative path -> contents).
    #[serde(default)]
    pub api_files: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("no configuration record (magic missing)")]
    Missing,
    #[error("configuration record damaged: {0}")]
    Damaged(String),
    #[error("configuration record too large: {0} bytes (max {MAX_RECORD_BYTES})")]
    TooLarge(usize),
}

pub fn encode(rec: &NodeRecord) -> Result<Vec<u8>, RecordError> {
    let json = serde_json::to_vec(rec).map_err(|e| RecordError::Damaged(e.to_string()))?;
    if json.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge(json.len()));
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    out.extend_from_slice(&json);
    // Round up to whole 4 KiB blocks (the engine's fast path) with zeros.
    out.resize(out.len().div_ceil(4096) * 4096, 0);
    Ok(out)
}

pub fn decode(b: &[u8]) -> Result<NodeRecord, RecordError> {
    if b.len() < HEADER_BYTES || &b[..8] != MAGIC {
        return Err(RecordError::Missing);
    }
    let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let (version, len, crc) = (word(8), word(12) as usize, word(16));
    if version != VERSION {
        return Err(RecordError::Damaged(format!(
            "unknown format version {version}"
        )));
    }
    if len > MAX_RECORD_BYTES || HEADER_BYTES + len > b.len() {
        return Err(RecordError::Damaged(format!("length {len} out of bounds")));
    }
    let json = &b[HEADER_BYTES..HEADER_BYTES + len];
    if crc32c::crc32c(json) != crc {
        return Err(RecordError::Damaged("checksum mismatch".into()));
    }
    serde_json::from_slice(json).map_err(|e| RecordError::Damaged(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::NetMode;

    fn rec() -> NodeRecord {
        NodeRecord {
            node_id: 42,
            hostname: "node1".into(),
            net: NetConfig {
                iface: "eth0".into(),
                vlan: Some(5),
                mode: NetMode::Dhcp,
            },
            cluster_net: Some(ClusterNet {
                iface: "eth1".into(),
                addr: "10.10.0.1".parse().unwrap(),
                prefix: 24,
            }),
            cluster: "created".into(),
            created_unix: 1,
            api_files: [("users.json".to_string(), "{}".to_string())].into(),
        }
    }

    #[test]
    fn round_trip_and_every_damage_is_refused() {
        let b = encode(&rec()).unwrap();
        assert_eq!(b.len() % 4096, 0);
        assert_eq!(decode(&b).unwrap(), rec());
        assert_eq!(decode(&vec![0u8; 4096]), Err(RecordError::Missing));
        let mut flipped = b.clone();
        flipped[HEADER_BYTES + 3] ^= 1;
        assert_eq!(
            decode(&flipped),
            Err(RecordError::Damaged("checksum mismatch".into()))
        );
        let mut long = b.clone();
        long[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&long), Err(RecordError::Damaged(_))));
        assert!(matches!(decode(&b[..10]), Err(RecordError::Missing)));
    }

    #[test]
    fn a_record_without_a_cluster_link_still_reads() {
        // As written before the cluster link existed.
        let mut old = rec();
        old.cluster_net = None;
        let json = serde_json::to_string(&old).unwrap();
        assert!(!json.contains("cluster_net"));
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(json.len() as u32).to_le_bytes());
        b.extend_from_slice(&crc32c::crc32c(json.as_bytes()).to_le_bytes());
        b.extend_from_slice(json.as_bytes());
        assert_eq!(decode(&b).unwrap(), old);
    }
}
