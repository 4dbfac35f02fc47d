//! Direct reads and writes ([`super::blk_direct`]) without a guest: virtio-queue's mock split
//! queue in front of an async queue on a real engine (two io_uring file devices, buffered where
//! the file system refuses O_DIRECT), driven as its queue thread drives it. The device counters
//! tell which reads and writes took the direct path, so a test fails if it silently never runs.

use super::blk::{S_OK, T_FLUSH, T_IN, T_OUT};
use super::blk_async::{AsyncQueue, PolledAsyncQueue, QueueSetup, WriteOrder};
use super::blk_direct::DirectReads;
use super::blk_uring::{QueueRing, RingHome};
use super::PolledQueue;
use crate::backend::DiskBackend;
use crate::backend_engine::EngineDisk;
use crate::memory::GuestMemoryMmap;
use crate::stats::DeviceCounters;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const QLEN: u16 = 32;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const MIB: u64 = 1 << 20;

/// A pool of two io_uring file devices with one 16 MiB virtual disk; None (after printing
/// why) where io_uring devices cannot be opened.
struct Pool {
    rt: tokio::runtime::Runtime,
    engine: engine::Engine,
    disk: EngineDisk,
    _dir: tempfile::TempDir,
}

fn pool() -> Option<Pool> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt.block_on(async {
        let e = engine::Engine::open(engine::EngineConfig {
            node_id: 1,
            node_name: "vmm-direct".into(),
        })
        .await
        .unwrap();
        for i in 0..2 {
            let path = dir.path().join(format!("d{i}.img"));
            blockdev::create_sparse_file(&path, 64 * MIB).unwrap();
            match blockdev::open_device(&path) {
                Ok(d) => {
                    e.add_disk(d).await.unwrap();
                }
                Err(err) => {
                    println!("skipped: io_uring device unavailable here: {err}");
                    return None;
                }
            }
        }
        e.create_vdisk("d", 16 * MIB).await.unwrap();
        Some(e)
    })?;
    let disk = EngineDisk::new(engine.open_vdisk("d").unwrap(), rt.handle().clone());
    Some(Pool {
        rt,
        engine,
        disk,
        _dir: dir,
    })
}

/// An async queue on the pool's disk with direct reads, as the device's queue thread holds it.
struct Rig<'m> {
    mem: &'m GuestMemoryMmap,
    vq: MockSplitQueue<'m, GuestMemoryMmap>,
    pq: PolledAsyncQueue,
    counters: Arc<DeviceCounters>,
    home: RingHome,
    added: u16,
}

impl<'m> Rig<'m> {
    /// None (after printing why) where the kernel refuses io_uring.
    fn new(p: &Pool, mem: &'m GuestMemoryMmap, mem_arc: Arc<GuestMemoryMmap>) -> Option<Self> {
        let Some(ring) = QueueRing::unbound(QLEN) else {
            println!("skipped: io_uring unavailable");
            return None;
        };
        let home: RingHome = Arc::new(parking_lot::Mutex::new(Some(ring)));
        let vq = MockSplitQueue::new(mem, QLEN);
        let counters = Arc::new(DeviceCounters::default());
        let a = p.disk.as_async().unwrap();
        let handle = a.engine_handle().unwrap().clone();
        let q = AsyncQueue::new(
            vq.create_queue().unwrap(),
            QueueSetup {
                mem: mem_arc,
                disk: a,
                order: Arc::new(WriteOrder::new(usize::from(QLEN))),
                counters: counters.clone(),
                irq: Box::new(|| {}),
                serial: super::blk::serial_bytes("direct"),
                size: p.disk.size_bytes(),
                read_only: false,
                queue_index: 0,
                kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                limit: usize::from(QLEN),
            },
        );
        let direct = DirectReads::new(home.clone(), handle);
        assert!(direct.is_some(), "the ring is lent to the queue");
        Some(Rig {
            mem,
            vq,
            pq: PolledAsyncQueue::new(q, direct),
            counters,
            home,
            added: 0,
        })
    }

    /// Offers a read of the sectors at `sector` into the given (address, length) segments;
    /// returns its number. Request r uses descriptors r % 6 * 5.. (at most 3 segments, at most
    /// 6 requests unanswered) and status byte STATUS + r.
    fn read(&mut self, sector: u64, segs: &[(u64, u32)]) -> u16 {
        self.offer(T_IN, sector, segs)
    }

