//! virtio-blk without a guest: chains built in memory with virtio-queue's mock split queue.

use super::blk::*;
use crate::backend::{DiskBackend, RamDisk, CHUNK_BYTES};
use crate::memory::GuestMemoryMmap;
use crate::stats::DeviceCounters;
use std::sync::Arc;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

const QLEN: u16 = 16;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

struct Rig {
    mem: Arc<GuestMemoryMmap>,
    backend: Arc<RamDisk>,
    handler: BlkQueueHandler,
    counters: Arc<DeviceCounters>,
}

impl Rig {
    fn new(read_only: bool) -> Rig {
        Self::with_memory(read_only, &[(GuestAddress(0), 0x100_0000)], 1 << 20)
    }

    /// A rig whose guest memory is made of `ranges`, on a RAM disk of `disk_bytes`.
    fn with_memory(read_only: bool, ranges: &[(GuestAddress, usize)], disk_bytes: u64) -> Rig {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(ranges).unwrap());
        let disk = RamDisk::new(disk_bytes);
        let backend = Arc::new(if read_only { disk.read_only() } else { disk });
        let counters = Arc::new(DeviceCounters::default());
        let handler = BlkQueueHandler::new(
            backend.clone() as Arc<dyn DiskBackend>,
            mem.clone(),
            "serial-123",
            counters.clone(),
        );
        Rig {
            mem,
            backend,
            handler,
            counters,
        }
    }

    fn header(&self, rtype: u32, sector: u64) {
        self.mem.write_obj(rtype, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Runs `n_rounds` copies of the chain `descs` (addr, len, flags; NEXT links added) through
    /// one queue, one request per round; returns (status byte, used len) of the last.
    fn run_rounds(&mut self, descs: &[(u64, u32, u16)], rounds: usize) -> (u8, u32) {
        let vq = MockSplitQueue::new(&*self.mem, QLEN);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut last = (0, 0);
        for round in 0..rounds {
            let base = ((round * descs.len()) % usize::from(QLEN)) as u16;
            for (i, &(addr, len, flags)) in descs.iter().enumerate() {
                let idx = (base + i as u16) % QLEN;
                let has_next = i + 1 < descs.len();
                let f = if has_next {
                    flags | NEXT
                } else {
                    flags & !NEXT
                };
                let next = (idx + 1) % QLEN;
                vq.desc_table()
                    .store(
                        idx,
                        RawDescriptor::from(SplitDescriptor::new(addr, len, f, next)),
                    )
                    .unwrap();
            }
            let avail = vq.avail_addr();
            let aidx: u16 = self.mem.read_obj(avail.unchecked_add(2)).unwrap();
            self.mem
                .write_obj(base, avail.unchecked_add(4 + u64::from(aidx % QLEN) * 2))
                .unwrap();
            self.mem
                .write_obj(aidx.wrapping_add(1), avail.unchecked_add(2))
                .unwrap();
            self.handler.process_queue(&mut q);
            let used = vq.used_addr();
            let uidx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
            assert_eq!(
                uidx,
                aidx.wrapping_add(1),
                "every request completes, even bad ones"
            );
            let elem = used.unchecked_add(4 + u64::from(aidx % QLEN) * 8);
            let id: u32 = self.mem.read_obj(elem).unwrap();
            assert_eq!(id, u32::from(base));
            let len: u32 = self.mem.read_obj(elem.unchecked_add(4)).unwrap();
            last = (self.mem.read_obj(GuestAddress(STATUS)).unwrap(), len);
        }
        last
    }

    fn run(&mut self, descs: &[(u64, u32, u16)]) -> (u8, u32) {
        self.run_rounds(descs, 1)
    }
}

fn rw(len: u32, write_data: bool) -> [(u64, u32, u16); 3] {
    [
        (HDR, 16, 0),
        (DATA, len, if write_data { 0 } else { WRITE }),
        (STATUS, 1, WRITE),
    ]
}

#[test]
fn write_then_read_roundtrip() {
    let mut r = Rig::new(false);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    r.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    r.header(T_OUT, 8);
    assert_eq!(r.run(&rw(4096, true)), (S_OK, 1));
    let mut back = vec![0u8; 4096];
    r.backend.read(8 * 512, &mut back).unwrap();
    assert_eq!(back, pattern);
    r.mem.write_slice(&[0u8; 4096], GuestAddress(DATA)).unwrap();
    r.header(T_IN, 8);
    assert_eq!(r.run(&rw(4096, false)), (S_OK, 4097));
    r.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, pattern);
    let s = r.counters.snapshot("d");
    assert_eq!(
        (s.read_ops, s.write_ops, s.read_bytes, s.write_bytes),
        (1, 1, 4096, 4096)
    );
}

