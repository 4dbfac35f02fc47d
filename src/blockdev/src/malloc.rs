//! Process-wide malloc settings for an I/O-heavy process.
//!
//! glibc serves allocations above a dynamic threshold (128 KiB at start) with a fresh `mmap` and
//! gives freed heap memory above 128 KiB at the top back to the kernel. Rebuild, export and
//! import move data in buffers of up to a few MiB whose sizes are often not a power of two (so the
//! buffer pool in `buf.rs` does not keep them); each such buffer then costs page faults and kernel
//! page clearing on every use. Measured with `bench_rebuild DIR 1024` at load 10-14 (session 7),
//! the same settings given through `GLIBC_TUNABLES` made rebuild 25-30% faster. This module only
//! sets the allocator's thresholds; it never allocates or frees anything itself.

/// Allocations up to this size come from the heap and are reused after free.
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Freed memory at the top of the heap is given back to the kernel only beyond this.
const TRIM_THRESHOLD: i32 = 256 << 20;

/// Set the thresholds. Call once at the start of `main`, before any thread is spawned. A no-op
/// where the C library is not glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes two integer parameters of the allocator; it is called before
    // other threads exist, and a refused setting (return 0) leaves the defaults in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
