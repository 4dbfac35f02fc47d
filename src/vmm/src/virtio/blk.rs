//! virtio-blk on a [`DiskBackend`]: request parsing (the descriptor-chain walk and every
//! validation), request execution, and the per-queue I/O threads.
//!
//! Each queue has its own thread. Memory-speed backends run requests inline, copying straight
//! between the disk's bytes and guest memory when the disk lends them (else through a bounce
//! buffer allocated on first use); a disk that is a host file is read and written through an
//! io_uring of the queue thread's own ([`super::blk_uring`]); other blocking backends (and
//! files when the kernel refuses rings) spread them over I/O lanes ([`super::blk_pool`]);
//! async backends (the engine) get their requests run by driver tasks on their runtime
//! ([`super::blk_async`]). Inline, file and engine queue threads busy-poll their ring for a
//! short adaptive window after each request ([`super::PollWindow`]) before they re-arm
//! notifications and sleep. Every guest value is checked: chain length and
//! direction, addresses inside guest memory, sector ranges inside the disk, request size
//! bounds. A bad request completes with IOERR/UNSUPP; nothing the guest writes can fail the VM
//! or the host, and a ring index past the queue size is looked at once per kick, never spun on.

use super::blk_async::{AsyncQueue, PolledAsyncQueue, QueueSetup, WriteOrder, DRAIN_TIMEOUT};
use super::{
    ActivateContext, QueueIrq, VirtioDevice, Worker, F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1,
    TYPE_BLOCK,
};
use crate::backend::{AsyncDisk, DiskBackend};
use crate::config::DiskConfig;
use crate::error::{io_err, Result};
use crate::memory::GuestMemoryMmap;
use crate::stats::DeviceCounters;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Request types.
pub const T_IN: u32 = 0;
/// Write.
pub const T_OUT: u32 = 1;
/// Flush.
pub const T_FLUSH: u32 = 4;
/// Serial number.
pub const T_GET_ID: u32 = 8;
/// Discard.
pub const T_DISCARD: u32 = 11;
/// Write zeroes.
pub const T_WRITE_ZEROES: u32 = 13;
/// Status codes.
pub const S_OK: u8 = 0;
/// I/O error.
pub const S_IOERR: u8 = 1;
/// Unsupported request.
pub const S_UNSUPP: u8 = 2;

const F_SIZE_MAX: u64 = 1 << 1;
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_MQ: u64 = 1 << 12;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

/// Longest poll window of an engine-backed queue thread (see [`super::PollWindow`]).
const ASYNC_POLL_MAX: std::time::Duration = super::POLL_MAX;

/// Maximum data segments per request we advertise.
pub const SEG_MAX: u32 = 64;
/// Maximum bytes per segment we advertise.
pub const SIZE_MAX: u32 = 64 << 10;
/// Maximum data bytes per request (the bounce buffer size).
pub const MAX_REQUEST_BYTES: usize = (SEG_MAX as usize) * (SIZE_MAX as usize);
/// Descriptors per chain we accept: data segments + header + status (+ slack for split headers).
pub const MAX_CHAIN: usize = SEG_MAX as usize + 4;
/// Maximum sectors per discard / write-zeroes segment.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Bytes of the serial number GET_ID returns.
pub const SERIAL_BYTES: usize = 20;

#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Seg {
    addr: u64,
    len: u32,
    write: bool,
}

/// A walked and validated descriptor chain (fixed capacity, no allocation).
pub struct Chain {
    segs: [Seg; MAX_CHAIN],
    n: usize,
    readable_bytes: u64,
    writable_bytes: u64,
}

/// Why a chain could not be used at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// More descriptors than [`MAX_CHAIN`] (or the queue's own loop guard tripped).
    TooLong,
    /// A descriptor points outside guest memory.
    OutOfRange,
    /// A device-readable descriptor follows a device-writable one.
    WrongDirection,
    /// No writable byte for the status.
    NoStatus,
}