    /// Offers a write of the given (address, length) segments to the sectors at `sector`, as
    /// [`Rig::read`] offers a read.
    fn write(&mut self, sector: u64, segs: &[(u64, u32)]) -> u16 {
        self.offer(T_OUT, sector, segs)
    }

    fn offer(&mut self, kind: u32, sector: u64, segs: &[(u64, u32)]) -> u16 {
        let (mem, r) = (self.mem, self.added);
        let data_flags = if kind == T_IN { WRITE } else { 0 };
        self.added += 1;
        let hdr = HDR + u64::from(r) * 0x100;
        mem.write_obj(kind, GuestAddress(hdr)).unwrap();
        mem.write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS + u64::from(r)))
            .unwrap();
        // Descriptors r % 6 * 5..: free again once the request six before was answered.
        let used: u16 = mem.read_obj(self.vq.used_addr().unchecked_add(2)).unwrap();
        assert!(segs.len() <= 3 && r - used < QLEN / 5 && r < 0x100);
        let first = r % (QLEN / 5) * 5;
        let mut descs = vec![(hdr, 16, 0)];
        descs.extend(segs.iter().map(|&(a, l)| (a, l, data_flags)));
        descs.push((STATUS + u64::from(r), 1, WRITE));
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = first + i as u16;
            let f = if i + 1 < descs.len() {
                flags | NEXT
            } else {
                flags
            };
            let d = SplitDescriptor::new(addr, len, f, idx + 1);
            self.vq
                .desc_table()
                .store(idx, RawDescriptor::from(d))
                .unwrap();
        }
        let avail = self.vq.avail_addr();
        let aidx: u16 = mem.read_obj(avail.unchecked_add(2)).unwrap();
        mem.write_obj(first, avail.unchecked_add(4 + u64::from(aidx % QLEN) * 2))
            .unwrap();
        mem.write_obj(aidx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
        r
    }

    /// Serves (as the queue thread does on kicks and completions) until every request offered
    /// was published; no time bound beyond a generous safety net.
    fn run(&mut self) {
        for _ in 0..100_000 {
            self.pq.serve();
            let used: u16 = self
                .mem
                .read_obj(self.vq.used_addr().unchecked_add(2))
                .unwrap();
            if used == self.added {
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        panic!("requests never completed");
    }

    fn status(&self, r: u16) -> u8 {
        self.mem
            .read_obj(GuestAddress(STATUS + u64::from(r)))
            .unwrap()
    }

    fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 7) as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

fn guest_memory() -> Arc<GuestMemoryMmap> {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap())
}

