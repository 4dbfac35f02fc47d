//! Where everything lives on the device, and the superblock that records it.
//!
//! ```text
//! block 0, 1        superblock and its copy (magic, version, Label, layout, crc)
//! meta slot 0, 1    put_meta blob copies (header block + 1 MiB each)
//! checkpoint A, B   full maps, newest valid wins
//! journal           ring of record batches
//! data              4 KiB blocks, addressed 0.. as "phys"
//! ```
//! Owns the layout arithmetic and the superblock format. Must never accept a superblock whose
//! crc or geometry is wrong.

use uuid::Uuid;

use crate::codec::{Reader, Writer};
use crate::Label;

pub(crate) const BS: u64 = blockdev::BLOCK_SIZE as u64;
pub(crate) const SB_MAGIC: &[u8; 8] = b"CAIRNSB1";
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Largest `put_meta` blob.
pub const MAX_META_BYTES: usize = 1 << 20;
pub(crate) const META_SLOT_BLOCKS: u64 = 1 + (MAX_META_BYTES as u64) / BS;
/// Bytes per version entry in a checkpoint.
pub(crate) const CKPT_ENTRY_BYTES: u64 = 44;
/// Smallest device we format (the fixed metadata needs ~2 MiB).
pub const MIN_DEVICE_BYTES: u64 = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub total_blocks: u64,
    pub meta: [u64; 2],
    pub ckpt: [u64; 2],
    pub ckpt_blocks: u64,
    pub journal_start: u64,
    pub journal_blocks: u64,
    pub data_start: u64,
    pub data_blocks: u64,
    /// Most versions the maps may hold (so a checkpoint always fits its slot).
    pub version_cap: u64,
}

impl Layout {
    pub fn for_device(size_bytes: u64) -> Result<Layout, String> {
        if size_bytes < MIN_DEVICE_BYTES {
            return Err(format!(
                "device of {size_bytes} bytes is smaller than the minimum {MIN_DEVICE_BYTES}"
            ));
        }
        let total = size_bytes / BS;
        let version_cap = (total + total / 2).max(1024);
        let ckpt_blocks = 1 + (version_cap * CKPT_ENTRY_BYTES).div_ceil(BS);
        let journal_blocks = (total / 64).clamp(256, 65536);
        let meta0 = 2;
        let meta1 = meta0 + META_SLOT_BLOCKS;
        let ck_a = meta1 + META_SLOT_BLOCKS;
        let ck_b = ck_a + ckpt_blocks;
        let journal_start = ck_b + ckpt_blocks;
        let data_start = journal_start + journal_blocks;
        if data_start + 256 > total {
            return Err(format!(
                "device of {size_bytes} bytes leaves no room for data"
            ));
        }
        Ok(Layout {
            total_blocks: total,
            meta: [meta0, meta1],
            ckpt: [ck_a, ck_b],
            ckpt_blocks,
            journal_start,
            journal_blocks,
            data_start,
            data_blocks: total - data_start,
            version_cap,
        })
    }

    pub fn data_offset(&self, phys: u64) -> u64 {
        (self.data_start + phys) * BS
    }
}

/// Superblock contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Superblock {
    pub label: Label,
    pub layout: Layout,
    /// Random per format; every other header carries it so stale metadata from an earlier
    /// format of the same device is never mistaken for ours.
    pub nonce: u64,
}

impl Superblock {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(SB_MAGIC);
        w.u32(FORMAT_VERSION);
        w.bytes(self.label.pool_id.as_bytes());
        w.bytes(self.label.disk_id.as_bytes());
        w.u64(self.label.node_id);
        w.u64(self.label.created_unix);
        w.u64(self.nonce);
        let l = &self.layout;
        for v in [
            l.total_blocks,
            l.meta[0],
            l.meta[1],
            l.ckpt[0],
            l.ckpt[1],
            l.ckpt_blocks,
            l.journal_start,
            l.journal_blocks,
            l.data_start,
            l.data_blocks,
            l.version_cap,
        ] {
            w.u64(v);
        }
        let crc = crc32c::crc32c(&w.buf);
        w.u32(crc);
        w.buf.resize(BS as usize, 0);
        w.buf
    }

    /// Decode block bytes. `Ok(None)`: not our magic at all. `Err`: ours but damaged.
    pub fn decode(b: &[u8], device_blocks: u64) -> Result<Option<Superblock>, String> {
        if b.len() < 8 || &b[..8] != SB_MAGIC {
            return Ok(None);
        }
        let mut r = Reader::new(b);
        r.take(8)?;
        let version = r.u32()?;
        let pool = r.take(16)?;
        let disk = r.take(16)?;
        let label = Label {
            pool_id: Uuid::from_slice(pool).map_err(|e| e.to_string())?,
            disk_id: Uuid::from_slice(disk).map_err(|e| e.to_string())?,
            node_id: r.u64()?,
            created_unix: r.u64()?,
        };
        let nonce = r.u64()?;
        let mut f = [0u64; 11];
        for x in f.iter_mut() {
            *x = r.u64()?;
        }
        let body_len = 8 + 4 + 32 + 16 + 8 + 88;
        let crc = r.u32()?;
        if crc32c::crc32c(&b[..body_len]) != crc {
            return Err("superblock checksum mismatch".into());
        }
        if version != FORMAT_VERSION {
            return Err(format!("unsupported store format version {version}"));
        }
        let layout = Layout {
            total_blocks: f[0],
            meta: [f[1], f[2]],
            ckpt: [f[3], f[4]],
            ckpt_blocks: f[5],
            journal_start: f[6],
            journal_blocks: f[7],
            data_start: f[8],
            data_blocks: f[9],
            version_cap: f[10],
        };
        // The layout must be exactly what format computes for that size (so nothing in it can
        // point outside the device or overlap), and fit the device we are looking at.
        let expect = Layout::for_device(layout.total_blocks.saturating_mul(BS))?;
        if expect != layout {
            return Err("superblock layout is inconsistent".into());
        }
        if layout.total_blocks > device_blocks {
            return Err(format!(
                "superblock says {} blocks but the device has {device_blocks}",
                layout.total_blocks
            ));
        }
        Ok(Some(Superblock {
            label,
            layout,
            nonce,
        }))
    }
}