impl Chain {
    /// Walks `descs`, checking every address against `mem`.
    pub fn walk(
        mem: &GuestMemoryMmap,
        descs: impl Iterator<Item = (u64, u32, bool)>,
    ) -> std::result::Result<Chain, ChainError> {
        let mut c = Chain {
            segs: [Seg::default(); MAX_CHAIN],
            n: 0,
            readable_bytes: 0,
            writable_bytes: 0,
        };
        for (addr, len, write) in descs {
            if c.n == MAX_CHAIN {
                return Err(ChainError::TooLong);
            }
            if len > 0 && !GuestMemoryBackend::check_range(mem, GuestAddress(addr), len as usize) {
                return Err(ChainError::OutOfRange);
            }
            if !write && c.writable_bytes > 0 {
                return Err(ChainError::WrongDirection);
            }
            if write {
                c.writable_bytes += u64::from(len);
            } else {
                c.readable_bytes += u64::from(len);
            }
            c.segs[c.n] = Seg { addr, len, write };
            c.n += 1;
        }
        if c.writable_bytes == 0 {
            return Err(ChainError::NoStatus);
        }
        Ok(c)
    }

    /// Copies readable bytes `[from, from+buf.len())` (readable-space offsets) into `buf`.
    pub fn gather(&self, mem: &GuestMemoryMmap, from: u64, buf: &mut [u8]) -> bool {
        self.copy(mem, false, from, buf.len(), |m, addr, at, n| {
            m.read_slice(&mut buf[at..at + n], addr).is_ok()
        })
    }

    /// [`Chain::gather`] for a destination nobody reads soon (a RAM disk's chunk at a random
    /// place): the bytes go out with non-temporal stores ([`copy_streaming`]), so the copy
    /// does not first read every destination cache line from memory.
    pub fn gather_streaming(&self, mem: &GuestMemoryMmap, from: u64, buf: &mut [u8]) -> bool {
        self.copy(mem, false, from, buf.len(), |m, addr, at, n| {
            let dst = &mut buf[at..at + n];
            match m.get_slice(addr, n) {
                Ok(src) if src.len() == n => {
                    let guard = src.ptr_guard();
                    // SAFETY: the slice is `n` readable bytes of guest memory, mapped while
                    // `guard` lives; `dst` is a different allocation (the disk's).
                    unsafe { copy_streaming(dst, guard.as_ptr()) };
                    true
                }
                // Across two regions (or the slice is refused): the plain copy.
                _ => m.read_slice(dst, addr).is_ok(),
            }
        })
    }

    /// Copies `buf` into writable space starting at writable offset `from`.
    pub fn scatter(&self, mem: &GuestMemoryMmap, from: u64, buf: &[u8]) -> bool {
        self.copy(mem, true, from, buf.len(), |m, addr, at, n| {
            m.write_slice(&buf[at..at + n], addr).is_ok()
        })
    }

    /// Visits the guest pieces of `len` bytes at offset `from` of the chain's readable (`write`
    /// false) or writable space, in order, as (address, length); false if the chain does not
    /// cover the range or `f` refused a piece. Every piece lies inside guest memory (the walk
    /// checked each segment).
    pub(super) fn pieces(
        &self,
        mem: &GuestMemoryMmap,
        write: bool,
        from: u64,
        len: usize,
        mut f: impl FnMut(GuestAddress, usize) -> bool,
    ) -> bool {
        self.copy(mem, write, from, len, |_, addr, _, n| f(addr, n))
    }

    fn copy(
        &self,
        mem: &GuestMemoryMmap,
        write: bool,
        from: u64,
        len: usize,
        mut f: impl FnMut(&GuestMemoryMmap, GuestAddress, usize, usize) -> bool,
    ) -> bool {
        let mut pos = 0u64; // offset within this direction's space
        let mut done = 0usize;
        for s in self.segs[..self.n].iter().filter(|s| s.write == write) {
            let (start, end) = (pos, pos + u64::from(s.len));
            pos = end;
            if done == len {
                break;
            }
            let want = from + done as u64;
            if want >= end || want < start {
                continue;
            }
            let skip = want - start;
            let n = ((end - want) as usize).min(len - done);
            if !f(mem, GuestAddress(s.addr + skip), done, n) {
                return false;
            }
            done += n;
        }
        done == len
    }