#[test]
fn split_header_and_scattered_data() {
    let mut r = Rig::new(false);
    r.backend.write(0, &[0x5a; 1024]).unwrap();
    r.header(T_IN, 0);
    let descs = [
        (HDR, 8, 0),
        (HDR + 8, 8, 0),
        (DATA, 512, WRITE),
        (DATA + 0x1000, 512, WRITE),
        (STATUS, 1, WRITE),
    ];
    assert_eq!(r.run(&descs), (S_OK, 1025));
    let mut a = [0u8; 512];
    r.mem
        .read_slice(&mut a, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(a, [0x5a; 512]);
}

#[test]
fn flush_get_id_discard_write_zeroes_unknown() {
    let mut r = Rig::new(false);
    r.header(T_FLUSH, 0);
    assert_eq!(r.run(&[(HDR, 16, 0), (STATUS, 1, WRITE)]), (S_OK, 1));
    r.header(T_GET_ID, 0);
    assert_eq!(r.run(&rw(20, false)), (S_OK, 21));
    let mut id = [0u8; 20];
    r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..10], b"serial-123");
    assert_eq!(&id[10..], &[0u8; 10]);

    r.backend.write(0, &[1u8; 8192]).unwrap();
    for rtype in [T_DISCARD, T_WRITE_ZEROES] {
        r.header(rtype, 0);
        let seg: [u64; 2] = [if rtype == T_DISCARD { 0 } else { 8 }, 8]; // sector, then (num_sectors=8, flags=0)
        r.mem.write_obj(seg[0], GuestAddress(DATA)).unwrap();
        r.mem.write_obj(seg[1], GuestAddress(DATA + 8)).unwrap();
        assert_eq!(r.run(&rw(16, true)), (S_OK, 1), "type {rtype}");
    }
    let mut back = vec![1u8; 8192];
    r.backend.read(0, &mut back).unwrap();
    assert!(back.iter().all(|b| *b == 0));
    // Discard with the unmap flag (only valid for write-zeroes) is unsupported.
    r.header(T_DISCARD, 0);
    r.mem.write_obj(0u64, GuestAddress(DATA)).unwrap();
    r.mem
        .write_obj(8u64 | (1u64 << 32), GuestAddress(DATA + 8))
        .unwrap();
    assert_eq!(r.run(&rw(16, true)).0, S_UNSUPP);
    r.header(77, 0);
    assert_eq!(r.run(&[(HDR, 16, 0), (STATUS, 1, WRITE)]).0, S_UNSUPP);
}

#[test]
fn out_of_range_and_bad_sizes_are_ioerr() {
    let mut r = Rig::new(false);
    r.header(T_IN, (1 << 20) / 512); // first sector past the end
    assert_eq!(r.run(&rw(512, false)).0, S_IOERR);
    r.header(T_OUT, u64::MAX / 256); // sector * 512 overflows
    assert_eq!(r.run(&rw(512, true)).0, S_IOERR);
    r.header(T_IN, 0);
    assert_eq!(r.run(&rw(100, false)).0, S_IOERR, "not a multiple of 512");
    r.header(T_DISCARD, 0);
    r.mem
        .write_obj((1u64 << 20) / 512, GuestAddress(DATA))
        .unwrap();
    r.mem.write_obj(8u64, GuestAddress(DATA + 8)).unwrap();
    assert_eq!(r.run(&rw(16, true)).0, S_IOERR);
    // Header shorter than 16 bytes.
    r.header(T_IN, 0);
    assert_eq!(r.run(&[(HDR, 8, 0), (STATUS, 1, WRITE)]).0, S_IOERR);
    assert!(r.counters.snapshot("d").errors >= 5);
}

#[test]
fn read_only_disk_refuses_writes() {
    let mut r = Rig::new(true);
    r.header(T_OUT, 0);
    assert_eq!(r.run(&rw(512, true)).0, S_IOERR);
    r.header(T_WRITE_ZEROES, 0);
    assert_eq!(r.run(&rw(16, true)).0, S_IOERR);
    r.header(T_IN, 0);
    assert_eq!(r.run(&rw(512, false)).0, S_OK);
}

#[test]
fn malformed_chains_complete_with_zero_length() {
    let mut r = Rig::new(false);
    // Data descriptor outside guest memory.
    r.header(T_IN, 0);
    assert_eq!(
        r.run(&[
            (HDR, 16, 0),
            (0xdead_0000_0000, 512, WRITE),
            (STATUS, 1, WRITE)
        ]),
        (0xff, 0)
    );
    // Device-readable descriptor after a writable one.
    assert_eq!(
        r.run(&[
            (HDR, 16, 0),
            (DATA, 512, WRITE),
            (DATA + 0x1000, 16, 0),
            (STATUS, 1, WRITE)
        ])
        .1,
        0
    );
    // No writable byte for the status.
    assert_eq!(r.run(&[(HDR, 16, 0), (DATA, 512, 0)]).1, 0);
    // Descriptor wrapping the end of the address space.
    assert_eq!(
        r.run(&[
            (HDR, 16, 0),
            (u64::MAX - 10, 512, WRITE),
            (STATUS, 1, WRITE)
        ])
        .1,
        0
    );
    assert!(r.counters.snapshot("d").errors >= 4);
}

