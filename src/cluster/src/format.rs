//! The versioned encodings of what raft keeps on disk and sends to peers: snapshot data (the
//! [`ClusterState`] and the request log), log entries, and [`Command`] / [`CommandResult`]
//! values inside the peer protocol.
//!
//! # Formats
//! - **v1** (frozen, read only; [`v1`]): bincode of the types as they were at commit ff0dd6f.
//!   bincode is not self-describing, so one added field made every older snapshot and log
//!   entry unreadable. v1 is read through frozen copies of those types and migrated.
//! - **v2** (written now): JSON (serde_json), behind an explicit version header:
//!   - snapshot data: `"CAIRN-SD" | u16 version | JSON {"state", "requests"}`;
//!   - a log entry record (kind 6 in the log store): `u16 version | JSON(entry)`;
//!   - a `Command` or `CommandResult` inside a binary encoding (the bincode peer protocol:
//!     append-entries, forwarded proposals): a byte string `u16 version | JSON(value)`, padded
//!     with spaces to [`MIN_VALUE_BYTES`]. In a human-readable encoding (JSON, so inside the
//!     above) the value is written inline.
//!
//! Why JSON rather than a versioned bincode with hand-written migrations: it names every field
//! and variant, so an additive change needs no migration code at all (serde fills a missing
//! field from its `#[serde(default)]`), and a change that is not additive fails with the name of
//! what does not fit. serde_json is already a dependency, bounds its recursion (a crafted nest
//! of commands cannot overflow the stack), keeps u64 exact, and a snapshot can be read by a
//! person. The cost (bigger, slower than bincode) is small for metadata commands; snapshots are
//! bounded by [`crate::sm_store::MAX_SNAPSHOT_BYTES`] either way.
//!
//! # The compatibility rule (for every type reachable from `ClusterState` and `Command`)
//! Allowed without a version bump:
//! - add a struct field (or a field of a struct variant) **with `#[serde(default)]`**, whose
//!   default means "what older binaries did";
//! - add an enum variant (anywhere: variants are matched by name, not position);
//! - add a new `Command` for new behaviour.
//!
//! Needs a new [`FORMAT_VERSION`] and a migration in [`decode_state`] / [`decode_entry`]:
//! renaming or removing a field or variant, changing a field's type or meaning.
//! Changing how `apply` treats an existing command is a format change too (replicas on
//! different binaries would diverge): give the new behaviour a new command instead.
//!
//! Mixed versions: every struct is `deny_unknown_fields` and unknown variants are refused, so
//! an older binary that meets a field or command it does not know (from a newer leader or a
//! newer snapshot) fails that entry with an error naming it, instead of applying a command
//! with the field dropped (which would make its state differ from the other replicas'). A
//! version newer than [`FORMAT_VERSION`] is refused the same way. Once every member runs the
//! newer binary, the cluster proceeds. Between a v1 binary and this one: a v1 node refuses the
//! new log kind and snapshot image by name, and every command byte string as an invalid
//! variant index (see [`MIN_VALUE_BYTES`]); this one refuses v1 commands from the wire (wrong
//! version or length). Neither applies what it cannot read.
//!
//! Must never: decode without a bound, panic on any input, or accept bytes it cannot read
//! completely (trailing bytes, unknown fields).
use std::fmt;

use serde::de::{DeserializeOwned, Error as _, SeqAccess, Visitor};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::dedup::RequestLog;
use crate::state::{ClusterState, Command, CommandResult};
use crate::types::Entry;

mod v1;

/// The format written by this binary. Readable: v1 (migrated) and v2.
pub const FORMAT_VERSION: u16 = 2;
/// Snapshot data in format 2 or later starts with this, then the u16 version.
pub const STATE_MAGIC: &[u8; 8] = b"CAIRN-SD";
/// Largest command or result accepted as a byte string inside a binary encoding.
pub const MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;
/// Shortest such byte string (JSON padded with spaces). A v1 binary reads the string's length
/// where it expects the command's variant index (at most 24), so it refuses every string at
/// least this long with "invalid variant index" instead of misreading it as another command.
pub const MIN_VALUE_BYTES: usize = 32;

fn check_version(what: &str, v: u16) -> Result<(), String> {
    if v == FORMAT_VERSION {
        return Ok(());
    }
    if v > FORMAT_VERSION {
        return Err(format!(
            "{what} is in format version {v}; this binary reads up to {FORMAT_VERSION} \
             (written by a newer cairn: upgrade this node)"
        ));
    }
    Err(format!(
        "{what} has format version {v}, which is never written in this position"
    ))
}