    /// Guest address of the status byte (the last writable byte).
    pub fn status_addr(&self) -> Option<GuestAddress> {
        let s = self.segs[..self.n]
            .iter()
            .rev()
            .find(|s| s.write && s.len > 0)?;
        Some(GuestAddress(s.addr + u64::from(s.len) - 1))
    }
}

/// Copies `dst.len()` bytes from `src` into `dst`, the 16-byte-aligned middle of `dst` with
/// non-temporal stores (no read-for-ownership of the destination lines, which are not kept in
/// the cache), and fences them so they are visible to every thread before this returns.
///
/// # Safety
/// `src` must be valid for reads of `dst.len()` bytes and not overlap `dst`.
unsafe fn copy_streaming(dst: &mut [u8], src: *const u8) {
    let n = dst.len();
    let d = dst.as_mut_ptr();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        let head = d.align_offset(16).min(n);
        let body = (n - head) / 16 * 16;
        // SAFETY: head, body and tail split `0..n`; the caller vouches for `src`; the body's
        // stores go to 16-byte-aligned addresses inside `dst` (SSE2 is part of x86-64).
        unsafe {
            std::ptr::copy_nonoverlapping(src, d, head);
            let mut i = head;
            while i < head + body {
                let v = _mm_loadu_si128(src.add(i).cast::<__m128i>());
                _mm_stream_si128(d.add(i).cast::<__m128i>(), v);
                i += 16;
            }
            std::ptr::copy_nonoverlapping(src.add(i), d.add(i), n - i);
            _mm_sfence();
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: as the caller vouches.
    unsafe {
        std::ptr::copy_nonoverlapping(src, d, n)
    };
}

/// The serial number as GET_ID returns it: the first 20 bytes, zero-padded.
pub fn serial_bytes(serial: &str) -> [u8; SERIAL_BYTES] {
    let mut s = [0u8; SERIAL_BYTES];
    for (d, b) in s.iter_mut().zip(serial.bytes()) {
        *d = b;
    }
    s
}

/// One request's outcome: the status and how many bytes were written to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// VIRTIO_BLK_S_*.
    pub status: u8,
    /// Bytes written into the chain including the status byte.
    pub used_len: u32,
}

impl Outcome {
    /// The request failed (bad request or backend error): only the status byte is written.
    pub const IOERR: Outcome = Outcome {
        status: S_IOERR,
        used_len: 1,
    };
    /// Success with `data` bytes written to the guest before the status byte.
    pub fn ok(data: u64) -> Outcome {
        Outcome {
            status: S_OK,
            used_len: u32::try_from(data + 1).unwrap_or(u32::MAX),
        }
    }
}

