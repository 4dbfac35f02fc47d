//! Buffers aligned for O_DIRECT, owned by the I/O while it is in flight.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut, Range};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::BLOCK_SIZE;

/// A zero-initialised heap buffer whose address and length are multiples of `BLOCK_SIZE`.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf uniquely owns its allocation, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`, like a Box<[u8]>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes; `len` is rounded up to a whole block (minimum one block).
    pub fn zeroed(len: usize) -> Self {
        let len = len.max(1).div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        let layout = Self::layout(len);
        // SAFETY: layout has non-zero size (len >= BLOCK_SIZE) and a valid power-of-two alignment.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        Self { ptr, len }
    }

    /// A buffer holding a copy of `data`, zero-padded to a whole block.
    pub fn from_slice(data: &[u8]) -> Self {
        let mut b = Self::zeroed(data.len());
        b[..data.len()].copy_from_slice(data);
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
        // SAFETY: ptr was allocated in `zeroed` with exactly this layout and is freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
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
}
