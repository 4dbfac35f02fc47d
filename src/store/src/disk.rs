//! Headers of the metadata written after format: journal batches, checkpoints, meta slots.
//!
//! Owns their byte formats and validation. Every header carries the format nonce and a crc;
//! a decoder returns `None` (or an error) for anything that is not exactly a header we wrote,
//! and never panics on arbitrary bytes.

use crate::codec::{Reader, Writer};
use crate::layout::BS;
use crate::maps::{Maps, Version, TOMB};
use crate::ObjectId;

pub(crate) const BATCH_MAGIC: &[u8; 8] = b"CRNJRNL1";
pub(crate) const CKPT_MAGIC: &[u8; 8] = b"CRNCKPT1";
pub(crate) const META_MAGIC: &[u8; 8] = b"CRNMETA1";
/// Bytes before the payload of a journal batch.
pub(crate) const BATCH_HDR: usize = 64;

/// A journal batch header. The crc covers the header (without the crc field) and the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchHdr {
    pub nonce: u64,
    pub first_seq: u64,
    pub nrecs: u32,
    pub payload_len: u32,
    /// crc of the previous batch (or the checkpoint's chain value): ties batches into one
    /// sequence so a stale batch after a torn one can never be picked up.
    pub prev_chain: u32,
    pub crc: u32,
}

impl BatchHdr {
    fn head_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(BATCH_MAGIC);
        w.u64(self.nonce);
        w.u64(self.first_seq);
        w.u32(self.nrecs);
        w.u32(self.payload_len);
        w.u32(self.prev_chain);
        w.buf
    }

    /// A whole batch (header + payload, padded to blocks); returns the bytes and the crc.
    pub fn build(
        nonce: u64,
        first_seq: u64,
        nrecs: u32,
        prev_chain: u32,
        payload: &[u8],
    ) -> (Vec<u8>, u32) {
        let mut h = BatchHdr {
            nonce,
            first_seq,
            nrecs,
            payload_len: payload.len() as u32,
            prev_chain,
            crc: 0,
        };
        let head = h.head_bytes();
        h.crc = crc32c::crc32c_append(crc32c::crc32c(&head), payload);
        let mut out = head;
        out.extend_from_slice(&h.crc.to_le_bytes());
        out.resize(BATCH_HDR, 0);
        out.extend_from_slice(payload);
        let len = (out.len() as u64).div_ceil(BS) * BS;
        out.resize(len as usize, 0);
        (out, h.crc)
    }

    /// Parse a header from the first block of a batch (crc not yet checkable).
    pub fn parse(b: &[u8], nonce: u64) -> Option<BatchHdr> {
        if b.len() < BATCH_HDR || &b[..8] != BATCH_MAGIC {
            return None;
        }
        let mut r = Reader::new(&b[8..]);
        let h = BatchHdr {
            nonce: r.u64().ok()?,
            first_seq: r.u64().ok()?,
            nrecs: r.u32().ok()?,
            payload_len: r.u32().ok()?,
            prev_chain: r.u32().ok()?,
            crc: r.u32().ok()?,
        };
        (h.nonce == nonce).then_some(h)
    }

    pub fn total_blocks(&self) -> u64 {
        (BATCH_HDR as u64 + u64::from(self.payload_len)).div_ceil(BS)
    }

    /// Check the crc against the full batch bytes.
    pub fn verify(&self, whole: &[u8]) -> bool {
        let end = BATCH_HDR + self.payload_len as usize;
        if whole.len() < end {
            return false;
        }
        let head = self.head_bytes();
        crc32c::crc32c_append(crc32c::crc32c(&head), &whole[BATCH_HDR..end]) == self.crc
    }
}

/// A checkpoint header (first block of a slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CkptHdr {
    pub nonce: u64,
    pub ckpt_seq: u64,
    /// Sequence number of the first journal record after this checkpoint.
    pub next_seq: u64,
    /// Journal ring position (in blocks) where that record's batch starts.
    pub journal_pos: u64,
    pub chain: u32,
    pub nentries: u64,
    pub payload_crc: u32,
}