/// A request after every guest value in it was checked: what the backend has to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Req {
    /// Read `len` bytes at `off` into the chain's writable data.
    Read {
        /// Byte offset on the disk.
        off: u64,
        /// Bytes (a multiple of 512, at most [`MAX_REQUEST_BYTES`]).
        len: usize,
    },
    /// Write the chain's `len` readable data bytes (after the header) at `off`.
    Write {
        /// Byte offset on the disk.
        off: u64,
        /// Bytes (a multiple of 512, at most [`MAX_REQUEST_BYTES`]).
        len: usize,
    },
    /// Make every completed write durable.
    Flush,
    /// Write the first `len` bytes of the serial number.
    GetId {
        /// At most the serial's 20 bytes.
        len: usize,
    },
    /// Free `len` bytes at `off`.
    Discard {
        /// Byte offset on the disk.
        off: u64,
        /// Bytes.
        len: u64,
    },
    /// Zero `len` bytes at `off`.
    WriteZeroes {
        /// Byte offset on the disk.
        off: u64,
        /// Bytes.
        len: u64,
    },
    /// Answered without the backend (malformed, out of range, read-only or unsupported).
    Done(Outcome),
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Reads and checks the request in `chain` for a disk of `size` bytes: the header, the data
/// length against the chain and [`MAX_REQUEST_BYTES`], the sector range against the disk, the
/// discard segment. Reads guest memory only through the chain's checked segments.
pub fn parse(mem: &GuestMemoryMmap, chain: &Chain, size: u64, read_only: bool) -> Req {
    let ioerr = Req::Done(Outcome::IOERR);
    let mut hdr = [0u8; 16];
    if chain.readable_bytes < 16 || !chain.gather(mem, 0, &mut hdr) {
        return ioerr;
    }
    let rtype = le_u32(&hdr[0..4]);
    let sector = le_u64(&hdr[8..16]);
    let payload_in = chain.readable_bytes - 16;
    let payload_out = chain.writable_bytes - 1;
    let range =
        |off: Option<u64>, len: u64| off.filter(|o| o.checked_add(len).is_some_and(|e| e <= size));
    match rtype {
        T_IN | T_OUT => {
            let len = if rtype == T_IN {
                payload_out
            } else {
                payload_in
            };
            if len % 512 != 0 || len > MAX_REQUEST_BYTES as u64 {
                return ioerr;
            }
            let Some(off) = range(sector.checked_mul(512), len) else {
                return ioerr;
            };
            let len = len as usize;
            if rtype == T_IN {
                Req::Read { off, len }
            } else if read_only {
                ioerr
            } else {
                Req::Write { off, len }
            }
        }
        T_FLUSH => Req::Flush,
        T_GET_ID => Req::GetId {
            len: usize::try_from(payload_out).map_or(SERIAL_BYTES, |n| n.min(SERIAL_BYTES)),
        },
        T_DISCARD | T_WRITE_ZEROES => {
            // One 16-byte segment {sector, num_sectors, flags}; we advertise max_*_seg = 1.
            let mut seg = [0u8; 16];
            if payload_in != 16 || read_only || !chain.gather(mem, 16, &mut seg) {
                return ioerr;
            }
            let count = le_u32(&seg[8..12]);
            let flags = le_u32(&seg[12..16]);
            let allowed = if rtype == T_WRITE_ZEROES { 1 } else { 0 };
            if flags & !allowed != 0 {
                return Req::Done(Outcome {
                    status: S_UNSUPP,
                    used_len: 1,
                });
            }
            let len = u64::from(count) * 512;
            if count > MAX_DISCARD_SECTORS {
                return ioerr;
            }
            let Some(off) = range(le_u64(&seg[0..8]).checked_mul(512), len) else {
                return ioerr;
            };
            if rtype == T_DISCARD {
                Req::Discard { off, len }
            } else {
                Req::WriteZeroes { off, len }
            }
        }
        _ => Req::Done(Outcome {
            status: S_UNSUPP,
            used_len: 1,
        }),
    }
}

/// The buffer a request's data passes through when the backend lends no bytes of its own
/// ([`DiskBackend::read_direct`]): allocated on first use, so a handler on a RAM disk (which
/// lends its bytes) never holds one.
#[derive(Default)]
struct Bounce {
    buf: Vec<u8>,
    /// Start of the 4 KiB-aligned window in `buf` (O_DIRECT backends need aligned buffers).
    off: usize,
}

impl Bounce {
    /// The first `len` bytes (at most [`MAX_REQUEST_BYTES`]) of the aligned window.
    fn get(&mut self, len: usize) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf = vec![0u8; MAX_REQUEST_BYTES + 4096];
            self.off = self.buf.as_ptr().align_offset(4096).min(4096);
        }
        &mut self.buf[self.off..self.off + len]
    }
}

/// Serves one queue: parses chains, calls the backend, completes requests.
pub struct BlkQueueHandler {
    backend: Arc<dyn DiskBackend>,
    mem: Arc<GuestMemoryMmap>,
    serial: [u8; SERIAL_BYTES],
    counters: Arc<DeviceCounters>,
    bounce: Bounce,
    read_only: bool,
    queue_index: usize,
}

impl BlkQueueHandler {
    /// A handler for one queue of the disk (its bounce buffer comes with the first request that
    /// needs one).
    pub fn new(
        backend: Arc<dyn DiskBackend>,
        mem: Arc<GuestMemoryMmap>,
        serial: &str,
        counters: Arc<DeviceCounters>,
    ) -> Self {
        let s = serial_bytes(serial);
        let read_only = backend.read_only();
        Self {
            backend,
            mem,
            serial: s,
            counters,
            bounce: Bounce::default(),
            read_only,
            queue_index: 0,
        }
    }

