//! Test guests for the VMM tests, built from `guest/` by `build.rs`.
//!
//! The guest is a PVH ELF: 32-bit entry, long mode, then ring 3 with IOPL=3, where it runs the
//! tests named on its command line and reports over the debug ports (0xe9 bytes, 0x501 exit
//! code, 0x80 progress). This crate only locates the built file; it never runs anything.
#![forbid(unsafe_code)]

/// Path of the built test guest ELF.
pub fn guest_elf_path() -> &'static str {
    concat!(env!("OUT_DIR"), "/guest.elf")
}

/// The built test guest ELF, embedded so callers (benchmarks) need no build tree at run time.
pub const GUEST_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest.elf"));