impl CkptHdr {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(CKPT_MAGIC);
        w.u64(self.nonce);
        w.u64(self.ckpt_seq);
        w.u64(self.next_seq);
        w.u64(self.journal_pos);
        w.u32(self.chain);
        w.u64(self.nentries);
        w.u32(self.payload_crc);
        let crc = crc32c::crc32c(&w.buf);
        w.u32(crc);
        w.buf.resize(BS as usize, 0);
        w.buf
    }

    pub fn decode(b: &[u8], nonce: u64) -> Option<CkptHdr> {
        if b.len() < 64 || &b[..8] != CKPT_MAGIC {
            return None;
        }
        let mut r = Reader::new(&b[8..]);
        let h = CkptHdr {
            nonce: r.u64().ok()?,
            ckpt_seq: r.u64().ok()?,
            next_seq: r.u64().ok()?,
            journal_pos: r.u64().ok()?,
            chain: r.u32().ok()?,
            nentries: r.u64().ok()?,
            payload_crc: r.u32().ok()?,
        };
        let crc = r.u32().ok()?;
        (crc32c::crc32c(&b[..56]) == crc && h.nonce == nonce).then_some(h)
    }
}

/// Encode the maps as sorted entries (vdisk, chunk, block, gen, phys, crc).
pub(crate) fn encode_maps(maps: &Maps) -> (Vec<u8>, u64) {
    let mut objs: Vec<&ObjectId> = maps.objs.keys().collect();
    objs.sort_unstable();
    let mut w = Writer::default();
    w.buf
        .reserve((maps.nversions * crate::layout::CKPT_ENTRY_BYTES) as usize);
    let mut n = 0u64;
    for o in objs {
        for (b, vs) in &maps.objs[o] {
            for v in vs {
                w.obj(*o);
                w.u64(*b);
                w.u64(v.gen);
                w.u64(v.phys);
                w.u32(v.crc);
                n += 1;
            }
        }
    }
    (w.buf, n)
}

/// Rebuild maps from checkpoint entries, refusing anything a correct writer cannot produce.
pub(crate) fn decode_maps(
    payload: &[u8],
    nentries: u64,
    data_blocks: u64,
    cap: u64,
) -> Result<Maps, String> {
    if nentries > cap
        || nentries.saturating_mul(crate::layout::CKPT_ENTRY_BYTES) > payload.len() as u64
    {
        return Err(format!("checkpoint claims {nentries} entries"));
    }
    let mut maps = Maps::new(data_blocks);
    let mut r = Reader::new(payload);
    let mut prev: Option<(ObjectId, u64, u64)> = None;
    for _ in 0..nentries {
        let obj = r.obj()?;
        let block = r.u64()?;
        let gen = r.u64()?;
        let phys = r.u64()?;
        let crc = r.u32()?;
        if gen == 0 || (phys != TOMB && phys >= data_blocks) {
            return Err(format!(
                "bad checkpoint entry {obj} block {block} gen {gen} phys {phys}"
            ));
        }
        let key = (obj, block, gen);
        if prev.is_some_and(|p| p >= key) {
            return Err(format!(
                "checkpoint entries out of order at {obj} block {block}"
            ));
        }
        prev = Some(key);
        if phys != TOMB {
            let rc = &mut maps.refs[phys as usize];
            *rc = rc.checked_add(1).ok_or("refcount overflow in checkpoint")?;
        }
        maps.objs
            .entry(obj)
            .or_default()
            .entry(block)
            .or_default()
            .push(Version { gen, phys, crc });
        maps.nversions += 1;
    }
    Ok(maps)
}

/// A meta slot header; the crc covers header fields and the blob.
pub(crate) fn encode_meta(nonce: u64, seq: u64, blob: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes(META_MAGIC);
    w.u64(nonce);
    w.u64(seq);
    w.u32(blob.len() as u32);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&w.buf), blob);
    w.u32(crc);
    w.buf.resize(BS as usize, 0);
    w.bytes(blob);
    let len = (w.buf.len() as u64).div_ceil(BS) * BS;
    w.buf.resize(len as usize, 0);
    w.buf
}

