//! Helpers shared by the store's integration tests: labels, block patterns, a runtime.
#![allow(dead_code)]

use blockdev::{AlignedBuf, WriteBuf, BLOCK_SIZE};
use store::{Label, ObjectId};
use uuid::Uuid;

pub const BS: usize = BLOCK_SIZE;

pub fn label() -> Label {
    Label {
        pool_id: Uuid::from_u128(7),
        disk_id: Uuid::from_u128(8),
        node_id: 1,
        created_unix: 1_700_000_000,
    }
}

pub fn obj(vdisk: u64, chunk: u64) -> ObjectId {
    ObjectId { vdisk, chunk }
}

/// Block contents that name their tag and block, so a misplaced block is caught too.
pub fn pattern_into(dst: &mut [u8], tag: u64, block: u64) {
    dst.fill(tag as u8 ^ 0x5a);
    dst[..8].copy_from_slice(&tag.to_le_bytes());
    dst[8..16].copy_from_slice(&block.to_le_bytes());
}

pub fn pattern(tags: &[u64], first_block: u64) -> WriteBuf {
    let mut b = AlignedBuf::zeroed(tags.len() * BS);
    for (i, &t) in tags.iter().enumerate() {
        pattern_into(&mut b[i * BS..(i + 1) * BS], t, first_block + i as u64);
    }
    b.into_write()
}

/// The tag a block holds (0 = zeros), or an error describing garbage.
pub fn tag_of(b: &[u8], block: u64) -> Result<u64, String> {
    if b.iter().all(|&x| x == 0) {
        return Ok(0);
    }
    let tag = u64::from_le_bytes(b[..8].try_into().unwrap());
    let mut want = vec![0u8; BS];
    pattern_into(&mut want, tag, block);
    if b == &want[..] {
        Ok(tag)
    } else {
        Err(format!("block {block}: garbage (starts {:02x?})", &b[..16]))
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