/// Reads of written blocks are served on the queue thread's ring and return the written data,
/// whatever the guest buffers' shape (one or many segments, an odd address, a block across two
/// segments: the device is read into the thread's own buffer, then copied); a hole reads as
/// zeros through the engine. The engine's statistics count every read, direct or not.
#[test]
fn engine_reads_are_served_on_the_queue_thread_with_the_written_data() {
    let Some(p) = pool() else { return };
    let h = p.disk.as_async().unwrap().engine_handle().unwrap().clone();
    let (a, b) = (pattern(64 << 10, 1), pattern(8 << 10, 99));
    p.rt.block_on(h.write(0, &a)).unwrap();
    p.rt.block_on(h.write(MIB, &b)).unwrap();
    let reads_before = p.engine.stats().reads;
    let mem_arc = guest_memory();
    let mem: &GuestMemoryMmap = &mem_arc;
    let Some(mut rig) = Rig::new(&p, mem, mem_arc.clone()) else {
        return;
    };
    mem.write_slice(&[0xeeu8; 4096], GuestAddress(DATA + 0x3_0000))
        .unwrap();
    let r0 = rig.read(0, &[(DATA, 4096)]);
    let r1 = rig.read(0, &[(DATA + 0x1_0000, 64 << 10)]);
    let r2 = rig.read(
        MIB / 512,
        &[(DATA + 0x2_0000, 4096), (DATA + 0x2_8000, 4096)],
    );
    let hole = rig.read(2 * MIB / 512, &[(DATA + 0x3_0000, 4096)]);
    let odd = rig.read(8, &[(DATA + 0x4_0001, 4096)]);
    let split = rig.read(8, &[(DATA + 0x5_0000, 2048), (DATA + 0x5_1000, 2048)]);
    rig.run();
    for r in [r0, r1, r2, hole, odd, split] {
        assert_eq!(rig.status(r), S_OK, "request {r}");
    }
    assert_eq!(rig.bytes(DATA, 4096), a[..4096]);
    assert_eq!(rig.bytes(DATA + 0x1_0000, 64 << 10), a);
    assert_eq!(rig.bytes(DATA + 0x2_0000, 4096), b[..4096]);
    assert_eq!(rig.bytes(DATA + 0x2_8000, 4096), b[4096..]);
    assert_eq!(rig.bytes(DATA + 0x3_0000, 4096), vec![0u8; 4096]);
    assert_eq!(rig.bytes(DATA + 0x4_0001, 4096), a[4096..8192]);
    assert_eq!(rig.bytes(DATA + 0x5_0000, 2048), a[4096..6144]);
    assert_eq!(rig.bytes(DATA + 0x5_1000, 2048), a[6144..8192]);
    let c = &rig.counters;
    assert_eq!(
        c.direct_reads.load(Relaxed),
        5,
        "r0, r1, r2, odd and split read directly"
    );
    assert_eq!(c.direct_fallbacks.load(Relaxed), 0);
    assert_eq!(c.read_ops.load(Relaxed), 6);
    assert_eq!(c.errors.load(Relaxed), 0);
    assert_eq!(p.engine.stats().reads - reads_before, 6);
    let home = rig.home.clone();
    drop(rig);
    assert!(
        home.lock().is_some(),
        "the ring goes back when the queue ends"
    );
    p.rt.block_on(p.engine.shutdown()).unwrap();
}

/// A block corrupted on the replica the direct path reads: the read is redone by the engine,
/// which returns the good copy and repairs the bad one (the direct path itself repairs
/// nothing); the next direct read then verifies.
#[test]
fn a_corrupt_replica_block_is_read_again_by_the_engine_which_repairs_it() {
    let Some(p) = pool() else { return };
    let h = p.disk.as_async().unwrap().engine_handle().unwrap().clone();
    let good = pattern(4096, 7);
    p.rt.block_on(h.write(0, &good)).unwrap();
    p.rt.block_on(h.flush()).unwrap();
    // The replica the direct path plans for block 0 is the one the engine reads first too
    // (the lowest slot: no tie-break swap at block 0 of chunk 0).
    let mut plan = engine::DirectRead::new();
    assert!(h.plan_direct_read(0, 4096, &mut plan), "block 0 is planned");
    let junk = blockdev::AlignedBuf::from_slice(&[0x5au8; 4096]);
    // SAFETY: a positional write of 4096 bytes from a live aligned buffer to a descriptor the
    // plan keeps open (the test corrupting the replica's device behind the engine's back).
    let n = unsafe {
        libc::pwrite(
            plan.fd(),
            junk.as_ptr().cast(),
            4096,
            plan.offset() as libc::off_t,
        )
    };
    assert_eq!(n, 4096);
    plan.release();
    let before = p.engine.stats();
    let mem_arc = guest_memory();
    let mem: &GuestMemoryMmap = &mem_arc;
    let Some(mut rig) = Rig::new(&p, mem, mem_arc.clone()) else {
        return;
    };
    let r = rig.read(0, &[(DATA, 4096)]);
    rig.run();
    assert_eq!(rig.status(r), S_OK);
    assert_eq!(rig.bytes(DATA, 4096), good, "the good copy, never the junk");
    let c = &rig.counters;
    assert_eq!(c.direct_fallbacks.load(Relaxed), 1);
    assert_eq!(c.direct_reads.load(Relaxed), 0);
    let after = p.engine.stats();
    assert_eq!(after.checksum_errors - before.checksum_errors, 1);
    assert_eq!(after.repairs - before.repairs, 1, "the engine repaired it");
    mem.write_slice(&[0u8; 4096], GuestAddress(DATA)).unwrap();
    let r = rig.read(0, &[(DATA, 4096)]);
    rig.run();
    assert_eq!(rig.status(r), S_OK);
    assert_eq!(rig.bytes(DATA, 4096), good);
    assert_eq!(
        rig.counters.direct_reads.load(Relaxed),
        1,
        "the repaired copy verifies"
    );
    drop(rig);
    p.rt.block_on(p.engine.shutdown()).unwrap();
}

