//! The async virtio-blk queue without a guest: virtio-queue's mock split queue in front, a RAM
//! disk behind an [`AsyncDisk`] whose writes the test holds and releases, so requests are
//! deterministically in flight while the test checks flush ordering, reset and backpressure.

use super::blk::{S_IOERR, S_OK, T_FLUSH, T_GET_ID, T_IN, T_OUT};
use super::blk_async::{AsyncQueue, QueueSetup, WriteOrder};
use crate::backend::{AsyncDisk, BackendError, DiskBackend, IoFuture, RamDisk};
use crate::memory::GuestMemoryMmap;
use crate::stats::DeviceCounters;
use blockdev::AlignedBuf;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const QLEN: u16 = 64;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const FAIL_OFFSET: u64 = 64 * 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    WriteStart(u64),
    WriteEnd(u64),
    Flush,
}

struct GatedInner {
    rt: tokio::runtime::Handle,
    ram: RamDisk,
    hold_writes: AtomicBool,
    gate: tokio::sync::Semaphore,
    log: Mutex<Vec<Ev>>,
}

/// A RAM disk whose writes wait for the test's permits while `hold_writes` is set; reads at
/// [`FAIL_OFFSET`] fail.
#[derive(Clone)]
struct Gated(Arc<GatedInner>);

impl Gated {
    fn log(&self) -> Vec<Ev> {
        self.0.log.lock().clone()
    }
    fn release(&self, n: usize) {
        self.0.gate.add_permits(n);
    }
}

