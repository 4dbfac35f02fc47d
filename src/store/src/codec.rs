//! Byte encodings of journal records, plus a bounds-checked little-endian reader/writer.
//!
//! Owns: the record format. Must never trust input: every decoder reads through `Reader`, which
//! fails with a message instead of panicking, and checks every count against the bytes left.

use crate::maps::TOMB;
use crate::ObjectId;

/// Most snapshot generations one `prune` record may carry.
pub(crate) const MAX_PRUNE_SNAPS: usize = 4096;

#[derive(Default)]
pub(crate) struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    pub fn obj(&mut self, o: ObjectId) {
        self.u64(o.vdisk);
        self.u64(o.chunk);
    }
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.remaining() < n {
            return Err(format!("truncated: need {n} bytes at offset {}", self.pos));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    pub fn obj(&mut self) -> Result<ObjectId, String> {
        Ok(ObjectId {
            vdisk: self.u64()?,
            chunk: self.u64()?,
        })
    }
}

/// One map mutation. Replaying the same records in the same order from the same checkpoint
/// rebuilds the same maps, so every mutation of the maps goes through exactly one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// New version of one block (`phys == TOMB` for a discard).
    Put {
        obj: ObjectId,
        block: u64,
        gen: u64,
        pin_gen: u64,
        phys: u64,
        crc: u32,
    },
    Clone {
        src: ObjectId,
        at_gen: u64,
        dst: ObjectId,
        dst_gen: u64,
    },
    Rollback {
        obj: ObjectId,
        snap_gen: u64,
        gen: u64,
        pin_gen: u64,
    },
    Delete {
        obj: ObjectId,
    },
    Prune {
        vdisk: u64,
        snaps: Vec<u64>,
    },
    /// Point version `gen` of a block at a fresh copy of its data.
    Repair {
        obj: ObjectId,
        block: u64,
        gen: u64,
        phys: u64,
        crc: u32,
    },
    /// Append a version as is (import of a replica); oldest first.
    Import {
        obj: ObjectId,
        block: u64,
        gen: u64,
        phys: u64,
        crc: u32,
    },
}

const T_PUT: u8 = 1;
const T_CLONE: u8 = 2;
const T_ROLLBACK: u8 = 3;
const T_DELETE: u8 = 4;
const T_PRUNE: u8 = 5;
const T_REPAIR: u8 = 6;
const T_IMPORT: u8 = 7;

impl Record {
    pub fn encode(&self, w: &mut Writer) {
        match self {
            Record::Put {
                obj,
                block,
                gen,
                pin_gen,
                phys,
                crc,
            } => {
                w.u8(T_PUT);
                w.obj(*obj);
                w.u64(*block);
                w.u64(*gen);
                w.u64(*pin_gen);
                w.u64(*phys);
                w.u32(*crc);
            }
            Record::Clone {
                src,
                at_gen,
                dst,
                dst_gen,
            } => {
                w.u8(T_CLONE);
                w.obj(*src);
                w.u64(*at_gen);
                w.obj(*dst);
                w.u64(*dst_gen);
            }
            Record::Rollback {
                obj,
                snap_gen,
                gen,
                pin_gen,
            } => {
                w.u8(T_ROLLBACK);
                w.obj(*obj);
                w.u64(*snap_gen);
                w.u64(*gen);
                w.u64(*pin_gen);
            }
            Record::Delete { obj } => {
                w.u8(T_DELETE);
                w.obj(*obj);
            }
            Record::Prune { vdisk, snaps } => {
                w.u8(T_PRUNE);
                w.u64(*vdisk);
                w.u32(snaps.len() as u32);
                for s in snaps {
                    w.u64(*s);
                }
            }
            Record::Repair {
                obj,
                block,
                gen,
                phys,
                crc,
            } => {
                w.u8(T_REPAIR);
                w.obj(*obj);
                w.u64(*block);
                w.u64(*gen);
                w.u64(*phys);
                w.u32(*crc);
            }
            Record::Import {
                obj,
                block,
                gen,
                phys,
                crc,
            } => {
                w.u8(T_IMPORT);
                w.obj(*obj);
                w.u64(*block);
                w.u64(*gen);
                w.u64(*phys);
                w.u32(*crc);
            }
        }
    }

