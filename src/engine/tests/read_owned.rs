//! `VdiskHandle::read_owned` (the engine's verified buffers handed over, no copy) returns
//! exactly what `read` returns: any range, alignment, chunk crossing, unwritten holes,
//! fragmented layouts and snapshots; a bad replica is answered from the good one and repaired;
//! both bad is an error, never wrong data.

mod common;

use common::*;
use engine::{ErrorKind, VdiskHandle};

async fn both(h: &VdiskHandle, off: u64, len: usize) -> anyhow::Result<Vec<u8>> {
    let mut want = vec![0u8; len];
    h.read(off, &mut want).await?;
    let got = h.read_owned(off, len as u64).await?;
    assert_eq!(got.len(), len, "length of {off}+{len}");
    let got = got.to_vec();
    assert!(got == want, "read_owned differs from read at {off}+{len}");
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_owned_returns_what_read_returns() -> anyhow::Result<()> {
    let ram = ram_disks(2, 64 * MIB);
    let e = engine_on(&as_dyn(&ram)).await?;
    let size = 6 * MIB;
    e.create_vdisk("v", size).await?;
    let h = e.open_vdisk("v")?;
    let mut model = vec![0u8; size as usize];
    // Chunks 0-2 written whole, chunk 3 partly, chunks 4-5 never.
    let base = pattern(1, 3 * MIB as usize + 200_000);
    h.write(0, &base).await?;
    model[..base.len()].copy_from_slice(&base);
    e.create_snapshot("v", "s").await?;
    let snap_model = model.clone();
    // Scattered 4 KiB overwrites: each chunk's blocks no longer lie in one run on the device.
    let mut x = 77u64;
    for i in 0..300u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 20) % (3 * MIB / 4096) * 4096;
        let d = pattern(100 + i, 4096);
        h.write(off, &d).await?;
        model[off as usize..off as usize + 4096].copy_from_slice(&d);
    }
    let cases: [(u64, usize); 10] = [
        (0, 4096),
        (4096 * 3, 64 << 10),
        (0, MIB as usize),
        (MIB - 4096, 8192),
        (MIB - 1000, 3000),
        (123, 1),
        (5, 3 * MIB as usize + 17),
        (3 * MIB + 190_000, 20_000),
        (4 * MIB, 2 * MIB as usize),
        (0, size as usize),
    ];
    for (off, len) in cases {
        let got = both(&h, off, len).await?;
        assert!(
            got == model[off as usize..off as usize + len],
            "model at {off}+{len}"
        );
    }
    let s = e.open_snapshot("v", "s")?;
    for (off, len) in cases {
        let got = both(&s, off, len).await?;
        assert!(
            got == snap_model[off as usize..off as usize + len],
            "snapshot at {off}+{len}"
        );
    }
    // Zero length, and out of range.
    assert!(h.read_owned(size, 0).await?.is_empty());
    let err = h.read_owned(size - 4096, 8192).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let err = h.read_owned(u64::MAX - 10, 20).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    e.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_owned_fails_over_repairs_and_never_returns_bad_data() -> anyhow::Result<()> {
    let ram = ram_disks(2, 48 * MIB);
    let fd = fault_disks(&ram, 5);
    let e = engine_on(&fault_dyn(&fd)).await?;
    e.create_vdisk("v", 4 * MIB).await?;
    let h = e.open_vdisk("v")?;
    let data = pattern(9, 2 * MIB as usize);
    h.write(0, &data).await?;
    h.flush().await?;
    // Every block of ours on disk 0 is bad: reads answer from disk 1.
    let blocks = find_blocks(&ram[0], &data);
    assert_eq!(blocks.len() as u64, 2 * MIB / 4096);
    for off in &blocks {
        fd[0].corrupt(*off, 4096).await?;
    }
    // 64 KiB pieces: which replica a read tries first alternates between them, so some try
    // the bad one first.
    for off in (0..2 * MIB).step_by(64 << 10) {
        let got = h.read_owned(off, 64 << 10).await?.to_vec();
        assert!(
            got == data[off as usize..][..64 << 10],
            "wrong bytes at {off}"
        );
    }
    let st = e.stats();
    assert!(
        st.checksum_errors >= 1,
        "the bad replica was noticed: {st:?}"
    );
    assert!(st.repairs >= 1, "and repaired: {st:?}");
    // Both copies of one block bad: an error naming corruption, never data.
    let target = &data[MIB as usize..MIB as usize + 4096];
    // (Flushed first so repaired copies are on the RAM disks where `find_blocks` looks; a copy
    // on disk 0 not found there was not repaired and is still bad.)
    h.flush().await?;
    for (i, (r, f)) in ram.iter().zip(&fd).enumerate() {
        let offs = find_blocks(r, target);
        assert!(
            offs.len() == 1 || (i == 0 && offs.is_empty()),
            "disk {i}: {offs:?}"
        );
        for off in offs {
            f.corrupt(off, 4096).await?;
        }
    }
    let err = h.read_owned(MIB - 4096, 3 * 4096).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    e.shutdown().await?;
    Ok(())
}
