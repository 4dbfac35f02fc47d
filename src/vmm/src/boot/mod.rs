//! Loading a guest: PVH ELF (our test guests, PVH-capable vmlinux) or the Linux boot protocol
//! (bzImage, or an ELF vmlinux without a PVH note) with initrd and command line, plus the memory
//! map both protocols hand to the guest. Writes only into guest memory; vCPU registers are set
//! from the returned [`BootEntry`] by `cpu`.

use crate::error::{Result, VmmError};
use crate::layout::*;
use crate::memory::GuestMemoryMmap;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{
    self, BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability,
};
use std::fs::File;
use std::path::PathBuf;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// E820 / PVH memory types.
pub const E820_RAM: u32 = 1;
/// Reserved range.
pub const E820_RESERVED: u32 = 2;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootConfig {
    /// A PVH ELF, an ELF vmlinux, or a bzImage.
    pub kernel: PathBuf,
    /// Optional initrd / initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (max 4095 bytes).
    pub cmdline: String,
}

/// How the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// PVH: 32-bit protected mode, paging off, %ebx = start info.
    Pvh {
        /// Entry point.
        entry: u64,
        /// `hvm_start_info` address.
        start_info: u64,
    },
    /// Linux 64-bit boot protocol: long mode with identity page tables, %rsi = zero page.
    Linux64 {
        /// 64-bit entry point.
        entry: u64,
        /// `boot_params` address.
        zero_page: u64,
    },
}

/// The guest's memory map (RAM, reserved low area, ECAM), sorted.
pub fn memory_map(mem: &GuestMemoryMmap) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, LOWMEM_END, E820_RAM),
        (LOWMEM_END, HIMEM_START - LOWMEM_END, E820_RESERVED),
    ];
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        let end = start + region.len();
        let start = start.max(HIMEM_START);
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map.push((PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED));
    map.sort_unstable();
    map
}

fn open(path: &PathBuf) -> Result<File> {
    File::open(path).map_err(|e| VmmError::Boot(format!("open {}: {e}", path.display())))
}

fn last_low_ram(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .map(|r| r.start_addr().raw_value() + r.len())
        .filter(|end| *end <= MMIO_START)
        .max()
        .unwrap_or(0)
}

/// Places the initrd at the top of low RAM (below `max_addr`), page aligned.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &PathBuf,
    kernel_end: u64,
    max_addr: u64,
) -> Result<(u64, u64)> {
    let mut f = open(path)?;
    let size = f
        .metadata()
        .map_err(|e| VmmError::Boot(format!("initrd size: {e}")))?
        .len();
    let top = last_low_ram(mem).min(max_addr);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end)
        .ok_or_else(|| {
            VmmError::Boot(format!(
                "initrd of {size} bytes does not fit in guest memory"
            ))
        })?;
    let size_usize =
        usize::try_from(size).map_err(|_| VmmError::Boot("initrd too large".into()))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size_usize)
        .map_err(|e| VmmError::Boot(format!("read initrd: {e}")))?;
    Ok((addr, size))
}

fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<()> {
    let mut cl = loader::Cmdline::new(CMDLINE_MAX_BYTES)
        .map_err(|e| VmmError::Boot(format!("cmdline: {e}")))?;
    if !cmdline.is_empty() {
        cl.insert_str(cmdline)
            .map_err(|e| VmmError::Boot(format!("cmdline: {e}")))?;
    }
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(|e| VmmError::Boot(format!("cmdline: {e}")))
}

/// Loads the kernel (and initrd, command line, boot structures) into guest memory.
/// `vcpus` sizes the ACPI MADT; the RSDP address goes into the start info / zero page.
pub fn load(mem: &GuestMemoryMmap, cfg: &BootConfig, vcpus: u8) -> Result<BootEntry> {
    let rsdp = crate::acpi::write_tables(mem, vcpus)?;
    if cfg.cmdline.len() >= CMDLINE_MAX_BYTES {
        return Err(VmmError::Boot(format!(
            "command line longer than {} bytes",
            CMDLINE_MAX_BYTES - 1
        )));
    }
    let mut kernel = open(&cfg.kernel)?;
    let high = Some(GuestAddress(HIMEM_START));
    match Elf::load(mem, None, &mut kernel, high) {
        Ok(res) => {
            write_cmdline(mem, &cfg.cmdline)?;
            match res.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => {
                    configure_pvh(mem, cfg, &res, entry.raw_value(), rsdp)
                }
                _ => configure_linux(mem, cfg, &res, res.kernel_load.raw_value(), rsdp),
            }
        }
        Err(loader::Error::Elf(loader::elf::Error::InvalidElfMagicNumber)) => {
            let res = BzImage::load(mem, None, &mut kernel, high).map_err(|e| {
                VmmError::Boot(format!(
                    "{}: neither ELF nor bzImage: {e}",
                    cfg.kernel.display()
                ))
            })?;
            write_cmdline(mem, &cfg.cmdline)?;
            // The 64-bit entry of a bzImage is 0x200 past the protected-mode code start.
            configure_linux(mem, cfg, &res, res.kernel_load.raw_value() + 0x200, rsdp)
        }
        Err(e) => Err(VmmError::Boot(format!("{}: {e}", cfg.kernel.display()))),
    }
}