impl AsyncDisk for Gated {
    fn runtime(&self) -> &tokio::runtime::Handle {
        &self.0.rt
    }
    fn read(
        &self,
        offset: u64,
        mut buf: AlignedBuf,
        len: usize,
    ) -> IoFuture<(AlignedBuf, Result<(), BackendError>)> {
        let d = self.0.clone();
        Box::pin(async move {
            let r = if offset == FAIL_OFFSET {
                Err(BackendError::Io("injected".into()))
            } else {
                d.ram.read(offset, &mut buf[..len])
            };
            (buf, r)
        })
    }
    fn write(
        &self,
        offset: u64,
        buf: AlignedBuf,
        len: usize,
    ) -> IoFuture<(Option<AlignedBuf>, Result<(), BackendError>)> {
        let d = self.0.clone();
        Box::pin(async move {
            d.log.lock().push(Ev::WriteStart(offset));
            if d.hold_writes.load(Ordering::SeqCst) {
                match d.gate.acquire().await {
                    Ok(p) => p.forget(),
                    Err(e) => return (Some(buf), Err(BackendError::Io(e.to_string()))),
                }
            }
            let r = d.ram.write(offset, &buf[..len]);
            d.log.lock().push(Ev::WriteEnd(offset));
            (Some(buf), r)
        })
    }
    fn flush(&self) -> IoFuture<Result<(), BackendError>> {
        let d = self.0.clone();
        Box::pin(async move {
            d.log.lock().push(Ev::Flush);
            Ok(())
        })
    }
    fn discard(&self, offset: u64, len: u64) -> IoFuture<Result<(), BackendError>> {
        let d = self.0.clone();
        Box::pin(async move { d.ram.discard(offset, len) })
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> IoFuture<Result<(), BackendError>> {
        let d = self.0.clone();
        Box::pin(async move { d.ram.write_zeroes(offset, len) })
    }
}

struct Rig {
    _rt: tokio::runtime::Runtime,
    mem: Arc<GuestMemoryMmap>,
    vq: MockSplitQueue<'static, GuestMemoryMmap>,
    disk: Gated,
    q: Arc<AsyncQueue>,
    irqs: Arc<AtomicUsize>,
    kick: EventFd,
    counters: Arc<DeviceCounters>,
    limit: usize,
    /// Requests added so far (each uses 3 descriptors and its own header/data/status area).
    added: u16,
}

impl Rig {
    fn new(hold_writes: bool, limit: usize) -> Rig {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        // Leaked so the mock queue can borrow it for 'static (a few MiB per test).
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap(),
        ));
        let vq = MockSplitQueue::new(mem, QLEN);
        let queue = vq.create_queue().unwrap();
        let disk = Gated(Arc::new(GatedInner {
            rt: rt.handle().clone(),
            ram: RamDisk::new(1 << 20),
            hold_writes: AtomicBool::new(hold_writes),
            gate: tokio::sync::Semaphore::new(0),
            log: Mutex::new(Vec::new()),
        }));
        let irqs = Arc::new(AtomicUsize::new(0));
        let counters = Arc::new(DeviceCounters::default());
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let i2 = irqs.clone();
        let mem_arc = Arc::new(mem.clone());
        let q = AsyncQueue::new(
            queue,
            QueueSetup {
                mem: mem_arc.clone(),
                disk: Arc::new(disk.clone()),
                order: Arc::new(WriteOrder::new(usize::from(QLEN))),
                counters: counters.clone(),
                irq: Box::new(move || {
                    i2.fetch_add(1, Ordering::SeqCst);
                }),
                serial: super::blk::serial_bytes("async-serial"),
                size: 1 << 20,
                read_only: false,
                queue_index: 0,
                kick: kick.try_clone().unwrap(),
                limit,
            },
        );
        Rig {
            _rt: rt,
            mem: mem_arc,
            vq,
            disk,
            q,
            irqs,
            kick,
            counters,
            limit,
            added: 0,
        }
    }

    fn status_addr(n: u16) -> GuestAddress {
        GuestAddress(STATUS + u64::from(n))
    }

    fn data_addr(n: u16) -> GuestAddress {
        GuestAddress(DATA + u64::from(n) * 0x1000)
    }

    /// Offers request number `self.added`: a header of `rtype` at `sector`, `data_len` data
    /// bytes (device-readable for writes), a status byte. Returns its number.
    fn add(&mut self, rtype: u32, sector: u64, data_len: u32) -> u16 {
        let n = self.added;
        self.added += 1;
        let hdr = GuestAddress(HDR + u64::from(n) * 16);
        self.mem.write_obj(rtype, hdr).unwrap();
        self.mem.write_obj(0u32, hdr.unchecked_add(4)).unwrap();
        self.mem.write_obj(sector, hdr.unchecked_add(8)).unwrap();
        self.mem.write_obj(0xffu8, Self::status_addr(n)).unwrap();
        let data_flags = if rtype == T_OUT { 0 } else { WRITE };
        let mut descs = vec![(hdr.0, 16u32, 0u16)];
        if data_len > 0 {
            descs.push((Self::data_addr(n).0, data_len, data_flags));
        }
        descs.push((Self::status_addr(n).0, 1, WRITE));
        let base = n * 3;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = base + i as u16;
            let f = if i + 1 < descs.len() {
                flags | NEXT
            } else {
                flags
            };
            self.vq
                .desc_table()
                .store(
                    idx,
                    RawDescriptor::from(SplitDescriptor::new(addr, len, f, idx + 1)),
                )
                .unwrap();
        }
        let avail = self.vq.avail_addr();
        let aidx: u16 = self.mem.read_obj(avail.unchecked_add(2)).unwrap();
        self.mem
            .write_obj(base, avail.unchecked_add(4 + u64::from(aidx % QLEN) * 2))
            .unwrap();
        self.mem
            .write_obj(aidx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
        n
    }

    fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(self.vq.used_addr().unchecked_add(2))
            .unwrap()
    }

    /// (head, len) of used element `i`.
    fn used(&self, i: u16) -> (u32, u32) {
        let e = self
            .vq
            .used_addr()
            .unchecked_add(4 + u64::from(i % QLEN) * 8);
        (
            self.mem.read_obj(e).unwrap(),
            self.mem.read_obj(e.unchecked_add(4)).unwrap(),
        )
    }

    /// The used length reported for request `n`.
    fn used_len_of(&self, n: u16) -> Option<u32> {
        (0..self.used_idx())
            .map(|i| self.used(i))
            .find(|(h, _)| *h == u32::from(n * 3))
            .map(|(_, l)| l)
    }

    /// Plays the queue thread: polls on every kick until `cond` holds.
    fn pump_until(&self, what: &str, cond: impl Fn() -> bool) {
        wait_for(what, || {
            if self.kick.read().is_ok() {
                self.q.poll();
                assert!(self.q.inflight() <= self.limit, "over the in-flight limit");
            }
            cond()
        });
    }

    fn status(&self, n: u16) -> u8 {
        self.mem.read_obj(Self::status_addr(n)).unwrap()
    }
}