/// A read whose submit the kernel refused (EAGAIN, ENOMEM) stays queued in the ring: the queue
/// thread must count that as work of its own and not go to sleep on the ring's eventfd, which
/// nothing would ever signal (a lost wake-up: the guest's request would hang). Collecting then
/// hands it to the kernel and returns its completion.
#[test]
fn an_entry_left_queued_by_a_refused_submit_keeps_the_thread_awake() {
    let Some(mut r) = QueueRing::unbound(QLEN) else {
        println!("skipped: io_uring unavailable");
        return;
    };
    assert!(!r.completions_ready(), "an idle ring has nothing");
    let nop = io_uring::opcode::Nop::new().build().user_data(7);
    // SAFETY: a NOP references no memory.
    unsafe { r.ring.submission().push(&nop) }.unwrap();
    assert!(
        r.completions_ready(),
        "an entry still queued is work for the ring's thread"
    );
    let mut done = Vec::new();
    while done.is_empty() {
        r.collect(&mut done);
        if done.is_empty() {
            let far = std::time::Instant::now() + std::time::Duration::from_secs(60);
            assert!(r.wait_one(far));
        }
    }
    assert_eq!(done, vec![(7, 0)]);
    assert!(!r.completions_ready(), "nothing left");
}

/// A queue thread that ends (device reset, VM stopped) while its direct reads are still in the
/// kernel first waits for them and answers each with its verified data, and only then gives its
/// ring back: no read is dropped unanswered and no buffer freed under the kernel.
#[test]
fn a_queue_ending_with_reads_in_the_kernel_answers_them_first() {
    let Some(p) = pool() else { return };
    let h = p.disk.as_async().unwrap().engine_handle().unwrap().clone();
    let a = pattern(64 << 10, 3);
    p.rt.block_on(h.write(0, &a)).unwrap();
    let mem_arc = guest_memory();
    let mem: &GuestMemoryMmap = &mem_arc;
    let Some(mut rig) = Rig::new(&p, mem, mem_arc.clone()) else {
        return;
    };
    let reqs: Vec<(u16, u64)> = (0..4u64)
        .map(|i| (rig.read(i * 32, &[(DATA + i * 0x1_0000, 16 << 10)]), i))
        .collect();
    assert!(rig.pq.serve(), "the reads were taken");
    let used_at = rig.vq.used_addr().unchecked_add(2);
    let (counters, home) = (rig.counters.clone(), rig.home.clone());
    // The thread's side of the queue goes, as when its thread ends.
    drop(rig);
    let used: u16 = mem.read_obj(used_at).unwrap();
    assert_eq!(used, 4, "every read was answered");
    for (r, i) in reqs {
        let st: u8 = mem.read_obj(GuestAddress(STATUS + u64::from(r))).unwrap();
        assert_eq!(st, S_OK, "request {r}");
        let mut got = vec![0u8; 16 << 10];
        mem.read_slice(&mut got, GuestAddress(DATA + i * 0x1_0000))
            .unwrap();
        let at = (i * (16 << 10)) as usize;
        assert_eq!(got, a[at..at + (16 << 10)], "request {r}");
    }
    assert_eq!(counters.direct_reads.load(Relaxed), 4);
    assert!(home.lock().is_some(), "the ring went back, empty");
    p.rt.block_on(p.engine.shutdown()).unwrap();
}

