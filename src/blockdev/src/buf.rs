//! Buffers aligned for O_DIRECT, owned by the I/O while it is in flight.
//!
//! Freed buffers up to 4 MiB are kept in a small bounded pool, by size class (powers of two from
//! 4 KiB to 4 MiB), and handed out again: a stream of 1 MiB requests otherwise pays for fresh
//! pages (page faults and kernel page clearing) and a full memset on every request. A buffer of
//! another length up to 4 MiB (one physical run of a fragmented read, say 3 blocks) is carved
//! from its class's allocation (the next power of two), so it is pooled too instead of costing
//! a zeroed allocation and a free each time. Pooled memory is always initialised (every
//! allocation starts zeroed and is only ever written through safe slices), so handing it out
//! again never exposes uninitialised memory.
//!
//! Buffers from 256 KiB to 1 MiB come from the registered-buffer arena (`arena.rs`) while it
//! exists and has a free slot, so the io_uring backend can use READ_FIXED / WRITE_FIXED on them.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut, Range};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use crate::{arena, BLOCK_SIZE};

/// Size classes kept: `BLOCK_SIZE << 0 ..= BLOCK_SIZE << 10` (4 KiB to 4 MiB).
const POOL_CLASSES: usize = 11;
/// Bound on the memory one class may hold while idle.
const POOL_BYTES_PER_CLASS: usize = 16 << 20;
/// Bound on the number of idle buffers in one class (the 4 KiB class).
const POOL_MAX_PER_CLASS: usize = 512;

/// An idle allocation of its class's size, with the `Layout` `AlignedBuf::layout` gives it.
struct Idle(NonNull<u8>);
// SAFETY: an idle allocation is owned by the pool alone; nothing else points into it.
unsafe impl Send for Idle {}

static POOL: [Mutex<Vec<Idle>>; POOL_CLASSES] = [const { Mutex::new(Vec::new()) }; POOL_CLASSES];

/// The allocation size for a buffer of `len` bytes (a multiple of `BLOCK_SIZE`): its class's
/// size when it has one below the pool's largest, else `len` itself.
fn capacity_for(len: usize) -> usize {
    let pooled = len.next_power_of_two();
    if class_of(pooled).is_some() {
        pooled
    } else {
        len
    }
}

fn class_of(len: usize) -> Option<usize> {
    let blocks = len / BLOCK_SIZE;
    (len.is_multiple_of(BLOCK_SIZE) && blocks.is_power_of_two())
        .then(|| blocks.trailing_zeros() as usize)
        .filter(|&c| c < POOL_CLASSES)
}

fn pool_take(len: usize) -> Option<NonNull<u8>> {
    let c = class_of(len)?;
    let mut idle = POOL[c].lock().unwrap_or_else(|e| e.into_inner());
    idle.pop().map(|i| i.0)
}

/// Keep `ptr` (an allocation of `len` bytes) for reuse; false if the pool is full.
fn pool_give(ptr: NonNull<u8>, len: usize) -> bool {
    let Some(c) = class_of(len) else {
        return false;
    };
    let cap = (POOL_BYTES_PER_CLASS / len).min(POOL_MAX_PER_CLASS);
    let mut idle = POOL[c].lock().unwrap_or_else(|e| e.into_inner());
    if idle.len() >= cap {
        return false;
    }
    idle.push(Idle(ptr));
    true
}

/// A heap buffer whose address and length are multiples of `BLOCK_SIZE`.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// Bytes allocated (`capacity_for(len)`), all initialised; `len` of them are in use.
    cap: usize,
    /// Taken from the pool and not yet cleared (only `zeroed` cares).
    recycled: bool,
    /// A slot of the registered-buffer arena (given back there, never freed).
    in_arena: bool,
}