/// Name what a non-blank, non-Cairn region looks like. `head` is the start of the device,
/// `tail` its last bytes.
pub(crate) fn recognise(head: &[u8], tail: &[u8]) -> String {
    let at = |buf: &[u8], off: usize, sig: &[u8]| {
        buf.len() >= off + sig.len() && &buf[off..off + sig.len()] == sig
    };
    if at(head, 512, b"EFI PART") || at(head, 4096, b"EFI PART") {
        return "GPT partition table".into();
    }
    if at(head, 0, b"LUKS\xba\xbe") {
        return "LUKS encrypted volume".into();
    }
    if (0..4).any(|s| at(head, s * 512, b"LABELONE")) {
        return "LVM physical volume".into();
    }
    if at(head, 0, b"XFSB") {
        return "xfs file system".into();
    }
    if at(head, 0x438, &[0x53, 0xef]) {
        return "ext2/3/4 file system".into();
    }
    if at(head, 0x10040, b"_BHRfS_M") {
        return "btrfs file system".into();
    }
    if at(head, 4086, b"SWAPSPACE2") || at(head, 4086, b"SWAP-SPACE") {
        return "Linux swap".into();
    }
    if at(head, 0x8001, b"CD001") {
        return "ISO 9660 image".into();
    }
    if at(head, 4096, &[0xfc, 0x4e, 0x2b, 0xa9]) || at(head, 0, &[0xfc, 0x4e, 0x2b, 0xa9]) {
        return "Linux md RAID member".into();
    }
    if at(head, 3, b"NTFS    ") {
        return "NTFS file system".into();
    }
    if at(head, 0x52, b"FAT32   ") || at(head, 0x36, b"FAT") {
        return "FAT file system".into();
    }
    if at(head, 510, &[0x55, 0xaa]) {
        return "MBR partition table / boot sector".into();
    }
    if at(head, 0, SB_MAGIC) {
        return "damaged Cairn superblock (both copies fail their checksum)".into();
    }
    if tail.len() >= 512 && &tail[tail.len() - 512..tail.len() - 504] == b"EFI PART" {
        return "GPT partition table (backup header at the end)".into();
    }
    if head.iter().any(|&b| b != 0) {
        "unrecognised data in the first MiB".into()
    } else {
        "unrecognised data in the last MiB".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sb() -> Superblock {
        Superblock {
            label: Label {
                pool_id: Uuid::from_u128(1),
                disk_id: Uuid::from_u128(2),
                node_id: 3,
                created_unix: 4,
            },
            layout: Layout::for_device(64 << 20).unwrap(),
            nonce: 5,
        }
    }

    #[test]
    fn superblock_round_trip_and_damage() {
        let s = sb();
        let b = s.encode();
        assert_eq!(Superblock::decode(&b, 1 << 20).unwrap(), Some(s));
        let mut bad = b.clone();
        bad[20] ^= 1;
        assert!(Superblock::decode(&bad, 1 << 20).is_err());
        assert!(
            Superblock::decode(&b, 10).is_err(),
            "device smaller than the superblock says"
        );
        assert_eq!(Superblock::decode(&[0u8; 4096], 1 << 20).unwrap(), None);
    }

    #[test]
    fn layout_is_ordered_and_inside() {
        for mb in [8u64, 16, 100, 8192] {
            let l = Layout::for_device(mb << 20).unwrap();
            assert!(l.meta[1] + META_SLOT_BLOCKS <= l.ckpt[0]);
            assert!(l.ckpt[1] + l.ckpt_blocks <= l.journal_start);
            assert_eq!(l.journal_start + l.journal_blocks, l.data_start);
            assert_eq!(l.data_start + l.data_blocks, l.total_blocks);
            assert!(l.version_cap * CKPT_ENTRY_BYTES <= (l.ckpt_blocks - 1) * BS);
        }
        assert!(Layout::for_device(1 << 20).is_err());
    }

    proptest! {
        #[test]
        fn superblock_decoder_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..300), magic: bool) {
            if magic && bytes.len() >= 8 {
                bytes[..8].copy_from_slice(SB_MAGIC);
            }
            let _ = Superblock::decode(&bytes, 1 << 30);
        }
    }
}
