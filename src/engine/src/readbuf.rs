//! `ReadData`: what `VdiskHandle::read_owned` returns — the engine's own verified read
//! buffers, in order, so a caller that only passes the bytes on (the NBD server writing them to
//! a socket) needs no copy into a buffer of its own.
//!
//! Owns only the container: it never reads, verifies or changes data, and every byte it hands
//! out was verified by the read that produced it.

use std::ops::Range;

use blockdev::AlignedBuf;

/// One piece of a read: a range of an engine buffer. `AsRef<[u8]>`, `Send` and `'static`, so
/// it can back a `bytes::Bytes` (`Bytes::from_owner`) without a copy.
pub struct ReadPart {
    buf: AlignedBuf,
    range: Range<usize>,
}

impl ReadPart {
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }
}

impl AsRef<[u8]> for ReadPart {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// The bytes of one read, as consecutive parts (one per chunk the read covered; a read inside
/// one chunk, the common case, keeps its part inline: no allocation).
#[derive(Default)]
pub struct ReadData {
    parts: smallvec::SmallVec<[ReadPart; 1]>,
    len: usize,
}

impl std::fmt::Debug for ReadData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ReadData({} bytes in {} parts)",
            self.len,
            self.parts.len()
        )
    }
}

impl ReadData {
    /// Append `buf[range]` (`range` lies inside `buf`; checked by the caller).
    pub(crate) fn push(&mut self, buf: AlignedBuf, range: Range<usize>) {
        debug_assert!(range.start <= range.end && range.end <= buf.len());
        self.len += range.len();
        if !range.is_empty() {
            self.parts.push(ReadPart { buf, range });
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The parts in order; their concatenation is the data.
    pub fn parts(&self) -> impl Iterator<Item = &[u8]> {
        self.parts.iter().map(ReadPart::as_slice)
    }

    pub fn into_parts(self) -> Vec<ReadPart> {
        self.parts.into_vec()
    }

    /// Copy the data into `out` (exactly `len()` bytes, else nothing is copied and false).
    pub fn copy_to(&self, out: &mut [u8]) -> bool {
        if out.len() != self.len {
            return false;
        }
        let mut at = 0;
        for p in self.parts() {
            out[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        true
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for p in self.parts() {
            v.extend_from_slice(p);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_concatenate_in_order() {
        let mut d = ReadData::default();
        d.push(AlignedBuf::from_slice(&[1u8; 4096]), 100..4096);
        d.push(AlignedBuf::from_slice(&[2u8; 4096]), 0..0);
        d.push(AlignedBuf::from_slice(&[3u8; 4096]), 0..10);
        assert_eq!(d.len(), 3996 + 10);
        assert_eq!(d.parts().count(), 2, "empty parts are dropped");
        let v = d.to_vec();
        assert!(v[..3996].iter().all(|&b| b == 1) && v[3996..].iter().all(|&b| b == 3));
        let mut out = vec![0u8; d.len()];
        assert!(d.copy_to(&mut out));
        assert_eq!(out, v);
        assert!(!d.copy_to(&mut [0u8; 5]), "wrong length refused");
    }
}