/// Writes the engine plans (an overwrite of a stored chunk, whole blocks) are written to both
/// replicas on the queue thread's ring and recorded by the engine, whatever the guest buffers'
/// shape; the others (a chunk never written, a misaligned range) go through the engine. Every
/// one reads back through the engine's ordinary read and the direct read, both replicas scrub
/// clean, and a FLUSH after them completes.
#[test]
fn engine_writes_are_written_on_the_queue_thread_and_read_back() {
    let Some(p) = pool() else { return };
    let h = p.disk.as_async().unwrap().engine_handle().unwrap().clone();
    p.rt.block_on(h.write(0, &pattern(64 << 10, 1))).unwrap();
    let writes_before = p.engine.stats().writes;
    let mem_arc = guest_memory();
    let mem: &GuestMemoryMmap = &mem_arc;
    let Some(mut rig) = Rig::new(&p, mem, mem_arc.clone()) else {
        return;
    };
    let (a, b, c, d) = (
        pattern(4096, 11),
        pattern(4096, 22),
        pattern(16 << 10, 33),
        pattern(4096, 44),
    );
    mem.write_slice(&a, GuestAddress(DATA)).unwrap();
    mem.write_slice(&b[..2048], GuestAddress(DATA + 0x1_0000))
        .unwrap();
    mem.write_slice(&b[2048..], GuestAddress(DATA + 0x1_1000))
        .unwrap();
    mem.write_slice(&c, GuestAddress(DATA + 0x2_0001)).unwrap();
    mem.write_slice(&d, GuestAddress(DATA + 0x3_0000)).unwrap();
    let chunk = engine::CHUNK_BYTES;
    let w = [
        rig.write(0, &[(DATA, 4096)]),
        rig.write(8, &[(DATA + 0x1_0000, 2048), (DATA + 0x1_1000, 2048)]),
        rig.write(32, &[(DATA + 0x2_0001, 16 << 10)]),
        // Through the engine: a chunk never written, a misaligned range.
        rig.write(2 * chunk / 512, &[(DATA + 0x3_0000, 4096)]),
        rig.write(97, &[(DATA + 0x3_0000, 4096)]),
    ];
    rig.run();
    for r in w {
        assert_eq!(rig.status(r), S_OK, "request {r}");
    }
    let cnt = rig.counters.clone();
    assert_eq!(cnt.direct_writes.load(Relaxed), 3, "the first three");
    assert_eq!(cnt.direct_fallbacks.load(Relaxed), 0);
    assert_eq!(cnt.write_ops.load(Relaxed), 5);
    assert_eq!(cnt.errors.load(Relaxed), 0);
    assert_eq!(
        p.engine.stats().writes - writes_before,
        5,
        "the engine counts all"
    );
    let mut expect = pattern(64 << 10, 1);
    expect[..4096].copy_from_slice(&a);
    expect[4096..8192].copy_from_slice(&b);
    expect[16 << 10..32 << 10].copy_from_slice(&c);
    expect[97 * 512..97 * 512 + 4096].copy_from_slice(&d);
    let mut got = vec![0u8; 64 << 10];
    p.rt.block_on(h.read(0, &mut got)).unwrap();
    assert!(got == expect, "the engine reads what the guest wrote");
    let mut far = vec![0u8; 4096];
    p.rt.block_on(h.read(2 * chunk, &mut far)).unwrap();
    assert_eq!(far, d);
    p.rt.block_on(h.read(97 * 512, &mut far)).unwrap();
    assert_eq!(far, d);

    // Back through the queue thread's own direct reads, then a flush.
    // (The whole range lies in several runs on the device: the engine reads it.)
    let back = rig.read(0, &[(DATA + 0x8_0000, 64 << 10)]);
    let one = rig.read(0, &[(DATA + 0x4_0000, 4096)]);
    rig.run();
    assert_eq!((rig.status(back), rig.status(one)), (S_OK, S_OK));
    assert!(rig.bytes(DATA + 0x8_0000, 64 << 10) == expect);
    assert_eq!(rig.bytes(DATA + 0x4_0000, 4096), a);
    assert_eq!(cnt.direct_reads.load(Relaxed), 1, "block 0 read directly");
    let flush = rig.offer(T_FLUSH, 0, &[]);
    rig.run();
    assert_eq!(rig.status(flush), S_OK);
    drop(rig);

    // Both replicas hold what the engine recorded.
    p.rt.block_on(async { p.engine.start_scrub() }).unwrap();
    assert!(p
        .rt
        .block_on(p.engine.wait_scrub(std::time::Duration::from_secs(60))));
    let st = p.engine.stats();
    assert_eq!((st.checksum_errors, st.repairs), (0, 0), "scrub");
    p.rt.block_on(p.engine.shutdown()).unwrap();
}

