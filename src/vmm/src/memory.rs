//! Guest memory: creation from a size or explicit ranges, with overlap and hole checks, and the
//! registration of every region with KVM. Never hands out host pointers outside the regions.

use crate::error::{Result, VmmError};
use crate::layout::{HIGH_RAM_START, MMIO_START};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// The guest memory type used everywhere in the VMM.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Upper bound on guest memory (256 GiB) so a bad config cannot ask for absurd mappings.
pub const MAX_MEMORY_BYTES: u64 = 256 << 30;

/// The RAM ranges for a guest of `size_bytes`: low RAM up to the MMIO hole, the rest above 4 GiB.
pub fn ram_ranges(size_bytes: u64) -> Result<Vec<(GuestAddress, usize)>> {
    if !((2 << 20)..=MAX_MEMORY_BYTES).contains(&size_bytes) || size_bytes & 0xfff != 0 {
        return Err(VmmError::InvalidConfig(format!(
            "memory size {size_bytes} must be a multiple of 4 KiB between 2 MiB and {MAX_MEMORY_BYTES}"
        )));
    }
    let low = size_bytes.min(MMIO_START);
    let mut ranges = vec![(GuestAddress(0), to_usize(low)?)];
    if size_bytes > low {
        ranges.push((GuestAddress(HIGH_RAM_START), to_usize(size_bytes - low)?));
    }
    Ok(ranges)
}

fn to_usize(v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| VmmError::Memory(format!("{v} does not fit in usize")))
}

/// Creates guest memory from explicit ranges, rejecting empty, overlapping, or hole-crossing
/// ranges with a clear error (vm-memory would also reject overlaps, less legibly).
pub fn create_memory(ranges: &[(GuestAddress, usize)]) -> Result<GuestMemoryMmap> {
    if ranges.is_empty() {
        return Err(VmmError::Memory("no memory ranges".into()));
    }
    let mut sorted: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, len) in ranges {
        let len = *len as u64;
        if len == 0 || len & 0xfff != 0 || start.raw_value() & 0xfff != 0 {
            return Err(VmmError::Memory(format!(
                "range at {:#x} of {len:#x} bytes must be non-empty and 4 KiB aligned",
                start.raw_value()
            )));
        }
        let end = start.raw_value().checked_add(len).ok_or_else(|| {
            VmmError::Memory(format!("range at {:#x} overflows", start.raw_value()))
        })?;
        if start.raw_value() < HIGH_RAM_START && end > MMIO_START {
            return Err(VmmError::Memory(format!(
                "range {:#x}..{end:#x} overlaps the MMIO hole at {MMIO_START:#x}",
                start.raw_value()
            )));
        }
        sorted.push((start.raw_value(), end));
    }
    sorted.sort_unstable();
    for w in sorted.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(VmmError::Memory(format!(
                "ranges {:#x}..{:#x} and {:#x}..{:#x} overlap",
                w[0].0, w[0].1, w[1].0, w[1].1
            )));
        }
    }
    let mem =
        GuestMemoryMmap::from_ranges(ranges).map_err(|e| VmmError::Memory(format!("mmap: {e}")))?;
    for region in mem.iter() {
        advise_guest_ram(region.as_ptr(), region.len());
    }
    Ok(mem)
}

/// Asks the kernel to back guest RAM with transparent huge pages (fewer TLB misses for the
/// guest, and 2 MiB second-level mappings for KVM: what QEMU asks for too) and to leave it out
/// of core dumps (a crashed node must not write its guests' data to disk). Advice only: a
/// kernel without THP refuses the first with EINVAL and the guest runs on 4 KiB pages.
fn advise_guest_ram(addr: *mut u8, len: u64) {
    let Ok(len) = usize::try_from(len) else {
        return;
    };
    for advice in [libc::MADV_HUGEPAGE, libc::MADV_DONTDUMP] {
        // SAFETY: `addr..addr + len` is one whole mapping vm-memory just created and owns;
        // madvise with these advices changes no contents and unmaps nothing.
        unsafe { libc::madvise(addr.cast(), len, advice) };
    }
}

/// Registers every region with KVM as a memory slot.
pub fn register_with_kvm(vm: &kvm_ioctls::VmFd, mem: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmmError::Memory(format!("host address: {e}")))?;
        let region_def = kvm_bindings::kvm_userspace_memory_region {
            slot: u32::try_from(slot).map_err(|_| VmmError::Memory("too many slots".into()))?,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region's host mapping is owned by `mem`, which the VM keeps alive (in an Arc)
        // for as long as the VM fd exists; the slot range does not overlap any other slot because
        // `create_memory` rejected overlapping ranges.
        unsafe { vm.set_user_memory_region(region_def) }
            .map_err(crate::error::kvm_err("set_user_memory_region"))?;
    }
    Ok(())
}

/// Total RAM bytes.
pub fn total_bytes(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_ranges_are_rejected() {
        let err = create_memory(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x8_0000), 0x10_0000),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("overlap"), "{err}");
    }

    #[test]
    fn hole_crossing_is_rejected() {
        let err = create_memory(&[(GuestAddress(MMIO_START - 0x1000), 0x2000)]).unwrap_err();
        assert!(err.to_string().contains("MMIO hole"), "{err}");
    }

    /// The "VmFlags:" line of the smaps entry of the mapping starting at `addr`.
    fn vm_flags(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut ours = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((start, _)) = range.split_once('-') {
                    if let Ok(start) = usize::from_str_radix(start, 16) {
                        ours = start == addr;
                        continue;
                    }
                }
            }
            if ours {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.trim().to_string());
                }
            }
        }
        None
    }

    #[test]
    fn guest_ram_asks_for_huge_pages_and_stays_out_of_core_dumps() {
        let m = create_memory(&ram_ranges(8 << 20).unwrap()).unwrap();
        let region = m.iter().next().unwrap();
        let flags = vm_flags(region.as_ptr() as usize).expect("the guest RAM mapping is in smaps");
        let flags: Vec<&str> = flags.split_whitespace().collect();
        assert!(
            flags.contains(&"dd"),
            "not left out of core dumps: {flags:?}"
        );
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
        match thp {
            Ok(mode) if !mode.contains("[never]") => {
                assert!(flags.contains(&"hg"), "no huge-page advice: {flags:?}")
            }
            _ => eprintln!("skipped: huge-page advice (kernel without transparent huge pages)"),
        }
    }

    #[test]
    fn split_above_hole() {
        let r = ram_ranges(MMIO_START + (1 << 20)).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].0, GuestAddress(HIGH_RAM_START));
        assert_eq!(r[1].1, 1 << 20);
        assert!(ram_ranges(1000).is_err());
        let m = create_memory(&ram_ranges(16 << 20).unwrap()).unwrap();
        assert_eq!(total_bytes(&m), 16 << 20);
    }
}