/// Parse a meta header: (seq, blob length, crc).
pub(crate) fn parse_meta_hdr(b: &[u8], nonce: u64) -> Option<(u64, usize, u32)> {
    if b.len() < 40 || &b[..8] != META_MAGIC {
        return None;
    }
    let mut r = Reader::new(&b[8..]);
    let n = r.u64().ok()?;
    let seq = r.u64().ok()?;
    let len = r.u32().ok()? as usize;
    let crc = r.u32().ok()?;
    (n == nonce && len <= crate::layout::MAX_META_BYTES).then_some((seq, len, crc))
}

pub(crate) fn verify_meta(b: &[u8], len: usize, crc: u32) -> Option<Vec<u8>> {
    let blob = b.get(BS as usize..BS as usize + len)?;
    (crc32c::crc32c_append(crc32c::crc32c(&b[..28]), blob) == crc).then(|| blob.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn batch_round_trip_and_tear() {
        let payload = vec![7u8; 5000];
        let (bytes, crc) = BatchHdr::build(9, 100, 3, 55, &payload);
        assert_eq!(bytes.len() % BS as usize, 0);
        let h = BatchHdr::parse(&bytes, 9).unwrap();
        assert_eq!(
            (h.first_seq, h.nrecs, h.prev_chain, h.crc),
            (100, 3, 55, crc)
        );
        assert!(h.verify(&bytes));
        assert!(
            BatchHdr::parse(&bytes, 10).is_none(),
            "other format's nonce"
        );
        let mut torn = bytes.clone();
        torn[BS as usize + 10] ^= 0xff;
        assert!(!h.verify(&torn));
    }

    #[test]
    fn ckpt_and_meta_round_trip() {
        let h = CkptHdr {
            nonce: 1,
            ckpt_seq: 2,
            next_seq: 3,
            journal_pos: 4,
            chain: 5,
            nentries: 6,
            payload_crc: 7,
        };
        let b = h.encode();
        assert_eq!(CkptHdr::decode(&b, 1), Some(h));
        let mut bad = b.clone();
        bad[30] ^= 4;
        assert_eq!(CkptHdr::decode(&bad, 1), None);
        let m = encode_meta(1, 9, b"hello");
        let (seq, len, crc) = parse_meta_hdr(&m, 1).unwrap();
        assert_eq!((seq, len), (9, 5));
        assert_eq!(verify_meta(&m, len, crc).unwrap(), b"hello");
        let mut bad = m.clone();
        bad[BS as usize] ^= 1;
        assert!(verify_meta(&bad, len, crc).is_none());
    }

    #[test]
    fn maps_round_trip() {
        let mut maps = Maps::new(10);
        let o = ObjectId { vdisk: 1, chunk: 0 };
        maps.apply(&crate::codec::Record::Put {
            obj: o,
            block: 0,
            gen: 1,
            pin_gen: 0,
            phys: 3,
            crc: 9,
        });
        maps.apply(&crate::codec::Record::Put {
            obj: o,
            block: 0,
            gen: 2,
            pin_gen: 1,
            phys: 4,
            crc: 8,
        });
        let (p, n) = encode_maps(&maps);
        assert_eq!(n, 2);
        let back = decode_maps(&p, n, 10, 100).unwrap();
        assert_eq!(back.objs, maps.objs);
        assert_eq!(back.refs, maps.refs);
        assert!(
            decode_maps(&p, n, 4, 100).is_err(),
            "phys 4 outside a 4-block area"
        );
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), n in 0u64..20) {
            let _ = BatchHdr::parse(&bytes, 0);
            let _ = CkptHdr::decode(&bytes, 0);
            let _ = parse_meta_hdr(&bytes, 0);
            let _ = decode_maps(&bytes, n, 50, 100);
        }
    }
}