/// A write the engine does not plan (to a chunk never written) is not copied on the queue
/// thread: no slot takes a buffer for it, the ordinary path copies and writes it. A write it
/// plans is copied there (its slot keeps the buffer) and written directly. Both read back.
#[test]
fn a_write_the_engine_does_not_plan_is_not_copied_on_the_queue_thread() {
    let Some(p) = pool() else { return };
    let h = p.disk.as_async().unwrap().engine_handle().unwrap().clone();
    p.rt.block_on(h.write(0, &pattern(64 << 10, 1))).unwrap();
    let mem_arc = guest_memory();
    let mem: &GuestMemoryMmap = &mem_arc;
    let Some(mut rig) = Rig::new(&p, mem, mem_arc.clone()) else {
        return;
    };
    let a = pattern(4096, 21);
    mem.write_slice(&a, GuestAddress(DATA)).unwrap();
    let far = 2 * engine::CHUNK_BYTES;
    let r = rig.write(far / 512, &[(DATA, 4096)]);
    rig.run();
    assert_eq!(rig.status(r), S_OK);
    let cnt = rig.counters.clone();
    assert_eq!(cnt.write_ops.load(Relaxed), 1);
    assert_eq!(cnt.direct_writes.load(Relaxed), 0, "a chunk never written");
    assert_eq!(rig.pq.direct().unwrap().buffers(), 0, "not copied here");
    let r = rig.write(8, &[(DATA, 4096)]);
    rig.run();
    assert_eq!(rig.status(r), S_OK);
    assert_eq!(cnt.direct_writes.load(Relaxed), 1, "an overwrite");
    assert_eq!(rig.pq.direct().unwrap().buffers(), 1, "copied here");
    drop(rig);
    let mut got = vec![0u8; 4096];
    p.rt.block_on(h.read(far, &mut got)).unwrap();
    assert_eq!(got, a);
    p.rt.block_on(h.read(4096, &mut got)).unwrap();
    assert_eq!(got, a);
    p.rt.block_on(p.engine.shutdown()).unwrap();
}

/// A queue thread that ends while its direct writes are still in the kernel waits for them,
/// has the engine record them and answers each before its ring goes back.
#[test]
fn a_queue_ending_with_writes_in_the_kernel_answers_them_first() {
    let Some(p) = pool() else { return };
    let h = p.disk.as_async().unwrap().engine_handle().unwrap().clone();
    p.rt.block_on(h.write(0, &pattern(64 << 10, 5))).unwrap();
    let mem_arc = guest_memory();
    let mem: &GuestMemoryMmap = &mem_arc;
    let Some(mut rig) = Rig::new(&p, mem, mem_arc.clone()) else {
        return;
    };
    let a = pattern(64 << 10, 6);
    mem.write_slice(&a, GuestAddress(DATA)).unwrap();
    let reqs: Vec<u16> = (0..4u64)
        .map(|i| rig.write(i * 32, &[(DATA + i * (16 << 10), 16 << 10)]))
        .collect();
    assert!(rig.pq.serve(), "the writes were taken");
    let used_at = rig.vq.used_addr().unchecked_add(2);
    let counters = rig.counters.clone();
    drop(rig);
    let used: u16 = mem.read_obj(used_at).unwrap();
    assert_eq!(used, 4, "every write was answered");
    for r in reqs {
        let st: u8 = mem.read_obj(GuestAddress(STATUS + u64::from(r))).unwrap();
        assert_eq!(st, S_OK, "request {r}");
    }
    assert_eq!(counters.direct_writes.load(Relaxed), 4);
    let mut got = vec![0u8; 64 << 10];
    p.rt.block_on(h.read(0, &mut got)).unwrap();
    assert!(got == a, "the engine recorded them");
    p.rt.block_on(p.engine.shutdown()).unwrap();
}

