//! End-to-end behaviour of one store on a RAM device: the contract's rules, one by one.

use std::sync::Arc;

use blockdev::{AlignedBuf, BlockDevice, RamDevice, WriteBuf, BLOCK_SIZE};
use store::{ErrorKind, Label, ObjectId, Probe, Store};
use uuid::Uuid;

const BS: usize = BLOCK_SIZE;

fn label() -> Label {
    Label {
        pool_id: Uuid::from_u128(7),
        disk_id: Uuid::from_u128(8),
        node_id: 1,
        created_unix: 1_700_000_000,
    }
}

fn blk(fill: u8, n: usize) -> WriteBuf {
    AlignedBuf::from_slice(&vec![fill; n * BS]).into_write()
}

fn o(c: u64) -> ObjectId {
    ObjectId { vdisk: 1, chunk: c }
}

async fn fresh(mb: u64) -> (Arc<RamDevice>, Store) {
    let dev = Arc::new(RamDevice::new("ram", mb << 20));
    let s = Store::format(dev.clone(), label()).await.unwrap();
    (dev, s)
}

async fn read_fill(s: &Store, obj: ObjectId, block: u64, gen: u64) -> u8 {
    let b = s.read(obj, block, 1, gen).await.unwrap();
    assert!(b.iter().all(|&x| x == b[0]), "block is uniform");
    b[0]
}

#[tokio::test]
async fn format_probe_reopen() {
    let dev = Arc::new(RamDevice::new("ram", 16 << 20));
    assert_eq!(Store::probe(&*dev).await.unwrap(), Probe::Blank);
    let e = Store::open(dev.clone()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotOurs);
    let s = Store::format(dev.clone(), label()).await.unwrap();
    assert_eq!(s.label(), &label());
    assert_eq!(Store::probe(&*dev).await.unwrap(), Probe::Ours(label()));
    let e = Store::format(dev.clone(), label()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotBlank);
    s.write(o(0), 3, blk(9, 2), 1, 0).await.unwrap();
    s.flush().await.unwrap();
    drop(s);
    let s = Store::open(dev.clone()).await.unwrap();
    assert_eq!(read_fill(&s, o(0), 3, u64::MAX).await, 9);
    assert_eq!(read_fill(&s, o(0), 4, u64::MAX).await, 9);
    assert_eq!(read_fill(&s, o(0), 5, u64::MAX).await, 0);
    s.check_invariants().unwrap();
    assert_eq!(s.space().used_blocks, 2);
}

#[tokio::test]
async fn foreign_devices_are_refused_unwritten() {
    let cases: Vec<(usize, &[u8], &str)> = vec![
        (512, b"EFI PART", "GPT"),
        (0x438, &[0x53, 0xef], "ext"),
        (0, b"XFSB", "xfs"),
        (512, b"LABELONE", "LVM"),
        (4086, b"SWAPSPACE2", "swap"),
        (510, &[0x55, 0xaa], "MBR"),
        (77, b"junk", "unrecognised"),
    ];
    for (off, sig, want) in cases {
        let dev = Arc::new(RamDevice::new("ram", 16 << 20));
        let mut b = AlignedBuf::zeroed(2 * BS);
        b[off..off + sig.len()].copy_from_slice(sig);
        dev.write_at(0, b.into_write()).await.unwrap();
        let before = dev.snapshot();
        match Store::probe(&*dev).await.unwrap() {
            Probe::Foreign(why) => assert!(why.contains(want), "{want}: got {why}"),
            p => panic!("{want}: got {p:?}"),
        }
        let e = Store::format(dev.clone(), label()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotBlank);
        assert!(dev.snapshot() == before, "format wrote to a foreign device");
    }
    // Data only at the very end (e.g. a backup GPT or md superblock) is not blank either.
    let dev = Arc::new(RamDevice::new("ram", 16 << 20));
    dev.write_at((16 << 20) - BS as u64, blk(1, 1))
        .await
        .unwrap();
    assert!(matches!(
        Store::probe(&*dev).await.unwrap(),
        Probe::Foreign(_)
    ));
}

/// The version records two replicas are compared by: every version, oldest first, with the
/// crc of its data (None for a discard), in block order; no data is read.
#[tokio::test]
async fn version_records_list_history_without_data() {
    let (_dev, s) = fresh(16).await;
    let obj = o(1);
    assert_eq!(s.version_records(obj), vec![]);
    s.write(obj, 2, blk(1, 1), 1, 0).await.unwrap();
    s.write(obj, 0, blk(2, 1), 1, 0).await.unwrap();
    s.write(obj, 0, blk(3, 1), 2, 1).await.unwrap();
    s.discard(obj, 2, 1, 2, 1).await.unwrap();
    let crc = |fill: u8| Some(blockdev::crc32c(&[fill; BS]));
    let rec = |block, gen, crc| store::VersionRecord { block, gen, crc };
    assert_eq!(
        s.version_records(obj),
        vec![
            rec(0, 1, crc(2)),
            rec(0, 2, crc(3)),
            rec(2, 1, crc(1)),
            rec(2, 2, None),
        ]
    );
}

