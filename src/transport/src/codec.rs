//! Typed messages on the wire: bincode with a hard size limit on every decode.
//!
//! Peer bytes are hostile: decode is always bounded by the caller's limit (so a length field
//! inside the message cannot make us allocate gigabytes) and rejects trailing bytes.
use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

fn options(limit_bytes: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(limit_bytes)
        .with_little_endian()
        .with_varint_encoding()
        .reject_trailing_bytes()
}

/// Encodes a message; fails if it would be larger than `limit_bytes`.
pub fn encode<T: Serialize>(msg: &T, limit_bytes: u64) -> Result<Vec<u8>, Error> {
    options(limit_bytes)
        .serialize(msg)
        .map_err(|e| Error::Encode(e.to_string()))
}

/// Like [`encode`], appending to `out` (a caller's reused buffer).
pub(crate) fn encode_into<T: Serialize>(
    msg: &T,
    out: &mut Vec<u8>,
    limit_bytes: u64,
) -> Result<(), Error> {
    options(limit_bytes)
        .serialize_into(out, msg)
        .map_err(|e| Error::Encode(e.to_string()))
}

/// Decodes a message from untrusted bytes; never allocates more than `limit_bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit_bytes: u64) -> Result<T, Error> {
    if bytes.len() as u64 > limit_bytes {
        return Err(Error::Decode(format!(
            "message of {} bytes exceeds the limit of {limit_bytes}",
            bytes.len()
        )));
    }
    options(limit_bytes)
        .deserialize(bytes)
        .map_err(|e| Error::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    enum Msg {
        Ping(u64),
        Blob { name: String, data: Vec<u8> },
        List(Vec<(u32, Option<String>)>),
    }

    #[test]
    fn roundtrip_and_limit() {
        let m = Msg::Blob {
            name: "x".into(),
            data: vec![7; 100],
        };
        let b = encode(&m, 1 << 20).unwrap();
        assert_eq!(decode::<Msg>(&b, 1 << 20).unwrap(), m);
        assert!(matches!(encode(&m, 10), Err(Error::Encode(_))));
        assert!(matches!(decode::<Msg>(&b, 10), Err(Error::Decode(_))));
    }

    #[test]
    fn huge_length_prefix_is_rejected_without_allocating() {
        // Variant 1 (Blob), then a string length claiming 2^62 bytes.
        let mut b = vec![1u8, 0xff];
        b.extend_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(matches!(decode::<Msg>(&b, 1 << 20), Err(Error::Decode(_))));
    }

    #[test]
    fn trailing_bytes_rejected() {
        let mut b = encode(&Msg::Ping(3), 1024).unwrap();
        b.push(0);
        assert!(decode::<Msg>(&b, 1024).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Msg>(&bytes, 4096);
        }
    }
}