/// A queue whose ring cannot be waited on any more while its direct writes may still be in
/// the kernel leaks the ring and the buffers only: each write is answered with an error and
/// nothing is recorded, and the engine's guards go, so a snapshot of the disk (which waits for
/// every write holding its generation) still completes; before, the slots were leaked whole and
/// the snapshot, like any later FLUSH of the device, waited for good.
#[test]
fn a_queue_that_leaks_its_ring_answers_its_writes_and_lets_the_disk_go() {
    let Some(p) = pool() else { return };
    let h = p.disk.as_async().unwrap().engine_handle().unwrap().clone();
    let old = pattern(64 << 10, 5);
    p.rt.block_on(h.write(0, &old)).unwrap();
    let mem_arc = guest_memory();
    let mem: &GuestMemoryMmap = &mem_arc;
    let Some(mut rig) = Rig::new(&p, mem, mem_arc.clone()) else {
        return;
    };
    mem.write_slice(&pattern(64 << 10, 6), GuestAddress(DATA))
        .unwrap();
    let reqs: Vec<u16> = (0..4u64)
        .map(|i| rig.write(i * 32, &[(DATA + i * (16 << 10), 16 << 10)]))
        .collect();
    assert!(rig.pq.serve(), "the writes were taken");
    rig.pq.leak_direct();
    let used: u16 = mem.read_obj(rig.vq.used_addr().unchecked_add(2)).unwrap();
    assert_eq!(used, 4, "every write was answered");
    for r in reqs {
        assert_ne!(rig.status(r), S_OK, "request {r} answered with an error");
    }
    assert_eq!(rig.counters.direct_writes.load(Relaxed), 0, "none recorded");
    let limit = std::time::Duration::from_secs(60);
    p.rt.block_on(async { tokio::time::timeout(limit, p.engine.create_snapshot("d", "s")).await })
        .expect("the snapshot waited for the leaked writes")
        .unwrap();
    drop(rig);
    let mut got = vec![0u8; 64 << 10];
    p.rt.block_on(h.read(0, &mut got)).unwrap();
    assert!(got == old, "nothing recorded");
    p.rt.block_on(p.engine.shutdown()).unwrap();
}

/// A queue thread that ends while a hung device holds its direct reads and writes in the
/// kernel stops waiting at its drain limit (30 s in production, 50 ms here): the ring and the
/// buffers are leaked, each request is answered with an error, and the engine's guards go (a
/// snapshot of the disk completes). Before, the drain waited for the device for good and the
/// VM's stop hung with it. The device here never answers: the ring holds every request behind
/// a read from a pipe nobody writes.
#[test]
fn a_queue_ending_on_a_hung_device_answers_with_errors_after_its_drain_limit() {
    let Some(p) = pool() else { return };
    let h = p.disk.as_async().unwrap().engine_handle().unwrap().clone();
    let old = pattern(64 << 10, 7);
    p.rt.block_on(h.write(0, &old)).unwrap();
    let mem_arc = guest_memory();
    let mem: &GuestMemoryMmap = &mem_arc;
    let Some(mut rig) = Rig::new(&p, mem, mem_arc.clone()) else {
        return;
    };
    let limit = std::time::Duration::from_millis(50);
    assert!(rig.pq.direct_mut().unwrap().hang_for_test(limit));
    mem.write_slice(&pattern(4096, 8), GuestAddress(DATA))
        .unwrap();
    let reqs = [
        rig.read(0, &[(DATA + 0x1_0000, 4096)]),
        rig.write(8, &[(DATA, 4096)]),
    ];
    assert!(rig.pq.serve(), "the requests were taken");
    let used_at = rig.vq.used_addr().unchecked_add(2);
    let Rig { pq, counters, .. } = rig;
    // A safety net, not a timing: the drain gives up after 50 ms; before, it never returned.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(pq);
        let _ = tx.send(());
    });
    let ended = rx.recv_timeout(std::time::Duration::from_secs(20)).is_ok();
    assert!(ended, "the queue waited for the hung device for good");
    let used: u16 = mem.read_obj(used_at).unwrap();
    assert_eq!(used, 2, "every request was answered");
    for r in reqs {
        let st: u8 = mem.read_obj(GuestAddress(STATUS + u64::from(r))).unwrap();
        assert_ne!(st, S_OK, "request {r} answered with an error");
    }
    assert_eq!(
        (
            counters.direct_reads.load(Relaxed),
            counters.direct_writes.load(Relaxed)
        ),
        (0, 0),
        "neither went through"
    );
    let wait = std::time::Duration::from_secs(60);
    p.rt.block_on(async { tokio::time::timeout(wait, p.engine.create_snapshot("d", "s")).await })
        .expect("the snapshot waited for the abandoned write")
        .unwrap();
    let mut got = vec![0u8; 64 << 10];
    p.rt.block_on(h.read(0, &mut got)).unwrap();
    assert!(got == old, "nothing recorded");
    p.rt.block_on(p.engine.shutdown()).unwrap();
}

