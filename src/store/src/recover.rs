//! Probe, format and open (recovery): reading the superblock, the newest valid checkpoint and
//! the journal after it, and the meta slots.
//!
//! Owns the rules "format only a blank device, without writing a byte otherwise" and "recovery
//! = newest valid checkpoint + every valid batch after it, in order, stopping at the first one
//! that is torn or does not chain". Must never panic or half-open on bad bytes: every failure is
//! a clear error and nothing is written before the store is fully loaded.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use blockdev::BlockDevice;
use parking_lot::{Mutex, RwLock};

use crate::alloc::Allocator;
use crate::codec::{Reader, Record, Writer};
use crate::disk::{self, BatchHdr, CkptHdr};
use crate::error::{Result, StoreError};
use crate::layout::{recognise, Layout, Superblock, BS, META_SLOT_BLOCKS};
use crate::maps::Maps;
use crate::store::{Counters, Inner, JBuf, MetaState, Ring, State, Store};
use crate::{Label, Probe};

const PROBE_BYTES: u64 = 1 << 20;

async fn read_raw(dev: &dyn BlockDevice, offset: u64, len: u64) -> Result<blockdev::AlignedBuf> {
    dev.read_at(offset, blockdev::AlignedBuf::zeroed(len as usize))
        .await
        .map_err(|e| StoreError::dev(format!("reading {} at {offset}", dev.info().name), e))
}

/// The superblock from either copy: Ok(Some) ours, Ok(None) no magic at all, Err damaged.
async fn read_superblock(
    dev: &dyn BlockDevice,
) -> Result<std::result::Result<Option<Superblock>, String>> {
    let size = dev.info().size_bytes;
    if size < 2 * BS {
        return Ok(Ok(None));
    }
    let b = read_raw(dev, 0, 2 * BS).await?;
    let blocks = size / BS;
    let a = Superblock::decode(&b[..BS as usize], blocks);
    let c = Superblock::decode(&b[BS as usize..], blocks);
    Ok(match (a, c) {
        (Ok(Some(s)), _) | (_, Ok(Some(s))) => Ok(Some(s)),
        (Err(e), _) | (_, Err(e)) => Err(e),
        (Ok(None), Ok(None)) => Ok(None),
    })
}

impl Store {
    /// Blank (all zeros in the first and last MiB), Ours(label), or Foreign(what was found).
    pub async fn probe(dev: &dyn BlockDevice) -> Result<Probe> {
        let size = dev.info().size_bytes;
        match read_superblock(dev).await? {
            Ok(Some(sb)) => return Ok(Probe::Ours(sb.label)),
            Err(e) => return Ok(Probe::Foreign(format!("damaged Cairn store: {e}"))),
            Ok(None) => {}
        }
        let head_len = size.min(PROBE_BYTES);
        let head = read_raw(dev, 0, head_len).await?;
        let tail_len = size.min(PROBE_BYTES);
        let tail = read_raw(dev, size - tail_len, tail_len).await?;
        if head.iter().all(|&b| b == 0) && tail.iter().all(|&b| b == 0) {
            return Ok(Probe::Blank);
        }
        Ok(Probe::Foreign(recognise(&head, &tail)))
    }

    /// Format a blank device and open it. Anything not blank is refused without a write.
    pub async fn format(dev: Arc<dyn BlockDevice>, label: Label) -> Result<Store> {
        match Self::probe(&*dev).await? {
            Probe::Blank => {}
            Probe::Ours(l) => {
                return Err(StoreError::NotBlank(format!(
                    "{} already holds a Cairn store (pool {}, disk {})",
                    dev.info().name,
                    l.pool_id,
                    l.disk_id
                )))
            }
            Probe::Foreign(why) => {
                return Err(StoreError::NotBlank(format!("{}: {why}", dev.info().name)))
            }
        }
        let layout =
            Layout::for_device(dev.info().size_bytes).map_err(StoreError::InvalidArgument)?;
        let nonce = u64::from_le_bytes(
            uuid::Uuid::new_v4().as_bytes()[..8]
                .try_into()
                .unwrap_or([1; 8]),
        );
        let sb = Superblock {
            label,
            layout,
            nonce,
        };
        let empty = crc32c::crc32c(&[]);
        let hdr = CkptHdr {
            nonce,
            ckpt_seq: 1,
            next_seq: 1,
            journal_pos: 0,
            chain: initial_chain(nonce),
            nentries: 0,
            payload_crc: empty,
        };
        let w = |off: u64, bytes: Vec<u8>| {
            let dev = dev.clone();
            async move {
                dev.write_at(off, blockdev::AlignedBuf::from_slice(&bytes).into_write())
                    .await
                    .map_err(|e| StoreError::dev(format!("formatting {}", dev.info().name), e))
            }
        };
        // Checkpoint first, superblocks last: a crash in between leaves a device that still
        // probes Blank (nothing in its first MiB) and can simply be formatted again.
        w(layout.ckpt[0] * BS, hdr.encode()).await?;
        flush(&*dev).await?;
        let sbb = sb.encode();
        w(BS, sbb.clone()).await?;
        w(0, sbb).await?;
        flush(&*dev).await?;
        Self::open(dev).await
    }

