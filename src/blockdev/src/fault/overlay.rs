//! The volatile write cache of the fault device: every write or discard since it was last written
//! back, in order, plus an index from block to the newest cached contents of that block.
//!
//! It owns only bookkeeping; it never performs I/O (the device writes entries back and decides
//! their fate at a power cut). Reads consult the index so they see the newest data.

use std::collections::{BTreeMap, VecDeque};

use crate::{WriteBuf, BLOCK_SIZE};

/// One cached write (`data: Some`) or discard (`data: None`, reads as zeros).
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub(crate) seq: u64,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) data: Option<WriteBuf>,
}

/// The newest cached contents of one block.
#[derive(Clone, Debug)]
pub(crate) struct CachedBlock {
    pub(crate) seq: u64,
    /// `None`: discarded (zeros).
    pub(crate) data: Option<WriteBuf>,
}

#[derive(Default, Debug)]
pub(crate) struct Overlay {
    next_seq: u64,
    pending: VecDeque<Pending>,
    index: BTreeMap<u64, CachedBlock>,
    bytes: u64,
}

const BS: u64 = BLOCK_SIZE as u64;

impl Overlay {
    /// Record a write (or discard); returns its sequence number.
    pub(crate) fn push(&mut self, offset: u64, len: u64, data: Option<WriteBuf>) -> u64 {
        self.next_seq += 1;
        let seq = self.next_seq;
        for i in 0..len / BS {
            let block = offset / BS + i;
            let slice = data.as_ref().map(|d| {
                let start = (i * BS) as usize;
                d.slice(start..start + BLOCK_SIZE)
            });
            self.index.insert(block, CachedBlock { seq, data: slice });
        }
        // Discards cost no payload but still count, so a stream of them is bounded too.
        self.bytes += data.as_ref().map_or(BS, |d| d.len() as u64);
        self.pending.push_back(Pending {
            seq,
            offset,
            len,
            data,
        });
        seq
    }

    /// The sequence number of the newest cached write (0 if none was ever made).
    pub(crate) fn last_seq(&self) -> u64 {
        self.next_seq
    }

    pub(crate) fn front(&self) -> Option<&Pending> {
        self.pending.front()
    }

    /// Forget the oldest entry after it reached the inner device.
    pub(crate) fn pop_written(&mut self) -> Option<Pending> {
        let p = self.pending.pop_front()?;
        self.bytes -= p.data.as_ref().map_or(BS, |d| d.len() as u64);
        for block in p.offset / BS..(p.offset + p.len) / BS {
            if self.index.get(&block).is_some_and(|c| c.seq == p.seq) {
                self.index.remove(&block);
            }
        }
        Some(p)
    }

    /// Take everything (a power cut decides each entry's fate).
    pub(crate) fn take_all(&mut self) -> Vec<Pending> {
        self.index.clear();
        self.bytes = 0;
        self.pending.drain(..).collect()
    }

    /// The cached blocks within `[offset, offset+len)`, newest contents, as (block, contents).
    pub(crate) fn cached_in(&self, offset: u64, len: u64) -> Vec<(u64, CachedBlock)> {
        let first = offset / BS;
        let end = (offset + len) / BS;
        self.index
            .range(first..end)
            .map(|(b, c)| (*b, c.clone()))
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AlignedBuf;

    #[test]
    fn newest_wins_and_pop_keeps_newer() {
        let mut o = Overlay::default();
        let a = AlignedBuf::from_slice(&[1u8; 2 * BLOCK_SIZE]).into_write();
        let b = AlignedBuf::from_slice(&[2u8; BLOCK_SIZE]).into_write();
        o.push(0, 2 * BS, Some(a));
        o.push(BS, BS, Some(b));
        let c = o.cached_in(0, 2 * BS);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].1.data.as_ref().unwrap().as_slice()[0], 1);
        assert_eq!(c[1].1.data.as_ref().unwrap().as_slice()[0], 2);
        o.pop_written();
        let c = o.cached_in(0, 2 * BS);
        assert_eq!(
            c.len(),
            1,
            "block 0 written back, block 1 still has the newer write"
        );
        assert_eq!(c[0].0, 1);
        o.push(0, BS, None);
        assert!(o.cached_in(0, BS)[0].1.data.is_none());
        assert_eq!(o.take_all().len(), 2);
        assert_eq!(o.bytes(), 0);
    }
}