    /// The queue this handler serves (for the per-queue request counters).
    pub fn with_queue_index(mut self, index: u16) -> Self {
        self.queue_index = usize::from(index);
        self
    }

    /// Executes one walked chain.
    pub fn execute(&mut self, chain: &Chain) -> Outcome {
        let mem = self.mem.clone();
        let req = parse(&mem, chain, self.backend.size_bytes(), self.read_only);
        let ioerr = Outcome::IOERR;
        match req {
            Req::Done(out) => out,
            Req::Read { off, len } => {
                // Straight from the disk's bytes into the chain when the disk lends them (one
                // copy), else through the bounce buffer.
                let direct = self.backend.read_direct(off, len, &mut |at, piece| {
                    chain.scatter(&mem, at as u64, piece)
                });
                let ok = match direct {
                    Some(r) => r.is_ok(),
                    None => {
                        let buf = self.bounce.get(len);
                        self.backend.read(off, buf).is_ok() && chain.scatter(&mem, 0, buf)
                    }
                };
                if !ok {
                    return ioerr;
                }
                self.counters.count_read(len);
                Outcome::ok(len as u64)
            }
            Req::Write { off, len } => {
                // The data follows the 16-byte header in the chain's readable space.
                let direct = self.backend.write_direct(off, len, &mut |at, piece| {
                    chain.gather_streaming(&mem, 16 + at as u64, piece)
                });
                let ok = match direct {
                    Some(r) => r.is_ok(),
                    None => {
                        let buf = self.bounce.get(len);
                        chain.gather(&mem, 16, buf) && self.backend.write(off, buf).is_ok()
                    }
                };
                if !ok {
                    return ioerr;
                }
                self.counters.count_write(len);
                Outcome::ok(0)
            }
            Req::Flush => {
                self.counters.flush_ops.fetch_add(1, Ordering::Relaxed);
                if self.backend.flush().is_err() {
                    return ioerr;
                }
                Outcome::ok(0)
            }
            Req::GetId { len } => {
                if !chain.scatter(&mem, 0, &self.serial[..len]) {
                    return ioerr;
                }
                Outcome::ok(len as u64)
            }
            Req::Discard { off, len } | Req::WriteZeroes { off, len } => {
                let r = if matches!(req, Req::Discard { .. }) {
                    self.backend.discard(off, len)
                } else {
                    self.backend.write_zeroes(off, len)
                };
                self.counters.discard_ops.fetch_add(1, Ordering::Relaxed);
                if r.is_err() {
                    return ioerr;
                }
                Outcome::ok(0)
            }
        }
    }

    /// Bytes of bounce buffer this handler holds (0 until a backend without direct access
    /// needed one).
    pub fn bounce_bytes(&self) -> usize {
        self.bounce.buf.len()
    }