/// A direct write whose device write fails on one replica (EIO seen only by the queue thread's
/// ring) fails that disk in the engine, as the engine's own write does on a device error, and
/// is then redone by the engine on the live replica: the guest gets success and its data reads
/// back. Before, the redo wrote both replicas again and the disk stayed in service unless it
/// failed that second time too.
#[test]
fn a_device_error_on_a_direct_write_fails_that_disk() {
    let Some(p) = pool() else { return };
    let h = p.disk.as_async().unwrap().engine_handle().unwrap().clone();
    p.rt.block_on(h.write(0, &pattern(64 << 10, 9))).unwrap();
    let mem_arc = guest_memory();
    let mem: &GuestMemoryMmap = &mem_arc;
    let Some(mut rig) = Rig::new(&p, mem, mem_arc.clone()) else {
        return;
    };
    rig.pq.direct_mut().unwrap().fail_next = Some(libc::EIO);
    let a = pattern(4096, 10);
    mem.write_slice(&a, GuestAddress(DATA)).unwrap();
    let r = rig.write(8, &[(DATA, 4096)]);
    rig.run();
    assert_eq!(rig.status(r), S_OK);
    let cnt = rig.counters.clone();
    assert_eq!(
        (
            cnt.direct_writes.load(Relaxed),
            cnt.direct_fallbacks.load(Relaxed)
        ),
        (0, 1),
        "the direct write failed and was redone"
    );
    let states: Vec<_> = p.engine.disks().iter().map(|d| d.state).collect();
    let failed = states
        .iter()
        .filter(|&&s| s == engine::DiskState::Failed)
        .count();
    assert_eq!(failed, 1, "one disk failed: {states:?}");
    drop(rig);
    let mut got = vec![0u8; 4096];
    p.rt.block_on(h.read(4096, &mut got)).unwrap();
    assert_eq!(got, a);
    p.rt.block_on(p.engine.shutdown()).unwrap();
}

/// A direct read that the device fails (EIO seen only by the queue thread's ring) has the
/// engine copy the chunk to that disk again from the other replica, as the engine's own read
/// does on a device error (a resync), and is redone by the engine: the guest gets its data and
/// the disk's error count moves. Before, nothing was repaired or counted unless the redo read
/// that same disk and failed there too.
#[test]
fn a_device_error_on_a_direct_read_resyncs_the_chunk_there() {
    let Some(p) = pool() else { return };
    let h = p.disk.as_async().unwrap().engine_handle().unwrap().clone();
    let a = pattern(64 << 10, 12);
    p.rt.block_on(h.write(0, &a)).unwrap();
    let mem_arc = guest_memory();
    let mem: &GuestMemoryMmap = &mem_arc;
    let Some(mut rig) = Rig::new(&p, mem, mem_arc.clone()) else {
        return;
    };
    rig.pq.direct_mut().unwrap().fail_next = Some(libc::EIO);
    let r = rig.read(0, &[(DATA, 4096)]);
    rig.run();
    assert_eq!(rig.status(r), S_OK);
    assert_eq!(rig.bytes(DATA, 4096), a[..4096]);
    let cnt = rig.counters.clone();
    assert_eq!(
        (
            cnt.direct_reads.load(Relaxed),
            cnt.direct_fallbacks.load(Relaxed)
        ),
        (0, 1),
        "the direct read failed and was redone"
    );
    // The resync runs beside the redo: waited for, with a generous safety net.
    for _ in 0..600 {
        if p.engine.stats().repairs > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(p.engine.stats().repairs, 1, "the chunk was resynced");
    let errors: Vec<u64> = p.engine.disks().iter().map(|d| d.errors).collect();
    assert_eq!(
        errors.iter().sum::<u64>(),
        1,
        "one disk counted it: {errors:?}"
    );
    assert!(
        p.engine
            .disks()
            .iter()
            .all(|d| d.state != engine::DiskState::Failed),
        "a read error alone fails no disk"
    );
    drop(rig);
    p.rt.block_on(p.engine.shutdown()).unwrap();
}