#[test]
fn descriptor_loop_terminates() {
    let mut r = Rig::new(false);
    r.header(T_IN, 0);
    let vq = MockSplitQueue::new(&*r.mem, QLEN);
    let mut q: Queue = vq.create_queue().unwrap();
    // Descriptor 0 points to itself forever.
    vq.desc_table()
        .store(
            0,
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, NEXT, 0)),
        )
        .unwrap();
    let avail = vq.avail_addr();
    r.mem.write_obj(0u16, avail.unchecked_add(4)).unwrap();
    r.mem.write_obj(1u16, avail.unchecked_add(2)).unwrap();
    r.handler.process_queue(&mut q);
    let uidx: u16 = r.mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
    assert_eq!(
        uidx, 1,
        "the looping chain is completed (as failed), not spun on"
    );
}

#[test]
fn ring_index_past_the_queue_size_is_not_spun_on() {
    let mut r = Rig::new(false);
    let vq = MockSplitQueue::new(&*r.mem, QLEN);
    let mut q: Queue = vq.create_queue().unwrap();
    q.set_event_idx(true);
    // The guest claims QLEN + 5 new chains: more than the ring holds, so none can be taken,
    // and the index stays "pending" however often the device re-arms.
    r.mem
        .write_obj(QLEN + 5, vq.avail_addr().unchecked_add(2))
        .unwrap();
    assert!(!r.handler.process_queue(&mut q), "nothing to interrupt for");
    let uidx: u16 = r.mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
    assert_eq!(uidx, 0, "no chain taken from a garbage index");
    assert_eq!(r.handler.serve_available(&mut q), (false, false));
}

#[test]
fn queue_wraps_around_many_times() {
    let mut r = Rig::new(false);
    r.mem.write_slice(&[9u8; 512], GuestAddress(DATA)).unwrap();
    r.header(T_OUT, 3);
    // 3 descriptors per request on a 16-entry queue: ring and table positions wrap repeatedly.
    assert_eq!(r.run_rounds(&rw(512, true), 50), (S_OK, 1));
    assert_eq!(r.counters.snapshot("d").write_ops, 50);
}

#[test]
fn oversized_request_is_refused() {
    let mut r = Rig::new(false);
    r.header(T_IN, 0);
    let too_big = u32::try_from(MAX_REQUEST_BYTES).unwrap() + 512;
    assert_eq!(r.run(&rw(too_big, false)).0, S_IOERR);
}