#[tokio::test]
async fn versions_snapshots_and_space() {
    let (_dev, s) = fresh(16).await;
    let obj = o(1);
    s.write(obj, 0, blk(1, 1), 1, 0).await.unwrap();
    s.write(obj, 0, blk(2, 1), 1, 0).await.unwrap(); // same gen: replaced
    s.flush().await.unwrap();
    assert_eq!(s.space().used_blocks, 1);
    // snapshot 1 taken: gen becomes 2, pin 1
    s.write(obj, 0, blk(3, 1), 2, 1).await.unwrap();
    assert_eq!(read_fill(&s, obj, 0, 1).await, 2);
    assert_eq!(read_fill(&s, obj, 0, u64::MAX).await, 3);
    s.write(obj, 0, blk(4, 1), 2, 1).await.unwrap();
    assert_eq!(read_fill(&s, obj, 0, 1).await, 2);
    assert_eq!(s.changed_blocks(obj, 1, u64::MAX), vec![0]);
    s.flush().await.unwrap();
    assert_eq!(s.space().used_blocks, 2);
    // Writing below the newest generation is refused.
    let e = s.write(obj, 0, blk(5, 1), 1, 0).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    // Clone the snapshot, then delete the source: the clone keeps its data.
    s.clone_object(obj, 1, o(2), 1).await.unwrap();
    s.delete_object(obj).await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(read_fill(&s, o(2), 0, u64::MAX).await, 2);
    assert_eq!(s.space().used_blocks, 1);
    s.check_invariants().unwrap();
    // Discard frees once flushed.
    s.discard(o(2), 0, 1, 1, 0).await.unwrap();
    assert_eq!(read_fill(&s, o(2), 0, u64::MAX).await, 0);
    assert_eq!(s.space().pending_free_blocks, 1);
    s.flush().await.unwrap();
    let sp = s.space();
    assert_eq!(
        (sp.used_blocks, sp.pending_free_blocks, sp.free_blocks),
        (0, 0, sp.total_blocks)
    );
    s.check_invariants().unwrap();
}

#[tokio::test]
async fn bad_arguments_and_no_space() {
    let (_dev, s) = fresh(8).await;
    let k = |r: store::Result<()>| r.unwrap_err().kind();
    assert_eq!(
        k(s.write(o(0), 0, blk(1, 1), 0, 0).await),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        k(s.write(o(0), u64::MAX, blk(1, 1), 1, 0).await),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        s.read(o(0), 0, 0, 1).await.unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        k(s.put_meta(&vec![0; (1 << 20) + 1]).await),
        ErrorKind::InvalidArgument
    );
    let total = s.space().total_blocks;
    let mut written = 0;
    let mut chunk = 0;
    while written + 256 <= total {
        s.write(o(chunk), 0, blk(1, 256), 1, 0).await.unwrap();
        written += 256;
        chunk += 1;
    }
    let left = total - written;
    assert_eq!(
        k(s.write(o(999), 0, blk(1, left as usize + 1), 1, 0).await),
        ErrorKind::NoSpace
    );
    s.check_invariants().unwrap();
    assert_eq!(s.space().free_blocks, left, "a refused write takes nothing");
    // Overwrites on a full device never flush by themselves, but space freed by earlier
    // overwrites is reclaimed (by a flush) before a write is refused.
    for i in 0..(3 * left + 5) {
        s.write(o(0), i % 256, blk(2, 1), 1, 0).await.unwrap();
    }
    s.check_invariants().unwrap();
}

#[tokio::test]
async fn meta_slot_survives_reopen() {
    let (dev, s) = fresh(16).await;
    assert_eq!(s.get_meta(), None);
    s.put_meta(b"one").await.unwrap();
    s.put_meta(b"two").await.unwrap();
    drop(s);
    let s = Store::open(dev.clone()).await.unwrap();
    assert_eq!(s.get_meta().as_deref(), Some(&b"two"[..]));
    s.put_meta(&vec![5u8; 1 << 20]).await.unwrap();
    drop(s);
    let s = Store::open(dev).await.unwrap();
    assert_eq!(s.get_meta().unwrap().len(), 1 << 20);
}

#[tokio::test]
async fn rollback_prune_export_import() {
    let (dev, s) = fresh(16).await;
    let obj = o(3);
    s.write(obj, 0, blk(1, 4), 1, 0).await.unwrap();
    // snapshot 1; gen 2
    s.write(obj, 1, blk(2, 1), 2, 1).await.unwrap();
    s.discard(obj, 2, 1, 2, 1).await.unwrap();
    s.write(obj, 9, blk(3, 1), 2, 1).await.unwrap();
    let ex = s.export_object(obj).await.unwrap();
    s.rollback_object(obj, 1, 2, 1).await.unwrap();
    for (b, want) in [(0, 1), (1, 1), (2, 1), (3, 1), (9, 0)] {
        assert_eq!(read_fill(&s, obj, b, u64::MAX).await, want, "block {b}");
    }
    // Import the pre-rollback export as another object; history included.
    s.import_object(o(4), ex).await.unwrap();
    assert_eq!(read_fill(&s, o(4), 1, u64::MAX).await, 2);
    assert_eq!(read_fill(&s, o(4), 1, 1).await, 1);
    assert_eq!(read_fill(&s, o(4), 2, u64::MAX).await, 0);
    // Delete snapshot 1 of vdisk 1: prune keeps only live versions.
    s.prune(1, &[]).await.unwrap();
    assert_eq!(
        read_fill(&s, o(4), 1, 1).await,
        0,
        "the snapshot-1 version is gone"
    );
    assert_eq!(read_fill(&s, o(4), 1, u64::MAX).await, 2);
    s.flush().await.unwrap();
    s.check_invariants().unwrap();
    let used = s.space().used_blocks;
    s.close().await.unwrap();
    drop(s);
    let s = Store::open(dev).await.unwrap();
    s.check_invariants().unwrap();
    assert_eq!(s.space().used_blocks, used);
    assert_eq!(read_fill(&s, o(4), 9, u64::MAX).await, 3);
}
