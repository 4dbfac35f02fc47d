//! Bad replicas: corruption at rest and EIO on one replica are detected, answered from the
//! other replica and repaired; both replicas bad gives an error, never wrong data; a disk that
//! fails writes is marked Failed and its chunks are re-mirrored.

mod common;

use std::sync::Arc;
use std::time::Duration;

use blockdev::{FaultOp, Trigger};
use common::*;
use engine::{DiskState, ErrorKind};

const DATA: u64 = 4 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_on_one_replica_is_detected_and_repaired() -> anyhow::Result<()> {
    let ram = ram_disks(2, 48 * MIB);
    let fd = fault_disks(&ram, 1);
    let e = engine_on(&fault_dyn(&fd)).await?;
    e.create_vdisk("v", 8 * MIB).await?;
    let h = e.open_vdisk("v")?;
    let data = pattern(7, DATA as usize);
    h.write(0, &data).await?;
    h.flush().await?;
    // Corrupt every data block of ours on the first disk, at rest.
    let blocks = find_blocks(&ram[0], &data);
    assert_eq!(
        blocks.len() as u64,
        DATA / 4096,
        "each block stored once per disk"
    );
    for off in &blocks {
        fd[0].corrupt(*off, 4096).await?;
    }
    // Every read returns good data, whichever replica it tried first.
    let mut buf = vec![0u8; DATA as usize];
    h.read(0, &mut buf).await?;
    assert!(buf == data, "wrong bytes returned");
    let by_reads = e.stats().checksum_errors;
    // Scrub finds and repairs the rest.
    e.start_scrub()?;
    assert!(e.wait_scrub(Duration::from_secs(60)).await);
    let s = e.stats();
    assert_eq!(
        by_reads + s.scrub.corrupt_found,
        blocks.len() as u64,
        "100% detected"
    );
    assert_eq!(s.repairs, blocks.len() as u64, "100% repaired: {s:?}");
    assert_eq!(s.scrub.unrepairable, 0);
    // A repaired block keeps its version record: the replicas of all 4 chunks compare equal.
    assert_eq!(
        (s.scrub.chunks_compared, s.scrub.replicas_differed),
        (DATA / engine::CHUNK_BYTES, 0),
        "{s:?}"
    );
    // Now both replicas are good: a second scrub finds nothing, and disk 1 alone serves data.
    e.start_scrub()?;
    assert!(e.wait_scrub(Duration::from_secs(60)).await);
    assert_eq!(e.stats().scrub.corrupt_found, 0);
    fd[1].fail(FaultOp::Read, Trigger::Always);
    h.read(0, &mut buf).await?;
    assert!(buf == data, "repaired replica holds the right bytes");
    fd[1].clear_faults();
    e.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_replicas_bad_is_an_error_never_wrong_data() -> anyhow::Result<()> {
    let ram = ram_disks(2, 48 * MIB);
    let fd = fault_disks(&ram, 2);
    let e = engine_on(&fault_dyn(&fd)).await?;
    e.create_vdisk("v", 8 * MIB).await?;
    let h = e.open_vdisk("v")?;
    let data = pattern(8, 64 * 1024);
    h.write(MIB, &data).await?;
    h.flush().await?;
    let target = &data[4096..8192];
    for (r, f) in ram.iter().zip(&fd) {
        let off = find_blocks(r, target);
        assert_eq!(off.len(), 1);
        f.corrupt(off[0], 4096).await?;
    }
    let mut buf = vec![0u8; data.len()];
    let err = h.read(MIB, &mut buf).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(e.stats().unrecoverable_reads >= 1);
    // The other blocks still read fine.
    let mut one = vec![0u8; 4096];
    h.read(MIB, &mut one).await?;
    assert_eq!(one, data[..4096]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_eio_on_one_replica_is_answered_and_repaired() -> anyhow::Result<()> {
    let ram = ram_disks(2, 48 * MIB);
    let fd = fault_disks(&ram, 3);
    let e = engine_on(&fault_dyn(&fd)).await?;
    e.create_vdisk("v", 8 * MIB).await?;
    let h = e.open_vdisk("v")?;
    let data = pattern(9, DATA as usize);
    h.write(0, &data).await?;
    h.flush().await?;
    fd[0].fail(FaultOp::Read, Trigger::Next(3));
    let mut buf = vec![0u8; DATA as usize];
    for _ in 0..4 {
        // Reads of 64 KiB so both replicas get asked.
        for off in (0..DATA).step_by(65536) {
            h.read(off, &mut buf[off as usize..off as usize + 65536])
                .await?;
        }
        assert!(buf == data);
    }
    let s = e.stats();
    assert_eq!(fd[0].stats().read_errors, 3);
    assert_eq!(s.read_io_errors, 3, "{s:?}");
    assert!(s.repairs >= 1, "{s:?}");
    assert!(
        e.disks().iter().all(|d| d.state == DiskState::Active),
        "read errors do not fail a disk"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_eio_fails_the_disk_and_re_mirrors() -> anyhow::Result<()> {
    let ram = ram_disks(3, 48 * MIB);
    let fd = fault_disks(&ram, 4);
    let e = engine_on(&fault_dyn(&fd)).await?;
    e.create_vdisk("v", 8 * MIB).await?;
    let h = e.open_vdisk("v")?;
    let first = pattern(10, DATA as usize);
    h.write(0, &first).await?;
    h.flush().await?;
    fd[1].fail(FaultOp::Write, Trigger::Always);
    let second = pattern(11, DATA as usize);
    // Acknowledged on the surviving replicas.
    h.write(DATA, &second).await?;
    // Placement may have kept every new chunk off disk 1; rewriting the first region (same
    // bytes) reaches the replicas disk 1 already holds.
    h.write(0, &first).await?;
    h.flush().await?;
    assert!(fd[1].stats().write_errors >= 1, "disk 1 was never written");
    let failed: Vec<_> = e
        .disks()
        .into_iter()
        .filter(|d| d.state == DiskState::Failed)
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", e.disks());
    assert!(
        e.wait_rebalanced(Duration::from_secs(60)).await,
        "re-mirroring did not finish"
    );
    assert_eq!(e.pool().degraded_chunks, 0);
    let mut buf = vec![0u8; 2 * DATA as usize];
    h.read(0, &mut buf).await?;
    assert!(buf[..DATA as usize] == first[..] && buf[DATA as usize..] == second[..]);
    // Every chunk now has two replicas on the two good disks: the failed one is not needed.
    e.shutdown().await?;
    drop(e);
    let good: Vec<_> = vec![fd[0].reopen(), fd[2].reopen()];
    let e2 = engine::Engine::open(cfg()).await?;
    for d in good {
        e2.add_disk(std::sync::Arc::new(d)).await?;
    }
    let h = e2.open_vdisk("v")?;
    let mut again = vec![0u8; 2 * DATA as usize];
    h.read(0, &mut again).await?;
    assert!(again == buf);
    assert_eq!(e2.pool().degraded_chunks, 0);
    // The failed disk is not taken back.
    let back = e2.add_disk(std::sync::Arc::new(fd[1].reopen())).await;
    assert!(back.is_err());
    Ok(())
}

/// Passes I/O to a fault device; once armed, the Nth flush (over all devices) cuts the power
/// of every device at once, like a crash in the middle of an operation.
struct Tripwire {
    dev: Arc<blockdev::FaultDevice>,
    all: Arc<parking_lot::Mutex<Vec<Arc<blockdev::FaultDevice>>>>,
    flushes_left: Arc<std::sync::atomic::AtomicI64>,
}

impl blockdev::BlockDevice for Tripwire {
    fn info(&self) -> &blockdev::DeviceInfo {
        self.dev.info()
    }
    fn read_at(
        &self,
        o: u64,
        b: blockdev::AlignedBuf,
    ) -> blockdev::BoxFuture<'_, blockdev::Result<blockdev::AlignedBuf>> {
        self.dev.read_at(o, b)
    }
    fn write_at(
        &self,
        o: u64,
        d: blockdev::WriteBuf,
    ) -> blockdev::BoxFuture<'_, blockdev::Result<()>> {
        self.dev.write_at(o, d)
    }
    fn discard(&self, o: u64, l: u64) -> blockdev::BoxFuture<'_, blockdev::Result<()>> {
        self.dev.discard(o, l)
    }
    fn flush(&self) -> blockdev::BoxFuture<'_, blockdev::Result<()>> {
        Box::pin(async move {
            if self
                .flushes_left
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
                == 1
            {
                let all = self.all.lock().clone();
                for r in futures::future::join_all(all.iter().map(|d| d.power_cut())).await {
                    r?;
                }
            }
            self.dev.flush().await
        })
    }
}

/// A rollback interrupted by a crash is finished after the restart, before the disk serves I/O.
#[test]
fn interrupted_rollback_is_redone_after_restart() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ram = ram_disks(2, 32 * MIB);
        let fd = fault_disks(&ram, 5);
        let all = Arc::new(parking_lot::Mutex::new(fd.clone()));
        let left = Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX));
        let wired: Vec<Arc<dyn blockdev::BlockDevice>> = fd
            .iter()
            .map(|d| {
                Arc::new(Tripwire {
                    dev: d.clone(),
                    all: all.clone(),
                    flushes_left: left.clone(),
                }) as Arc<dyn blockdev::BlockDevice>
            })
            .collect();
        let e = engine_on(&wired).await?;
        e.create_vdisk("v", 4 * MIB).await?;
        let h = e.open_vdisk("v")?;
        let a = pattern(20, 4 * MIB as usize);
        h.write(0, &a).await?;
        e.create_snapshot("v", "s").await?;
        let b = pattern(21, 4 * MIB as usize);
        h.write(0, &b).await?;
        h.flush().await?;
        // The rollback records itself (one metadata write = one flush per disk), rolls every
        // chunk back, then flushes: power goes at that flush.
        left.store(3, std::sync::atomic::Ordering::Release);
        assert!(e.rollback("v", "s").await.is_err());
        drop(h);
        drop(e);
        let fd: Vec<_> = fd.iter().map(|d| Arc::new(d.reopen())).collect();
        let e = engine_on(&fault_dyn(&fd)).await?;
        let h = e.open_vdisk("v")?;
        let mut buf = vec![0u8; 4 * MIB as usize];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut busy = 0;
        loop {
            match h.read(0, &mut buf).await {
                Ok(()) => break,
                Err(err)
                    if err.kind() == ErrorKind::Busy && tokio::time::Instant::now() < deadline =>
                {
                    busy += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
        assert!(busy > 0, "I/O was served before the rollback was finished");
        assert!(
            buf == a,
            "the disk does not hold the snapshot's contents after the redo"
        );
        anyhow::Ok(())
    })
}