    /// Open one of ours, recovering from any crash (checkpoint + journal replay).
    pub async fn open(dev: Arc<dyn BlockDevice>) -> Result<Store> {
        let name = dev.info().name.clone();
        let sb = match read_superblock(&*dev).await? {
            Ok(Some(sb)) => sb,
            Ok(None) => {
                return Err(StoreError::NotOurs(format!(
                    "{name} has no Cairn superblock"
                )))
            }
            Err(e) => return Err(StoreError::bad_meta(format!("{name}: {e}"))),
        };
        let l = sb.layout;
        // Newest valid checkpoint (header and payload both check out).
        let mut cands = Vec::new();
        for slot in 0..2 {
            let b = read_raw(&*dev, l.ckpt[slot] * BS, BS).await?;
            if let Some(h) = CkptHdr::decode(&b, sb.nonce) {
                cands.push((h, slot));
            }
        }
        cands.sort_by_key(|(h, _)| std::cmp::Reverse(h.ckpt_seq));
        let headers = cands.clone();
        let mut loaded = None;
        let mut why = String::from("no checkpoint header is valid");
        for (h, slot) in cands {
            let bytes = (h.nentries.saturating_mul(crate::layout::CKPT_ENTRY_BYTES)).div_ceil(BS);
            if h.nentries > l.version_cap
                || h.journal_pos >= l.journal_blocks
                || bytes + 1 > l.ckpt_blocks
            {
                why = format!("checkpoint {} has impossible geometry", h.ckpt_seq);
                continue;
            }
            let payload_len = (h.nentries * crate::layout::CKPT_ENTRY_BYTES) as usize;
            let payload = if bytes == 0 {
                Vec::new()
            } else {
                read_raw(&*dev, (l.ckpt[slot] + 1) * BS, bytes * BS).await?[..payload_len].to_vec()
            };
            if crc32c::crc32c(&payload) != h.payload_crc {
                why = format!("checkpoint {} payload checksum mismatch", h.ckpt_seq);
                continue;
            }
            match disk::decode_maps(&payload, h.nentries, l.data_blocks, l.version_cap) {
                Ok(m) => {
                    loaded = Some((h, slot, m));
                    break;
                }
                Err(e) => why = format!("checkpoint {}: {e}", h.ckpt_seq),
            }
        }
        let Some((h, slot, mut maps)) = loaded else {
            return Err(StoreError::bad_meta(format!("{name}: {why}")));
        };
        let mut ring = replay(&*dev, &sb, &h, slot, &mut maps).await?;
        match headers
            .iter()
            .find(|(o, s)| *s != slot && o.ckpt_seq > h.ckpt_seq)
        {
            // Fell back to the older checkpoint: the journal must have carried us at least to
            // where the newer one was, or something durable is gone.
            Some((newer, _)) if ring.durable_seq + 1 < newer.next_seq => {
                return Err(StoreError::bad_meta(format!(
                    "{name}: newest checkpoint {} is damaged ({why}) and the journal after the older one ends early",
                    newer.ckpt_seq
                )));
            }
            Some(_) => {}
            None => {
                // Keep the interval between the older checkpoint and this one intact (it is the
                // fallback if this checkpoint ever becomes unreadable).
                if let Some((older, _)) = headers
                    .iter()
                    .find(|(o, s)| *s != slot && o.ckpt_seq + 1 == h.ckpt_seq)
                {
                    let jb = l.journal_blocks;
                    ring.prev_used = if older.next_seq == h.next_seq {
                        0
                    } else {
                        let d = (h.journal_pos + jb - older.journal_pos) % jb;
                        if d == 0 {
                            jb
                        } else {
                            d
                        }
                    };
                }
            }
        }
        let mut alloc = Allocator::new(l.data_blocks);
        for (b, &r) in maps.refs.iter().enumerate() {
            if r > 0 {
                alloc.mark_used(b as u64);
            }
        }
        let (meta, meta_state) = load_meta(&*dev, &sb).await?;
        let last_seq = ring.durable_seq;
        let inner = Inner {
            dev,
            sb,
            state: RwLock::new(State {
                maps,
                alloc,
                inflight: 0,
            }),
            jbuf: Mutex::new(JBuf {
                w: Writer::default(),
                nrecs: 0,
                last_seq,
                frees: Vec::new(),
            }),
            ring: tokio::sync::Mutex::new(ring),
            flushing_frees: AtomicU64::new(0),
            meta: tokio::sync::Mutex::new(meta_state),
            meta_cache: RwLock::new(meta),
            poisoned: AtomicBool::new(false),
            bg_flush: AtomicBool::new(false),
            defrag_backoff: AtomicU64::new(0),
            // CAIRN_STORE_DEFRAG=0 turns it off (A/B benchmarks).
            defrag_enabled: AtomicBool::new(
                std::env::var_os("CAIRN_STORE_DEFRAG").is_none_or(|v| v != "0"),
            ),
            poison_reason: Mutex::new(String::new()),
            counters: Counters::default(),
        };
        Ok(Store {
            inner: Arc::new(inner),
        })
    }
}