/// Polls `cond` until it holds (30 s bound: a loaded 2-core machine is slow, never this slow).
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn requests_complete_from_their_tasks() {
    let mut r = Rig::new(false, usize::from(QLEN));
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 13) as u8).collect();
    r.mem.write_slice(&pattern, Rig::data_addr(0)).unwrap();
    let w = r.add(T_OUT, 8, 4096);
    r.q.poll();
    wait_for("the write", || r.used_idx() == 1);
    assert_eq!((r.status(w), r.used_len_of(w)), (S_OK, Some(1)));
    let rd = r.add(T_IN, 8, 4096);
    let bad = r.add(T_IN, FAIL_OFFSET / 512, 4096);
    let id = r.add(T_GET_ID, 0, 20);
    let beyond = r.add(T_IN, (1 << 20) / 512, 4096);
    r.q.poll();
    wait_for("four more completions", || r.used_idx() == 5);
    assert_eq!((r.status(rd), r.used_len_of(rd)), (S_OK, Some(4097)));
    let mut back = vec![0u8; 4096];
    r.mem.read_slice(&mut back, Rig::data_addr(rd)).unwrap();
    assert_eq!(back, pattern, "the read returns what the write stored");
    assert_eq!(
        (r.status(bad), r.used_len_of(bad)),
        (S_IOERR, Some(1)),
        "disk error -> IOERR"
    );
    assert_eq!(r.status(beyond), S_IOERR, "range beyond the disk -> IOERR");
    let mut serial = [0u8; 12];
    r.mem.read_slice(&mut serial, Rig::data_addr(id)).unwrap();
    assert_eq!(&serial, b"async-serial");
    let s = r.counters.snapshot("d");
    assert_eq!((s.read_ops, s.write_ops, s.errors), (1, 1, 2));
    assert_eq!(r.q.inflight(), 0);
    assert!(
        r.irqs.load(Ordering::SeqCst) >= 2,
        "completions interrupt the guest"
    );
}

#[test]
fn flush_starts_after_earlier_writes_complete() {
    let mut r = Rig::new(true, usize::from(QLEN));
    let w1 = r.add(T_OUT, 0, 4096);
    let w2 = r.add(T_OUT, 8, 4096);
    let f = r.add(T_FLUSH, 0, 0);
    r.q.poll();
    wait_for("both writes in the disk", || {
        r.disk
            .log()
            .iter()
            .filter(|e| matches!(e, Ev::WriteStart(_)))
            .count()
            == 2
    });
    assert_eq!(r.q.inflight(), 3, "two writes and the flush are in flight");
    assert!(
        !r.disk.log().contains(&Ev::Flush),
        "flush ran before the writes completed"
    );
    r.disk.release(1);
    wait_for("one write done", || r.used_idx() == 1);
    assert!(
        !r.disk.log().contains(&Ev::Flush),
        "flush ran with a write still in flight"
    );
    r.disk.release(1);
    wait_for("all three done", || r.used_idx() == 3);
    let log = r.disk.log();
    let flush_at = log
        .iter()
        .position(|e| *e == Ev::Flush)
        .expect("the flush ran");
    let last_end = log
        .iter()
        .rposition(|e| matches!(e, Ev::WriteEnd(_)))
        .expect("writes ended");
    assert!(
        flush_at > last_end,
        "flush after every earlier write: {log:?}"
    );
    for n in [w1, w2, f] {
        assert_eq!(r.status(n), S_OK);
    }
}

#[test]
fn flush_with_no_writes_in_flight_runs_at_once() {
    let mut r = Rig::new(true, usize::from(QLEN));
    let f = r.add(T_FLUSH, 0, 0);
    r.q.poll();
    wait_for("the flush", || r.used_idx() == 1);
    assert_eq!(r.status(f), S_OK);
    assert_eq!(r.disk.log(), vec![Ev::Flush]);
}

#[test]
fn reset_waits_for_requests_in_flight() {
    let mut r = Rig::new(true, usize::from(QLEN));
    let a = r.add(T_OUT, 0, 4096);
    let b = r.add(T_OUT, 8, 4096);
    r.q.poll();
    wait_for("both writes in the disk", || r.disk.log().len() == 2);
    let q = r.q.clone();
    let closer = std::thread::spawn(move || q.close(Duration::from_secs(60)));
    r.disk.release(2);
    let abandoned = closer.join().unwrap();
    assert_eq!(abandoned, 0, "every in-flight request drained");
    // close() returned only after both were answered in the used ring.
    assert_eq!(r.used_idx(), 2);
    assert_eq!((r.status(a), r.status(b)), (S_OK, S_OK));
}