    /// Decode one record; `data_blocks` bounds every physical block number.
    pub fn decode(r: &mut Reader<'_>, data_blocks: u64) -> Result<Record, String> {
        let phys_ok = |p: u64| -> Result<u64, String> {
            if p == TOMB || p < data_blocks {
                Ok(p)
            } else {
                Err(format!(
                    "physical block {p} outside the data area ({data_blocks} blocks)"
                ))
            }
        };
        let gen_ok = |g: u64| -> Result<u64, String> {
            if g == 0 {
                Err("generation 0 in a record".into())
            } else {
                Ok(g)
            }
        };
        let tag = r.u8()?;
        Ok(match tag {
            T_PUT => Record::Put {
                obj: r.obj()?,
                block: r.u64()?,
                gen: gen_ok(r.u64()?)?,
                pin_gen: r.u64()?,
                phys: phys_ok(r.u64()?)?,
                crc: r.u32()?,
            },
            T_CLONE => Record::Clone {
                src: r.obj()?,
                at_gen: r.u64()?,
                dst: r.obj()?,
                dst_gen: gen_ok(r.u64()?)?,
            },
            T_ROLLBACK => Record::Rollback {
                obj: r.obj()?,
                snap_gen: r.u64()?,
                gen: gen_ok(r.u64()?)?,
                pin_gen: r.u64()?,
            },
            T_DELETE => Record::Delete { obj: r.obj()? },
            T_PRUNE => {
                let vdisk = r.u64()?;
                let n = r.u32()? as usize;
                if n > MAX_PRUNE_SNAPS || n * 8 > r.remaining() {
                    return Err(format!("prune record with {n} snapshots"));
                }
                let mut snaps = Vec::with_capacity(n);
                for _ in 0..n {
                    snaps.push(r.u64()?);
                }
                if !snaps.windows(2).all(|w| w[0] < w[1]) {
                    return Err("prune record with unsorted snapshots".into());
                }
                Record::Prune { vdisk, snaps }
            }
            T_REPAIR | T_IMPORT => {
                let obj = r.obj()?;
                let block = r.u64()?;
                let gen = gen_ok(r.u64()?)?;
                let phys = phys_ok(r.u64()?)?;
                let crc = r.u32()?;
                if tag == T_REPAIR {
                    if phys == TOMB {
                        return Err("repair record without data".into());
                    }
                    Record::Repair {
                        obj,
                        block,
                        gen,
                        phys,
                        crc,
                    }
                } else {
                    Record::Import {
                        obj,
                        block,
                        gen,
                        phys,
                        crc,
                    }
                }
            }
            t => return Err(format!("unknown record type {t}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn o(v: u64, c: u64) -> ObjectId {
        ObjectId { vdisk: v, chunk: c }
    }

    #[test]
    fn round_trip_every_record() {
        let recs = vec![
            Record::Put {
                obj: o(1, 2),
                block: 3,
                gen: 4,
                pin_gen: 2,
                phys: 9,
                crc: 77,
            },
            Record::Put {
                obj: o(1, 2),
                block: 3,
                gen: 4,
                pin_gen: 0,
                phys: TOMB,
                crc: 0,
            },
            Record::Clone {
                src: o(1, 2),
                at_gen: 5,
                dst: o(3, 2),
                dst_gen: 1,
            },
            Record::Rollback {
                obj: o(1, 2),
                snap_gen: 3,
                gen: 7,
                pin_gen: 6,
            },
            Record::Delete { obj: o(8, 8) },
            Record::Prune {
                vdisk: 1,
                snaps: vec![2, 5, 9],
            },
            Record::Repair {
                obj: o(1, 2),
                block: 3,
                gen: 4,
                phys: 10,
                crc: 1,
            },
            Record::Import {
                obj: o(1, 2),
                block: 3,
                gen: 4,
                phys: TOMB,
                crc: 0,
            },
        ];
        let mut w = Writer::default();
        for r in &recs {
            r.encode(&mut w);
        }
        let mut r = Reader::new(&w.buf);
        for want in &recs {
            assert_eq!(&Record::decode(&mut r, 100).unwrap(), want);
        }
        assert_eq!(r.remaining(), 0);
        // A physical block outside the data area is refused.
        let mut r = Reader::new(&w.buf);
        assert!(Record::decode(&mut r, 5).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut r = Reader::new(&bytes);
            while r.remaining() > 0 {
                if Record::decode(&mut r, 1000).is_err() {
                    break;
                }
            }
        }
    }
}