fn initial_chain(nonce: u64) -> u32 {
    crc32c::crc32c(&nonce.to_le_bytes())
}

async fn flush(dev: &dyn BlockDevice) -> Result<()> {
    dev.flush()
        .await
        .map_err(|e| StoreError::dev(format!("flushing {}", dev.info().name), e))
}

/// Apply every valid batch after the checkpoint; returns the ring position to continue at.
async fn replay(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    ck: &CkptHdr,
    slot: usize,
    maps: &mut Maps,
) -> Result<Ring> {
    let l = sb.layout;
    let jb = l.journal_blocks;
    let mut ring = Ring {
        head: ck.journal_pos,
        used: 0,
        prev_used: 0,
        chain: ck.chain,
        ckpt_seq: ck.ckpt_seq,
        ckpt_slot: slot,
        durable_seq: ck.next_seq.saturating_sub(1),
    };
    loop {
        let expect_seq = ring.durable_seq.saturating_add(1);
        let mut found = None;
        let mut cands = vec![(ring.head, 0)];
        if ring.head != 0 {
            cands.push((0, jb - ring.head));
        }
        for (pos, waste) in cands {
            if pos >= jb {
                continue;
            }
            let first = read_raw(dev, (l.journal_start + pos) * BS, BS).await?;
            let Some(h) = BatchHdr::parse(&first, sb.nonce) else {
                continue;
            };
            if h.first_seq != expect_seq || h.prev_chain != ring.chain || h.nrecs == 0 {
                continue;
            }
            let nb = h.total_blocks();
            if pos + nb > jb || ring.used + waste + nb > jb {
                continue;
            }
            let whole = if nb == 1 {
                first
            } else {
                read_raw(dev, (l.journal_start + pos) * BS, nb * BS).await?
            };
            if !h.verify(&whole) {
                // Torn (never durable) or rotted (was durable)? If the batch after it exists,
                // this one was complete once: a later batch is only written after the flush
                // that made this one durable.
                if successor_exists(dev, sb, &h, pos + nb).await? {
                    return Err(StoreError::bad_meta(format!(
                        "{}: journal batch at ring block {pos} (records from {}) is damaged but later batches exist",
                        dev.info().name,
                        h.first_seq
                    )));
                }
                continue;
            }
            found = Some((pos, waste, h, whole));
            break;
        }
        let Some((pos, waste, h, whole)) = found else {
            break;
        };
        let payload =
            &whole[crate::disk::BATCH_HDR..crate::disk::BATCH_HDR + h.payload_len as usize];
        let mut r = Reader::new(payload);
        let mut recs = Vec::with_capacity(h.nrecs as usize);
        for i in 0..h.nrecs {
            let rec = Record::decode(&mut r, l.data_blocks).map_err(|e| {
                StoreError::bad_meta(format!(
                    "{}: journal record {} is undecodable despite a valid checksum: {e}",
                    dev.info().name,
                    h.first_seq + u64::from(i)
                ))
            })?;
            recs.push(rec);
        }
        for rec in &recs {
            maps.apply(rec);
            maps.freed.clear();
        }
        ring.head = pos + h.total_blocks();
        ring.used += waste + h.total_blocks();
        ring.chain = h.crc;
        ring.durable_seq = h.first_seq.saturating_add(u64::from(h.nrecs) - 1);
    }
    if maps.nversions > l.version_cap {
        return Err(StoreError::bad_meta(format!(
            "{}: journal replay produced {} versions, over the cap {}",
            dev.info().name,
            maps.nversions,
            l.version_cap
        )));
    }
    Ok(ring)
}