#[test]
fn indirect_descriptor_table() {
    const INDIRECT: u16 = 4;
    const TABLE: u64 = 0x40_0000;
    let mut r = Rig::new(false);
    r.backend.write(0, &[0x33; 512]).unwrap();
    r.header(T_IN, 0);
    for (i, (addr, len, flags, next)) in [
        (HDR, 16u32, NEXT, 1u16),
        (DATA, 512, NEXT | WRITE, 2),
        (STATUS, 1, WRITE, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let at = TABLE + 16 * i as u64;
        r.mem.write_obj(addr, GuestAddress(at)).unwrap();
        r.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        r.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        r.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }
    assert_eq!(r.run(&[(TABLE, 48, INDIRECT)]), (S_OK, 513));
    let mut b = [0u8; 512];
    r.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
    assert_eq!(b, [0x33; 512]);
    // An indirect table that lies outside guest memory fails the request, not the device.
    r.header(T_IN, 0);
    assert_eq!(r.run(&[(0xdead_0000_0000, 48, INDIRECT)]).1, 0);
}

/// Two adjacent guest regions split at `DATA + 0x800`, on a disk of two RAM disk chunks: data
/// descriptors straddle the region boundary and the request straddles the chunk boundary, so
/// the RAM disk's one direct copy is cut at both.
#[test]
fn direct_copies_cross_guest_regions_and_disk_chunks() {
    let split = DATA + 0x800;
    let ranges = [
        (GuestAddress(0), split as usize),
        (GuestAddress(split), 0x100_0000 - split as usize),
    ];
    let mut r = Rig::with_memory(false, &ranges, 2 * CHUNK_BYTES);
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
    r.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    // 2048 bytes before the chunk boundary; the data in two descriptors, the first crossing
    // the region split.
    let sector = (CHUNK_BYTES - 2048) / 512;
    let descs = [
        (HDR, 16, 0),
        (DATA, 4096, 0),
        (DATA + 4096, 4096, 0),
        (STATUS, 1, WRITE),
    ];
    r.header(T_OUT, sector);
    assert_eq!(r.run(&descs), (S_OK, 1));
    let mut back = vec![0u8; 8192];
    r.backend.read(sector * 512, &mut back).unwrap();
    assert_eq!(back, pattern);
    // Read it back through descriptors cut differently (1 KiB then 7 KiB).
    r.mem.write_slice(&[0u8; 8192], GuestAddress(DATA)).unwrap();
    r.header(T_IN, sector);
    let descs = [
        (HDR, 16, 0),
        (DATA + 0x400, 1024, WRITE),
        (DATA + 0x1000, 7168, WRITE),
        (STATUS, 1, WRITE),
    ];
    assert_eq!(r.run(&descs), (S_OK, 8193));
    let mut got = vec![0u8; 8192];
    r.mem
        .read_slice(&mut got[..1024], GuestAddress(DATA + 0x400))
        .unwrap();
    r.mem
        .read_slice(&mut got[1024..], GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(got, pattern);
}

#[test]
fn direct_read_of_never_written_space_is_zeros() {
    let mut r = Rig::with_memory(false, &[(GuestAddress(0), 0x100_0000)], 2 << 20);
    // Longer than the RAM disk's zero block, so it is lent in several pieces.
    let len = 3 * 4096 + 512;
    r.mem
        .write_slice(&vec![0xee; len], GuestAddress(DATA))
        .unwrap();
    r.header(T_IN, 8);
    assert_eq!(r.run(&rw(len as u32, false)), (S_OK, len as u32 + 1));
    let mut got = vec![0xffu8; len];
    r.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert!(got.iter().all(|b| *b == 0));
}

/// A chain checked against guest memory that the queue's own memory does not have (as if the
/// memory had gone): the direct copy fails cleanly with IOERR, for reads and writes.
#[test]
fn a_direct_copy_that_fails_in_guest_memory_is_ioerr() {
    let mut r = Rig::new(false);
    r.backend.write(0, &[0x11; 4096]).unwrap();
    let bigger = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x200_0000)]).unwrap();
    let gone = 0x180_0000u64; // inside `bigger`, past the rig's 16 MiB
    for (rtype, data_flags) in [(T_IN, true), (T_OUT, false)] {
        r.header(rtype, 0);
        let chain = Chain::walk(
            &bigger,
            [
                (HDR, 16, false),
                (gone, 4096, data_flags),
                (STATUS, 1, true),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(r.handler.execute(&chain), Outcome::IOERR);
    }
    let mut back = [0u8; 4096];
    r.backend.read(0, &mut back).unwrap();
    assert_eq!(
        back, [0x11; 4096],
        "the write whose source was unreadable changed nothing"
    );
}

/// A RAM disk without its direct copies: every request goes through the bounce buffer.
struct NoLending(RamDisk);

impl DiskBackend for NoLending {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), crate::backend::BackendError> {
        self.0.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), crate::backend::BackendError> {
        self.0.write(offset, data)
    }
    fn flush(&self) -> Result<(), crate::backend::BackendError> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), crate::backend::BackendError> {
        self.0.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), crate::backend::BackendError> {
        self.0.write_zeroes(offset, len)
    }
}

#[test]
fn bounce_buffer_only_for_a_backend_that_lends_no_bytes() {
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 13) as u8).collect();
    // The RAM disk lends its bytes: reads and writes never allocate a bounce buffer.
    let mut r = Rig::new(false);
    r.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    r.header(T_OUT, 16);
    assert_eq!(r.run(&rw(8192, true)), (S_OK, 1));
    r.header(T_IN, 16);
    assert_eq!(r.run(&rw(8192, false)), (S_OK, 8193));
    assert_eq!(r.handler.bounce_bytes(), 0);
    // A backend without direct copies gets one on its first request, and the data is right.
    let disk = Arc::new(NoLending(RamDisk::new(1 << 20)));
    r.handler = BlkQueueHandler::new(
        disk.clone() as Arc<dyn DiskBackend>,
        r.mem.clone(),
        "serial-123",
        r.counters.clone(),
    );
    assert_eq!(r.handler.bounce_bytes(), 0);
    r.header(T_OUT, 16);
    assert_eq!(r.run(&rw(8192, true)), (S_OK, 1));
    assert!(r.handler.bounce_bytes() >= MAX_REQUEST_BYTES);
    let mut back = vec![0u8; 8192];
    disk.read(16 * 512, &mut back).unwrap();
    assert_eq!(back, pattern);
    r.mem.write_slice(&[0u8; 8192], GuestAddress(DATA)).unwrap();
    r.header(T_IN, 16);
    assert_eq!(r.run(&rw(8192, false)), (S_OK, 8193));
    r.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, pattern);
}