// SAFETY: AlignedBuf uniquely owns its allocation, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`, like a Box<[u8]>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes; `len` is rounded up to a whole block (minimum one block).
    pub fn zeroed(len: usize) -> Self {
        let mut b = Self::for_overwrite(len);
        if b.recycled {
            b.fill(0);
            b.recycled = false;
        }
        b
    }

    /// A buffer of `len` bytes (rounded up like `zeroed`) whose contents are unspecified: zeros,
    /// or bytes an earlier buffer held. For callers that overwrite all of it before looking at
    /// it, such as a device read (which either fills the whole buffer or fails). Never
    /// uninitialised memory.
    pub fn for_overwrite(len: usize) -> Self {
        let len = len.max(1).div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        let cap = capacity_for(len);
        if (arena::MIN_BYTES..=arena::SLOT_BYTES).contains(&cap) {
            if let Some(ptr) = arena::get().and_then(|a| a.take()) {
                return Self {
                    ptr,
                    len,
                    cap,
                    recycled: true,
                    in_arena: true,
                };
            }
        }
        if let Some(ptr) = pool_take(cap) {
            return Self {
                ptr,
                len,
                cap,
                recycled: true,
                in_arena: false,
            };
        }
        let layout = Self::layout(cap);
        // SAFETY: layout has non-zero size (cap >= len >= BLOCK_SIZE) and a valid power-of-two
        // alignment.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        Self {
            ptr,
            len,
            cap,
            recycled: false,
            in_arena: false,
        }
    }

    /// A buffer holding a copy of `data`, zero-padded to a whole block.
    pub fn from_slice(data: &[u8]) -> Self {
        let mut b = Self::for_overwrite(data.len());
        b[..data.len()].copy_from_slice(data);
        b[data.len()..].fill(0);
        b.recycled = false;
        b
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, BLOCK_SIZE).expect("BLOCK_SIZE-aligned layout is valid")
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Share this buffer read-only, for writes.
    pub fn into_write(self) -> WriteBuf {
        let len = self.len;
        WriteBuf {
            buf: Arc::new(self),
            range: 0..len,
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.in_arena {
            let given = arena::get().is_some_and(|a| a.give(self.ptr));
            debug_assert!(given, "an arena buffer outside the arena");
            return;
        }
        if pool_give(self.ptr, self.cap) {
            return;
        }
        // SAFETY: ptr was allocated in `for_overwrite` with exactly this layout (`cap` bytes;
        // pooled allocations keep their class's layout) and is freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes for the lifetime of &self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

/// A read-only, cheaply clonable window of an `AlignedBuf`, used as the payload of writes.
/// The range's start and length are multiples of `BLOCK_SIZE`.
#[derive(Clone, Debug)]
pub struct WriteBuf {
    buf: Arc<AlignedBuf>,
    range: Range<usize>,
}

impl WriteBuf {
    pub fn new(buf: Arc<AlignedBuf>) -> Self {
        let len = buf.len();
        Self { buf, range: 0..len }
    }

    /// A sub-window, relative to this one. Panics if not block-aligned or out of range.
    pub fn slice(&self, range: Range<usize>) -> WriteBuf {
        assert!(range.start.is_multiple_of(BLOCK_SIZE) && range.end.is_multiple_of(BLOCK_SIZE));
        assert!(range.start <= range.end && range.end <= self.len());
        let start = self.range.start + range.start;
        WriteBuf {
            buf: self.buf.clone(),
            range: start..self.range.start + range.end,
        }
    }

    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.as_slice().as_ptr()
    }
}

impl From<AlignedBuf> for WriteBuf {
    fn from(b: AlignedBuf) -> Self {
        b.into_write()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_rounded() {
        let b = AlignedBuf::zeroed(100);
        assert_eq!(b.len(), BLOCK_SIZE);
        assert_eq!(b.as_ptr() as usize % BLOCK_SIZE, 0);
        assert!(b.iter().all(|&x| x == 0));
        let w = AlignedBuf::from_slice(&[7u8; 3 * BLOCK_SIZE]).into_write();
        let s = w.slice(BLOCK_SIZE..2 * BLOCK_SIZE);
        assert_eq!(s.len(), BLOCK_SIZE);
        assert_eq!(s.as_ptr() as usize % BLOCK_SIZE, 0);
        assert!(s.as_slice().iter().all(|&x| x == 7));
    }

    #[test]
    fn recycled_buffers_come_back_zeroed_or_copied() {
        // Leave dirty buffers of a pooled size behind, then ask for the same size again.
        for _ in 0..4 {
            let mut b = AlignedBuf::for_overwrite(8 * BLOCK_SIZE);
            b.fill(0xab);
        }
        let z = AlignedBuf::zeroed(8 * BLOCK_SIZE);
        assert!(
            z.iter().all(|&x| x == 0),
            "zeroed must clear a recycled buffer"
        );
        drop(z);
        let mut dirty = AlignedBuf::for_overwrite(8 * BLOCK_SIZE);
        dirty.fill(0xcd);
        drop(dirty);
        let f = AlignedBuf::from_slice(&[5u8; 8 * BLOCK_SIZE - 100]);
        assert!(f[..8 * BLOCK_SIZE - 100].iter().all(|&x| x == 5));
        assert!(
            f[8 * BLOCK_SIZE - 100..].iter().all(|&x| x == 0),
            "padding is zero"
        );
        assert_eq!(f.as_ptr() as usize % BLOCK_SIZE, 0);
        assert_eq!(class_of(3 * BLOCK_SIZE), None);
        assert_eq!(class_of(BLOCK_SIZE << 10), Some(10));
        assert_eq!(class_of(BLOCK_SIZE << 11), None);
    }

    #[test]
    fn odd_lengths_are_carved_from_their_class() {
        assert_eq!(capacity_for(3 * BLOCK_SIZE), 4 * BLOCK_SIZE);
        assert_eq!(capacity_for(BLOCK_SIZE), BLOCK_SIZE);
        assert_eq!(
            capacity_for((BLOCK_SIZE << 10) - BLOCK_SIZE),
            BLOCK_SIZE << 10
        );
        assert_eq!(
            capacity_for((BLOCK_SIZE << 10) + BLOCK_SIZE),
            (BLOCK_SIZE << 10) + BLOCK_SIZE
        );
        // A dirty 4-block allocation handed out again as a 3-block buffer: only 3 blocks show,
        // `zeroed` clears them, and the buffer goes back to the 4-block class when dropped.
        let mut a = AlignedBuf::for_overwrite(4 * BLOCK_SIZE);
        a.fill(0xee);
        drop(a);
        let mut b = AlignedBuf::zeroed(3 * BLOCK_SIZE);
        assert_eq!(b.len(), 3 * BLOCK_SIZE);
        assert!(b.iter().all(|&x| x == 0));
        b.fill(0x11);
        let w = b.into_write();
        assert_eq!(w.len(), 3 * BLOCK_SIZE);
        assert!(w.as_slice().iter().all(|&x| x == 0x11));
        drop(w);
        let c = AlignedBuf::from_slice(&[9u8; 4 * BLOCK_SIZE]);
        assert!(
            c.iter().all(|&x| x == 9),
            "a full-class buffer sees all of its bytes"
        );
    }
}
