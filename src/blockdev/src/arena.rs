//! The registered-buffer arena: one fixed region of memory that every io_uring ring registers
//! (IORING_REGISTER_BUFFERS), carved into 1 MiB slots that large `AlignedBuf`s are served from.
//!
//! An O_DIRECT read or write of a plain buffer makes the kernel look up and pin every page of it
//! for the duration of the I/O (and unpin them after): about 15% of the CPU of a 1 MiB read
//! (perf, session 10). A buffer inside a registered region was pinned once, at registration, so
//! READ_FIXED / WRITE_FIXED skip that work. Small buffers gain little (one page) and stay in the
//! ordinary pool (`buf.rs`); a buffer from 256 KiB to 1 MiB takes a slot while one is free and
//! falls back to the pool when all are taken.
//!
//! The arena is mapped once, the first time a ring asks for it, and never unmapped, moved or
//! given back (no `munmap`, no `MADV_DONTNEED`): registered pages must stay the pages the
//! process sees at those addresses for as long as any ring holds them, which is simplest to
//! guarantee for a mapping that lives as long as the process. It is excluded from `fork`
//! (MADV_DONTFORK), so a child process never shares (or copies on write) pinned pages.
//! Its memory starts zeroed and is only written through `AlignedBuf`'s safe slices, so a slot
//! handed out again never exposes uninitialised memory (the same rule as the pool's).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Bytes per slot: the largest buffer the arena serves.
pub(crate) const SLOT_BYTES: usize = 1 << 20;
/// Slots in the arena (at most 64: the free set is one `u64`). 16 MiB stays pinned for the life
/// of the process; that covers a few streams of 1 MiB requests at queue depth 4-8.
const SLOTS: usize = 16;
/// The smallest buffer worth a slot: a quarter of one, so a slot is never mostly idle, and
/// above the 128 KiB that callers keep in pools of their own for long (vmm's per-queue request
/// buffers), which would otherwise hold slots while doing no I/O.
pub(crate) const MIN_BYTES: usize = 256 << 10;
/// The arena's start is aligned to this, so transparent huge pages can back it (fewer pages to
/// pin and to describe per ring).
const HUGE_PAGE_BYTES: usize = 2 << 20;

pub(crate) struct Arena {
    base: NonNull<u8>,
    /// Bit `i` set: slot `i` is free.
    free: AtomicU64,
}

// SAFETY: the arena only hands out disjoint slots (each owned by one `AlignedBuf` at a time,
// tracked by the atomic free set); `base` itself is never written through.
unsafe impl Send for Arena {}
// SAFETY: as above; all shared state is the atomic free set.
unsafe impl Sync for Arena {}

static ARENA: OnceLock<Option<Arena>> = OnceLock::new();

/// The arena if it exists (it is created by [`get_or_create`] only).
pub(crate) fn get() -> Option<&'static Arena> {
    ARENA.get().and_then(Option::as_ref)
}

/// The arena, mapped on the first call; `None` if the mapping failed (every caller then uses
/// plain buffers).
pub(crate) fn get_or_create() -> Option<&'static Arena> {
    ARENA.get_or_init(Arena::map).as_ref()
}

impl Arena {
    fn map() -> Option<Arena> {
        let len = SLOTS * SLOT_BYTES;
        let map_len = len + HUGE_PAGE_BYTES;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches
        // no existing memory; the result is checked below.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return None;
        }
        // The aligned start; the unaligned head and tail stay mapped (and unused) so nothing in
        // the mapping is ever unmapped.
        let base = (raw as usize).next_multiple_of(HUGE_PAGE_BYTES) as *mut u8;
        // SAFETY: [base, base + len) lies inside the mapping just made. Both calls only set
        // advice; a refusal (THP off, old kernel) changes nothing we rely on except DONTFORK,
        // whose failure only means a child process would share the pages copy-on-write, which
        // kernels that pin with FOLL_LONGTERM handle by copying for the child.
        unsafe {
            libc::madvise(base.cast(), len, libc::MADV_HUGEPAGE);
            libc::madvise(base.cast(), len, libc::MADV_DONTFORK);
        }
        Some(Arena {
            base: NonNull::new(base)?,
            free: AtomicU64::new(if SLOTS == 64 {
                u64::MAX
            } else {
                (1u64 << SLOTS) - 1
            }),
        })
    }

    /// The one region rings register (buffer index 0).
    pub(crate) fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.base.as_ptr().cast(),
            iov_len: SLOTS * SLOT_BYTES,
        }
    }

    /// A free slot's memory (`SLOT_BYTES`, zeroed or dirty, never uninitialised), or `None`.
    pub(crate) fn take(&self) -> Option<NonNull<u8>> {
        let mut cur = self.free.load(Ordering::Relaxed);
        loop {
            if cur == 0 {
                return None;
            }
            let i = cur.trailing_zeros() as usize;
            match self.free.compare_exchange_weak(
                cur,
                cur & !(1 << i),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                // SAFETY: i < SLOTS, so the slot lies inside the arena.
                Ok(_) => return NonNull::new(unsafe { self.base.as_ptr().add(i * SLOT_BYTES) }),
                Err(now) => cur = now,
            }
        }
    }

    /// Give back a slot [`Arena::take`] handed out; false (and nothing done) if `ptr` is not one.
    pub(crate) fn give(&self, ptr: NonNull<u8>) -> bool {
        let Some(off) = self.offset_of(ptr.as_ptr(), 1) else {
            return false;
        };
        debug_assert!(off.is_multiple_of(SLOT_BYTES));
        let bit = 1u64 << (off / SLOT_BYTES);
        let before = self.free.fetch_or(bit, Ordering::Release);
        assert!(before & bit == 0, "arena slot given back twice");
        true
    }

    /// Where `[ptr, ptr + len)` starts inside the arena, if it lies wholly inside.
    fn offset_of(&self, ptr: *const u8, len: usize) -> Option<usize> {
        let off = (ptr as usize).checked_sub(self.base.as_ptr() as usize)?;
        (off.checked_add(len)? <= SLOTS * SLOT_BYTES).then_some(off)
    }

    /// Whether `[ptr, ptr + len)` lies inside the arena (so READ_FIXED / WRITE_FIXED apply).
    pub(crate) fn contains(&self, ptr: *const u8, len: usize) -> bool {
        self.offset_of(ptr, len).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_disjoint_and_come_back() {
        let a = get_or_create().expect("an anonymous mapping of 18 MiB");
        // Two slots (other tests of this process may hold some meanwhile; never all).
        let taken: Vec<NonNull<u8>> = (0..2).map_while(|_| a.take()).collect();
        assert_eq!(taken.len(), 2);
        for p in &taken {
            assert!(a.contains(p.as_ptr(), SLOT_BYTES));
            assert_eq!(p.as_ptr() as usize % crate::BLOCK_SIZE, 0);
        }
        let mut addrs: Vec<usize> = taken.iter().map(|p| p.as_ptr() as usize).collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), taken.len(), "no slot handed out twice");
        for p in taken {
            assert!(a.give(p));
        }
        let outside = vec![0u8; 4096];
        assert!(!a.contains(outside.as_ptr(), 4096));
        assert!(!a.contains(a.base.as_ptr(), SLOTS * SLOT_BYTES + 1));
    }
}
