//! Many virtual disks (listing and lookup stay cheap, the limit is the metadata size, not an
//! arbitrary count) and the per-virtual-disk I/O counters.

mod common;

use common::*;
use engine::ErrorKind;

#[tokio::test]
async fn thousands_of_vdisks_list_and_survive_a_restart() -> anyhow::Result<()> {
    let devs = ram_disks(2, 64 * MIB);
    let e = engine_on(&as_dyn(&devs)).await?;
    // Each create persists the whole metadata (O(N) each), so keep the default run short.
    const N: usize = 1_200;
    for i in 0..N {
        e.create_vdisk(&format!("vm-{i:05}"), 4 * MIB).await?;
    }
    const { assert!(N > 1024, "more than the old cap of 1,024") };
    let list = e.vdisks();
    assert_eq!(list.len(), N);
    assert_eq!(e.vdisk("vm-01150")?.size_bytes, 4 * MIB);
    // Used space per disk comes from a per-disk count, kept by writes and deletes.
    let h = e.open_vdisk("vm-00007")?;
    h.write(MIB, &pattern(1, 8192)).await?;
    h.write(3 * MIB, &pattern(2, 4096)).await?;
    assert_eq!(e.vdisk("vm-00007")?.used_bytes, 2 * MIB);
    assert_eq!(e.vdisk("vm-00008")?.used_bytes, 0);
    e.delete_vdisk("vm-00009").await?;
    assert_eq!(e.vdisk("vm-00009").unwrap_err().kind(), ErrorKind::NotFound);
    e.shutdown().await?;
    drop((h, e));
    let e = engine_on(&as_dyn(&devs)).await?;
    assert_eq!(e.vdisks().len(), N - 1);
    assert_eq!(e.vdisk("vm-00007")?.used_bytes, 2 * MIB);
    Ok(())
}

#[tokio::test]
async fn per_vdisk_counters_count_ops_bytes_errors_and_latency() -> anyhow::Result<()> {
    let devs = ram_disks(2, 64 * MIB);
    let e = engine_on(&as_dyn(&devs)).await?;
    e.create_vdisk("a", 8 * MIB).await?;
    e.create_vdisk("b", 8 * MIB).await?;
    let s = e.vdisk_stats("a")?;
    assert_eq!((s.read.ops, s.write.ops, s.used_bytes), (0, 0, 0));
    assert_eq!(s.latency_buckets_us.len() + 1, s.read.latency_hist.len());
    let h = e.open_vdisk("a")?;
    for i in 0..10u64 {
        h.write(i * 4096, &pattern(i, 4096)).await?;
    }
    let mut buf = vec![0u8; 65536];
    h.read(0, &mut buf).await?;
    h.read(100, &mut buf[..10]).await?; // unaligned counts too
    assert!(h.read(8 * MIB, &mut buf).await.is_err(), "beyond the end");
    h.flush().await?;
    h.discard(0, 8192).await?;
    e.create_snapshot("a", "s").await?;
    let snap = e.open_snapshot("a", "s")?;
    snap.read(0, &mut buf[..4096]).await?;

    let s = e.vdisk_stats("a")?;
    assert_eq!(s.name, "a");
    assert_eq!(s.write.ops, 10);
    assert_eq!(s.write.bytes, 10 * 4096);
    assert_eq!(s.read.ops, 4, "three on the disk, one on its snapshot");
    assert_eq!(s.read.errors, 1);
    assert_eq!(s.read.bytes, 65536 + 10 + 4096);
    assert_eq!((s.flush.ops, s.discard.ops, s.discard.bytes), (1, 1, 8192));
    for op in [&s.read, &s.write, &s.flush, &s.discard] {
        assert_eq!(op.latency_hist.iter().sum::<u64>(), op.ops);
    }
    assert!(s.write.latency_us_sum > 0);
    assert_eq!(s.used_bytes, 1 << 20);
    // Another disk is untouched; the list has one entry per disk.
    assert_eq!(e.vdisk_stats("b")?.write.ops, 0);
    let all = e.vdisks_stats();
    assert_eq!(all.len(), 2);
    assert_eq!(all.iter().find(|v| v.name == "a").unwrap(), &s);
    assert_eq!(
        e.vdisk_stats("nope").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    Ok(())
}