fn split_version<'a>(what: &str, b: &'a [u8]) -> Result<(u16, &'a [u8]), String> {
    match b {
        [lo, hi, rest @ ..] => Ok((u16::from_le_bytes([*lo, *hi]), rest)),
        _ => Err(format!(
            "{what}: {} bytes, too short for a version",
            b.len()
        )),
    }
}

fn json_de<T: DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, String> {
    serde_json::from_slice(b).map_err(|e| format!("{what}: {e}"))
}

fn json_ser<T: Serialize + ?Sized>(what: &str, v: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(v).map_err(|e| format!("{what}: {e}"))
}

/// Moves a value between type versions through JSON (field and variant names): the additive
/// rule above, applied to the frozen v1 types.
fn migrate<T: Serialize, U: DeserializeOwned>(v: &T, what: &str) -> Result<U, String> {
    let json = json_ser(what, v)?;
    json_de(&format!("migrating {what}"), &json)
}

#[derive(Serialize)]
struct StateRef<'a> {
    state: &'a ClusterState,
    requests: &'a RequestLog,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateDoc {
    state: ClusterState,
    #[serde(default)]
    requests: RequestLog,
}

/// Snapshot data in the current format.
pub fn encode_state(state: &ClusterState, requests: &RequestLog) -> Result<Vec<u8>, String> {
    let mut out = STATE_MAGIC.to_vec();
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&json_ser("snapshot data", &StateRef { state, requests })?);
    Ok(out)
}

/// Snapshot data in any readable format (v2, or v1 migrated). `limit` bounds a v1 decode.
/// v1 data never starts with [`STATE_MAGIC`] in practice: it would need a cluster id of 67
/// bytes beginning "AIRN-SD".
pub fn decode_state(b: &[u8], limit: u64) -> Result<(ClusterState, RequestLog), String> {
    let Some(rest) = b.strip_prefix(STATE_MAGIC.as_slice()) else {
        return v1::decode_state(b, limit).map_err(|e| format!("snapshot data: {e}"));
    };
    let (v, json) = split_version("snapshot data", rest)?;
    check_version("snapshot data", v)?;
    let doc: StateDoc = json_de("snapshot data (format 2, JSON)", json)?;
    Ok((doc.state, doc.requests))
}

/// A log entry record's payload in the current format.
pub fn encode_entry(e: &Entry) -> Result<Vec<u8>, String> {
    let mut out = FORMAT_VERSION.to_le_bytes().to_vec();
    out.extend_from_slice(&json_ser("log entry", e)?);
    Ok(out)
}

/// A log entry record's payload in the current format (log record kind 6).
pub fn decode_entry(b: &[u8]) -> Result<Entry, String> {
    let (v, json) = split_version("log entry", b)?;
    check_version("log entry", v)?;
    json_de("log entry (format 2, JSON)", json)
}

/// A log entry record's payload in format v1 (log record kind 1), migrated.
pub fn decode_entry_v1(b: &[u8], limit: u64) -> Result<Entry, String> {
    v1::decode_entry(b, limit)
}

/// Accepts a byte string however the binary encoding presents it.
struct Bytes;

impl<'de> Visitor<'de> for Bytes {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a versioned byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::new();
        while let Some(b) = seq.next_element::<u8>()? {
            if out.len() >= MAX_VALUE_BYTES {
                return Err(A::Error::custom("versioned value too large"));
            }
            out.push(b);
        }
        Ok(out)
    }
}

/// `Command` and `CommandResult` carry `#[serde(remote = "Self")]`: serde derives their field
/// by field (de)serialization as inherent functions, and these impls choose: inline in a
/// human-readable encoding, a versioned JSON byte string in a binary one.
macro_rules! versioned_serde {
    ($ty:ident, $what:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    return $ty::serialize(self, s);
                }
                let mut out = FORMAT_VERSION.to_le_bytes().to_vec();
                out.extend_from_slice(&json_ser($what, self).map_err(S::Error::custom)?);
                if out.len() < MIN_VALUE_BYTES {
                    out.resize(MIN_VALUE_BYTES, b' ');
                }
                s.serialize_bytes(&out)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                if d.is_human_readable() {
                    return $ty::deserialize(d);
                }
                let b = d.deserialize_bytes(Bytes)?;
                if b.len() > MAX_VALUE_BYTES {
                    return Err(D::Error::custom(concat!($what, ": too large")));
                }
                let (v, json) = split_version($what, &b).map_err(D::Error::custom)?;
                check_version($what, v).map_err(D::Error::custom)?;
                json_de(concat!($what, " (format 2, JSON)"), json).map_err(D::Error::custom)
            }
        }
    };
}

versioned_serde!(Command, "cluster command");
versioned_serde!(CommandResult, "command result");

#[cfg(test)]
mod tests;