#[test]
fn requests_outliving_reset_never_touch_guest_memory() {
    let mut r = Rig::new(true, usize::from(QLEN));
    let n = r.add(T_OUT, 0, 4096);
    r.q.poll();
    wait_for("the write in the disk", || r.disk.log().len() == 1);
    assert_eq!(r.q.close(Duration::ZERO), 1, "one request still running");
    let irqs = r.irqs.load(Ordering::SeqCst);
    r.disk.release(1);
    wait_for("the task to end", || r.q.inflight() == 0);
    assert!(r.disk.log().contains(&Ev::WriteEnd(0)));
    assert_eq!(r.used_idx(), 0, "no used entry after reset");
    assert_eq!(r.status(n), 0xff, "no status byte after reset");
    assert_eq!(
        r.irqs.load(Ordering::SeqCst),
        irqs,
        "no interrupt after reset"
    );
}

#[test]
fn in_flight_requests_are_bounded() {
    let mut r = Rig::new(true, 2);
    for i in 0..4 {
        r.add(T_OUT, i * 8, 4096);
    }
    r.q.poll();
    assert_eq!(r.q.inflight(), 2, "the queue thread stops at the limit");
    wait_for("two writes in the disk", || r.disk.log().len() == 2);
    r.disk.release(1);
    // A completion below the limit kicks the queue thread, which takes the next request.
    r.pump_until("a third write in the disk", || {
        r.disk
            .log()
            .iter()
            .filter(|e| matches!(e, Ev::WriteStart(_)))
            .count()
            == 3
    });
    assert!(r.q.inflight() <= 2);
    r.disk.release(3);
    r.pump_until("all four", || r.used_idx() == 4);
    assert_eq!(r.counters.snapshot("d").write_ops, 4);
}

/// An engine read across a chunk boundary comes back in two pieces; copied straight into a
/// chain whose segments split differently, the guest sees the bytes in order. A length other
/// than the one asked for, or more bytes than the chain holds, fails the copy.
#[test]
fn owned_read_pieces_scatter_into_guest_segments() {
    use super::blk::Chain;
    use super::blk_async::Data;
    use crate::backend_engine::EngineDisk;
    use blockdev::{BlockDevice, RamDevice};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let engine = rt
        .block_on(async {
            let e = engine::Engine::open(engine::EngineConfig {
                node_id: 1,
                node_name: "vmm-parts".into(),
            })
            .await?;
            for i in 0..2 {
                let dev: Arc<dyn BlockDevice> =
                    Arc::new(RamDevice::new(format!("pool{i}"), 64 << 20));
                e.add_disk(dev).await?;
            }
            e.create_vdisk("d", 8 << 20).await?;
            engine::Result::Ok(e)
        })
        .unwrap();
    let disk = EngineDisk::new(engine.open_vdisk("d").unwrap(), rt.handle().clone());
    let a = DiskBackend::as_async(&disk).unwrap();
    let at = engine::CHUNK_BYTES - 4096;
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 + i / 251) as u8).collect();
    DiskBackend::write(&disk, at, &pattern).unwrap();
    let data = rt
        .block_on(a.read_owned(at, 8192).unwrap())
        .expect("read_owned");
    assert_eq!(data.parts().count(), 2);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    // Header (readable), then 3000 + 5192 writable data bytes and the status byte.
    let segs = [
        (0x1000u64, 16u32, false),
        (0x2000, 3000, true),
        (0x8000, 5192, true),
        (0xF000, 1, true),
    ];
    let chain = Chain::walk(&mem, segs.iter().copied()).unwrap();
    assert!(Data::Parts(&data, 8192).scatter(&chain, &mem));
    let mut back = vec![0u8; 8192];
    mem.read_slice(&mut back[..3000], GuestAddress(0x2000))
        .unwrap();
    mem.read_slice(&mut back[3000..], GuestAddress(0x8000))
        .unwrap();
    assert_eq!(
        back, pattern,
        "the pieces land in order across the segments"
    );
    assert!(
        !Data::Parts(&data, 4096).scatter(&chain, &mem),
        "a length other than the one asked for is refused"
    );
    let small = Chain::walk(
        &mem,
        [
            (0x1000u64, 16u32, false),
            (0x2000, 4096, true),
            (0xF000, 1, true),
        ]
        .into_iter(),
    )
    .unwrap();
    assert!(
        !Data::Parts(&data, 8192).scatter(&small, &mem),
        "more data than the chain holds fails"
    );
    drop(a);
    drop(disk);
    rt.block_on(engine.shutdown()).unwrap();
}