    /// Executes `chain` and writes its status byte; returns the used length to report.
    pub fn complete(&mut self, chain: &Chain) -> u32 {
        let out = self.execute(chain);
        if out.status != S_OK {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        match chain.status_addr() {
            Some(a) if self.mem.write_obj(out.status, a).is_ok() => out.used_len,
            _ => 0,
        }
    }

    /// Takes and completes every chain available now, leaving guest notifications off (see
    /// [`super::PolledQueue`]). Returns whether it took any chain and whether the guest must
    /// be interrupted.
    pub fn serve_available(&mut self, queue: &mut Queue) -> (bool, bool) {
        let mem = self.mem.clone();
        // Notifications need no turning off: with the event index the guest kicks only when
        // it passes the avail_event that arming last wrote; without it, it always kicks.
        let mut used_any = false;
        // One clock read per request: each one's time runs from the end of the one before.
        let mut t0 = Instant::now();
        while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
            self.counters.count_queue(self.queue_index);
            let head = chain.head_index();
            let walked = Chain::walk(
                &mem,
                chain.map(|d| (d.addr().0, d.len(), d.is_write_only())),
            );
            let used_len = match walked {
                Ok(c) => self.complete(&c),
                Err(_) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    0
                }
            };
            let t1 = Instant::now();
            let elapsed = u64::try_from(t1.duration_since(t0).as_nanos()).unwrap_or(u64::MAX);
            t0 = t1;
            self.counters
                .latency_ns_total
                .fetch_add(elapsed, Ordering::Relaxed);
            if queue.add_used(&*mem, head, used_len).is_err() {
                // The used ring is unusable (bad address): stop serving until the next kick.
                return (false, used_any);
            }
            used_any = true;
        }
        (
            used_any,
            used_any && queue.needs_notification(&*mem).unwrap_or(true),
        )
    }

    /// Drains the queue and re-arms guest notifications; returns true if the guest must be
    /// interrupted. A ring index that points past what can be taken ends it after one more
    /// look (it never spins on it).
    pub fn process_queue(&mut self, queue: &mut Queue) -> bool {
        let mut interrupt = false;
        let mut rearmed = false;
        loop {
            let (took, irq) = self.serve_available(queue);
            interrupt |= irq;
            if !took && rearmed {
                break;
            }
            if !arm(queue, &self.mem) {
                break;
            }
            rearmed = true;
        }
        interrupt
    }
}

/// Turns guest notifications of `queue` back on (the event index: avail_event catches up);
/// true if chains arrived meanwhile.
pub(super) fn arm(queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
    if queue.event_idx_enabled() {
        queue.enable_notification(mem).unwrap_or(false)
    } else {
        pending(queue, mem)
    }
}

/// Whether the guest made chains available that were not taken yet.
pub(super) fn pending(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    queue
        .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
        .is_ok_and(|i| i.0 != queue.next_avail())
}

/// A queue served inline on its own thread (memory-speed backends), busy-polled between kicks.
struct InlineQueue {
    handler: BlkQueueHandler,
    queue: Queue,
    irq: QueueIrq,
}

impl super::PolledQueue for InlineQueue {
    fn serve(&mut self) -> bool {
        let (took, irq) = self.handler.serve_available(&mut self.queue);
        if irq {
            self.irq.trigger();
        }
        took
    }

    fn pending(&mut self) -> bool {
        pending(&self.queue, &self.handler.mem)
    }

    fn arm(&mut self) -> bool {
        arm(&mut self.queue, &self.handler.mem)
    }
}

/// The virtio-blk device.
pub struct Blk {
    backend: Arc<dyn DiskBackend>,
    id: String,
    queues: u16,
    queue_size: u16,
    counters: Arc<DeviceCounters>,
    workers: Vec<Worker>,
    pools: Vec<super::blk_pool::Pool>,
    asyncs: Vec<(Worker, Arc<AsyncQueue>)>,
    /// Per queue, the io_uring of a disk that is a host file ([`super::blk_uring`]) or an
    /// engine disk (direct reads, [`super::blk_direct`]); empty for other disks or if the
    /// kernel refused the rings (then lanes serve the file, the engine serves every read).
    rings: Vec<super::blk_uring::RingHome>,
    config: [u8; 60],
}