fn configure_pvh(
    mem: &GuestMemoryMmap,
    cfg: &BootConfig,
    res: &KernelLoaderResult,
    entry: u64,
    rsdp: u64,
) -> Result<BootEntry> {
    let map = memory_map(mem);
    let mut start = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        rsdp_paddr: rsdp,
        memmap_entries: u32::try_from(map.len())
            .map_err(|_| VmmError::Boot("memmap too long".into()))?,
        ..Default::default()
    };
    let entries: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|&(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let mut params = BootParams::new(&start, GuestAddress(PVH_INFO_START));
    if let Some(initrd) = &cfg.initrd {
        let (addr, size) = load_initrd(mem, initrd, res.kernel_end, MMIO_START)?;
        start.nr_modules = 1;
        start.modlist_paddr = PVH_MODLIST_START;
        params = BootParams::new(&start, GuestAddress(PVH_INFO_START));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr: addr,
                size,
                cmdline_paddr: 0,
                reserved: 0,
            }],
            GuestAddress(PVH_MODLIST_START),
        );
    }
    params.set_sections(&entries, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|e| VmmError::Boot(format!("write PVH start info: {e}")))?;
    Ok(BootEntry::Pvh {
        entry,
        start_info: PVH_INFO_START,
    })
}

fn configure_linux(
    mem: &GuestMemoryMmap,
    cfg: &BootConfig,
    res: &KernelLoaderResult,
    entry: u64,
    rsdp: u64,
) -> Result<BootEntry> {
    let mut params = boot_params::default();
    if let Some(hdr) = res.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = u32::try_from(cfg.cmdline.len() + 1).unwrap_or(u32::MAX);
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    params.acpi_rsdp_addr = rsdp;
    if let Some(initrd) = &cfg.initrd {
        let max = match params.hdr.initrd_addr_max {
            0 => 0x37ff_ffff,
            m => u64::from(m),
        };
        let (addr, size) = load_initrd(mem, initrd, res.kernel_end, max + 1)?;
        params.hdr.ramdisk_image =
            u32::try_from(addr).map_err(|_| VmmError::Boot("initrd above 4 GiB".into()))?;
        params.hdr.ramdisk_size =
            u32::try_from(size).map_err(|_| VmmError::Boot("initrd too large".into()))?;
    }
    let map = memory_map(mem);
    if map.len() > params.e820_table.len() {
        return Err(VmmError::Boot("e820 table too long".into()));
    }
    for (slot, &(addr, size, type_)) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = boot_e820_entry {
            addr,
            size,
            r#type: type_,
        };
    }
    params.e820_entries = map.len() as u8; // bounded by the check above (128 entries)
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| VmmError::Boot(format!("write zero page: {e}")))?;
    write_identity_page_tables(mem)?;
    Ok(BootEntry::Linux64 {
        entry,
        zero_page: ZERO_PAGE_START,
    })
}

/// Identity-maps the first 1 GiB with 2 MiB pages for the 64-bit Linux entry.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let pml4 = PML4_START;
    let pdpt = PML4_START + 0x1000;
    let pd = PML4_START + 0x2000;
    let w = |addr: u64, v: u64| {
        mem.write_obj(v, GuestAddress(addr))
            .map_err(|e| VmmError::Boot(format!("page tables: {e}")))
    };
    w(pml4, pdpt | 0x03)?;
    w(pdpt, pd | 0x03)?;
    for i in 0..512u64 {
        w(pd + i * 8, (i << 21) | 0x83)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_memory, ram_ranges};

    #[test]
    fn memory_map_reserves_low_hole_and_ecam() {
        let mem = create_memory(&ram_ranges(64 << 20).unwrap()).unwrap();
        let map = memory_map(&mem);
        assert_eq!(map[0], (0, LOWMEM_END, E820_RAM));
        assert!(map.contains(&(HIMEM_START, (64 << 20) - HIMEM_START, E820_RAM)));
        assert!(map.contains(&(PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED)));
    }

    #[test]
    fn garbage_kernel_is_a_clear_error() {
        let mem = create_memory(&ram_ranges(16 << 20).unwrap()).unwrap();
        let dir = std::env::temp_dir().join(format!("vmm-boot-test-{}", std::process::id()));
        std::fs::write(&dir, vec![0x55u8; 8192]).unwrap();
        let cfg = BootConfig {
            kernel: dir.clone(),
            initrd: None,
            cmdline: String::new(),
        };
        let err = load(&mem, &cfg, 1).unwrap_err();
        std::fs::remove_file(&dir).unwrap();
        assert!(err.to_string().contains("neither ELF nor bzImage"), "{err}");
        let cfg = BootConfig {
            kernel: "/nonexistent/kernel".into(),
            initrd: None,
            cmdline: String::new(),
        };
        assert!(load(&mem, &cfg, 1)
            .unwrap_err()
            .to_string()
            .contains("open"));
    }
}
