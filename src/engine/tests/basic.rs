//! End-to-end behaviour of one engine on RAM disks: I/O, snapshots, clones, diffs, restart.

mod common;

use common::*;
use engine::ErrorKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_snapshot_clone_restart() -> anyhow::Result<()> {
    let devs = ram_disks(3, 64 * MIB);
    let e = engine_on(&as_dyn(&devs)).await?;
    assert_eq!(e.disks().len(), 3);
    e.create_vdisk("a", 8 * MIB).await?;
    let h = e.open_vdisk("a")?;
    // Aligned write spanning a chunk boundary, and an unaligned one.
    let d1 = pattern(1, 3 * 4096);
    h.write(MIB - 4096, &d1).await?;
    let d2 = pattern(2, 1000);
    h.write(5 * MIB + 123, &d2).await?;
    let mut buf = vec![0u8; d1.len()];
    h.read(MIB - 4096, &mut buf).await?;
    assert_eq!(buf, d1);
    let mut buf = vec![0u8; 1000];
    h.read(5 * MIB + 123, &mut buf).await?;
    assert_eq!(buf, d2);
    let mut zeros = vec![1u8; 4096];
    h.read(7 * MIB, &mut zeros).await?;
    assert!(zeros.iter().all(|&b| b == 0), "thin disk reads zeros");

    e.create_snapshot("a", "s1").await?;
    h.write(MIB, &pattern(3, 4096)).await?;
    let snap = e.open_snapshot("a", "s1")?;
    assert!(snap.read_only());
    let mut buf = vec![0u8; d1.len()];
    snap.read(MIB - 4096, &mut buf).await?;
    assert_eq!(buf, d1, "snapshot keeps old contents");
    assert_eq!(
        snap.write(0, &[0; 4096]).await.unwrap_err().kind(),
        ErrorKind::ReadOnly
    );

    let ranges = e.changed_ranges("a", "s1", None).await?;
    assert_eq!(ranges, vec![(MIB, 4096)]);

    e.clone_vdisk("a", Some("s1"), "c").await?;
    let c = e.open_vdisk("c")?;
    let mut buf = vec![0u8; d1.len()];
    c.read(MIB - 4096, &mut buf).await?;
    assert_eq!(buf, d1);
    h.flush().await?;

    e.shutdown().await?;
    drop(e);
    let e = engine_on(&as_dyn(&devs)).await?;
    let h = e.open_vdisk("a")?;
    let mut buf = vec![0u8; 4096];
    h.read(MIB, &mut buf).await?;
    assert_eq!(buf, pattern(3, 4096));
    assert_eq!(e.changed_ranges("a", "s1", None).await?, vec![(MIB, 4096)]);
    // Between two snapshots, after another restart.
    h.write(3 * MIB, &pattern(4, 3 * 4096)).await?;
    e.create_snapshot("a", "s2").await?;
    h.write(6 * MIB, &pattern(5, 4096)).await?;
    h.flush().await?;
    e.shutdown().await?;
    let e = engine_on(&as_dyn(&devs)).await?;
    assert_eq!(
        e.changed_ranges("a", "s1", Some("s2")).await?,
        vec![(MIB, 4096), (3 * MIB, 3 * 4096)]
    );
    assert_eq!(
        e.changed_ranges("a", "s2", None).await?,
        vec![(6 * MIB, 4096)]
    );
    let c = e.open_vdisk("c")?;
    let mut buf = vec![0u8; d1.len()];
    c.read(MIB - 4096, &mut buf).await?;
    assert_eq!(buf, d1);
    e.shutdown().await?;
    Ok(())
}