async fn successor_exists(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    h: &BatchHdr,
    next: u64,
) -> Result<bool> {
    let l = sb.layout;
    for pos in [next, 0] {
        if pos >= l.journal_blocks {
            continue;
        }
        let first = read_raw(dev, (l.journal_start + pos) * BS, BS).await?;
        let Some(n) = BatchHdr::parse(&first, sb.nonce) else {
            continue;
        };
        if n.first_seq != h.first_seq + u64::from(h.nrecs) || n.prev_chain != h.crc || n.nrecs == 0
        {
            continue;
        }
        let nb = n.total_blocks();
        if pos + nb > l.journal_blocks {
            continue;
        }
        let whole = if nb == 1 {
            first
        } else {
            read_raw(dev, (l.journal_start + pos) * BS, nb * BS).await?
        };
        if n.verify(&whole) {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn load_meta(dev: &dyn BlockDevice, sb: &Superblock) -> Result<(Option<Vec<u8>>, MetaState)> {
    let mut best: Option<(u64, usize, Vec<u8>)> = None;
    let mut newest_seen = 0;
    for slot in 0..2 {
        let off = sb.layout.meta[slot] * BS;
        let hdr = read_raw(dev, off, BS).await?;
        let Some((seq, len, crc)) = disk::parse_meta_hdr(&hdr, sb.nonce) else {
            continue;
        };
        newest_seen = newest_seen.max(seq);
        let nb = (BS + len as u64).div_ceil(BS).min(META_SLOT_BLOCKS);
        let whole = read_raw(dev, off, nb * BS).await?;
        if let Some(blob) = disk::verify_meta(&whole, len, crc) {
            if best.as_ref().is_none_or(|b| seq > b.0) {
                best = Some((seq, slot, blob));
            }
        }
    }
    Ok(match best {
        // Keep sequence numbers above anything seen, even a torn newer copy.
        Some((_, slot, blob)) => (
            Some(blob),
            MetaState {
                seq: newest_seen,
                slot,
            },
        ),
        None => (
            None,
            MetaState {
                seq: newest_seen,
                slot: 1,
            },
        ),
    })
}

impl Store {
    /// Atomically replace the meta blob (<= 1 MiB); durable when this returns.
    pub async fn put_meta(&self, blob: &[u8]) -> Result<()> {
        let inner = &*self.inner;
        inner.check_ok()?;
        if blob.len() > crate::layout::MAX_META_BYTES {
            return Err(StoreError::invalid(format!(
                "meta blob of {} bytes exceeds {}",
                blob.len(),
                crate::layout::MAX_META_BYTES
            )));
        }
        let mut m = inner.meta.lock().await;
        let slot = 1 - m.slot;
        let seq = m.seq + 1;
        let bytes = disk::encode_meta(inner.sb.nonce, seq, blob);
        inner
            .meta_write(inner.layout().meta[slot] * BS, bytes)
            .await?;
        inner.dev_flush().await?;
        m.seq = seq;
        m.slot = slot;
        *inner.meta_cache.write() = Some(blob.to_vec());
        Ok(())
    }

    pub fn get_meta(&self) -> Option<Vec<u8>> {
        self.inner.meta_cache.read().clone()
    }
}