impl Blk {
    /// A device for `cfg`.
    pub fn new(cfg: &DiskConfig) -> Self {
        let mut config = [0u8; 60];
        let sectors = cfg.backend.size_bytes() / 512;
        config[0..8].copy_from_slice(&sectors.to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&512u32.to_le_bytes());
        config[34..36].copy_from_slice(&cfg.queues.to_le_bytes());
        config[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        config[40..44].copy_from_slice(&1u32.to_le_bytes());
        config[44..48].copy_from_slice(&8u32.to_le_bytes());
        config[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        config[52..56].copy_from_slice(&1u32.to_le_bytes());
        config[56] = 1;
        // Made here, outside the sandbox: a device thread may not set up rings.
        // An engine disk's queues get rings without a file, for direct reads
        // ([`super::blk_direct`]).
        let engine = cfg
            .backend
            .as_async()
            .is_some_and(|a| a.engine_handle().is_some());
        let rings: Option<Vec<_>> = if engine {
            (0..cfg.queues)
                .map(|_| super::blk_uring::QueueRing::unbound(cfg.queue_size))
                .map(|r| r.map(|r| Arc::new(parking_lot::Mutex::new(Some(r)))))
                .collect()
        } else {
            cfg.backend.host_file().and_then(|f| {
                (0..cfg.queues)
                    .map(|_| super::blk_uring::QueueRing::new(f.clone(), cfg.queue_size))
                    .map(|r| r.map(|r| Arc::new(parking_lot::Mutex::new(Some(r)))))
                    .collect()
            })
        };
        Self {
            backend: cfg.backend.clone(),
            id: cfg.id.clone(),
            queues: cfg.queues,
            queue_size: cfg.queue_size,
            counters: Arc::new(DeviceCounters::default()),
            workers: Vec::new(),
            pools: Vec::new(),
            asyncs: Vec::new(),
            rings: rings.unwrap_or_default(),
            config,
        }
    }
}

impl Blk {
    /// Per queue: a queue thread that parses chains and hands each to one of the queue's
    /// driver tasks on the disk's runtime.
    fn activate_async(&mut self, mut ctx: ActivateContext, disk: Arc<dyn AsyncDisk>) -> Result<()> {
        let queues = std::mem::take(&mut ctx.queues);
        let max_inflight = queues.iter().map(|q| usize::from(q.queue.size())).sum();
        let order = Arc::new(WriteOrder::new(max_inflight));
        for aq in queues {
            let kick = aq
                .notify
                .try_clone()
                .map_err(io_err("clone queue eventfd"))?;
            let irq = aq.irq;
            let limit = usize::from(aq.queue.size());
            let direct = match (disk.engine_handle(), self.rings.get(usize::from(aq.index))) {
                (Some(h), Some(home)) => {
                    super::blk_direct::DirectReads::new(home.clone(), h.clone())
                }
                _ => None,
            };
            let q = AsyncQueue::new(
                aq.queue,
                QueueSetup {
                    mem: ctx.mem.clone(),
                    disk: disk.clone(),
                    order: order.clone(),
                    counters: self.counters.clone(),
                    irq: Box::new(move || irq.trigger()),
                    serial: serial_bytes(&self.id),
                    size: self.backend.size_bytes(),
                    read_only: self.backend.read_only(),
                    queue_index: usize::from(aq.index),
                    kick,
                    limit,
                },
            );
            // The queue thread owns the drivers' stop: when it ends (reset, VM deleted), the
            // drivers end too, once their requests finished.
            let w = Worker::spawn_polled(
                format!("{}-q{}", ctx.name, aq.index),
                super::ThreadEnv {
                    seccomp: ctx.seccomp,
                    cpu: ctx.cpu.clone(),
                },
                aq.notify,
                ASYNC_POLL_MAX,
                PolledAsyncQueue::new(q.clone(), direct),
            )?;
            self.asyncs.push((w, q));
        }
        Ok(())
    }
}

impl Blk {
    /// Serves `aq` through its queue's own io_uring ([`super::blk_uring`]) if the disk is a
    /// host file and the ring is at hand; else gives the queue back.
    fn activate_uring(
        &self,
        ctx: &ActivateContext,
        aq: super::ActiveQueue,
    ) -> std::result::Result<Result<Worker>, super::ActiveQueue> {
        let Some(home) = self.rings.get(usize::from(aq.index)) else {
            return Err(aq);
        };
        let Some(ring) = home.lock().take() else {
            return Err(aq);
        };
        let handler = BlkQueueHandler::new(
            self.backend.clone(),
            ctx.mem.clone(),
            &self.id,
            self.counters.clone(),
        )
        .with_queue_index(aq.index);
        let setup = super::blk_uring::UringSetup {
            queue: aq.queue,
            irq: Box::new(move || aq.irq.trigger()),
            mem: ctx.mem.clone(),
            handler,
            counters: self.counters.clone(),
            size: self.backend.size_bytes(),
            read_only: self.backend.read_only(),
            queue_index: usize::from(aq.index),
        };
        let mut q = super::blk_uring::UringQueue::new(home.clone(), ring, setup);
        let fd = q.completion_fd();
        Ok(Worker::spawn(
            format!("{}-q{}", ctx.name, aq.index),
            ctx.seccomp,
            ctx.cpu.clone(),
            aq.notify,
            Some(fd),
            move |completions| {
                q.on_event(completions);
                true
            },
        ))
    }
}

impl VirtioDevice for Blk {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![self.queue_size; usize::from(self.queues)]
    }

    fn features(&self) -> u64 {
        let mut f = F_VERSION_1
            | F_EVENT_IDX
            | F_INDIRECT_DESC
            | F_SIZE_MAX
            | F_SEG_MAX
            | F_BLK_SIZE
            | F_FLUSH
            | F_DISCARD
            | F_WRITE_ZEROES;
        if self.queues > 1 {
            f |= F_MQ;
        }
        if self.backend.read_only() {
            f |= F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<()> {
        if let Some(disk) = self.backend.as_async() {
            return self.activate_async(ctx, disk);
        }
        let lanes = self
            .backend
            .concurrency()
            .clamp(1, super::blk_pool::MAX_LANES);
        for aq in std::mem::take(&mut ctx.queues) {
            let aq = match self.activate_uring(&ctx, aq) {
                Ok(w) => {
                    self.workers.push(w?);
                    continue;
                }
                Err(aq) => aq,
            };
            if lanes > 1 {
                let pool = super::blk_pool::spawn(
                    &ctx,
                    aq,
                    self.backend.clone(),
                    &self.id,
                    self.counters.clone(),
                    lanes,
                )?;
                self.pools.push(pool);
                continue;
            }
            let handler = BlkQueueHandler::new(
                self.backend.clone(),
                ctx.mem.clone(),
                &self.id,
                self.counters.clone(),
            )
            .with_queue_index(aq.index);
            let w = Worker::spawn_polled(
                format!("{}-q{}", ctx.name, aq.index),
                super::ThreadEnv {
                    seccomp: ctx.seccomp,
                    cpu: ctx.cpu.clone(),
                },
                aq.notify,
                super::POLL_MAX,
                InlineQueue {
                    handler,
                    queue: aq.queue,
                    irq: aq.irq,
                },
            )?;
            self.workers.push(w);
        }
        Ok(())
    }

    fn reset(&mut self) {
        for mut w in self.workers.drain(..) {
            w.stop();
        }
        // Stop taking requests on every queue first, then wait for each queue's in-flight ones.
        for (w, _) in self.asyncs.iter_mut() {
            w.stop();
        }
        // One bound for the whole device, not one per queue.
        let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
        for (_, q) in self.asyncs.drain(..) {
            // Requests cut off from guest memory after the drain timeout count as errors (the
            // guest reset the device, so nobody waits for their answer).
            let left =
                q.close(deadline.saturating_duration_since(std::time::Instant::now())) as u64;
            self.counters.errors.fetch_add(left, Ordering::Relaxed);
        }
        for mut p in self.pools.drain(..) {
            p.stop();
        }
    }

    fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_copy_matches_a_plain_copy_at_any_alignment() {
        let src: Vec<u8> = (0..9000u32).map(|i| (i * 31 % 253) as u8).collect();
        let mut dst = vec![0u8; 9100];
        for (d_off, s_off, n) in [
            (0, 0, 4096),
            (1, 0, 4096),
            (5, 3, 4095),
            (16, 7, 17),
            (3, 1, 15),
            (0, 0, 0),
            (48, 512, 8192),
        ] {
            dst.fill(0xaa);
            // SAFETY: `src[s_off..]` holds at least `n` bytes; `dst` is another allocation.
            unsafe { copy_streaming(&mut dst[d_off..d_off + n], src[s_off..].as_ptr()) };
            assert_eq!(
                &dst[d_off..d_off + n],
                &src[s_off..s_off + n],
                "{d_off} {s_off} {n}"
            );
            assert!(dst[..d_off].iter().all(|b| *b == 0xaa), "nothing before");
            assert!(dst[d_off + n..].iter().all(|b| *b == 0xaa), "nothing after");
        }
    }
}
