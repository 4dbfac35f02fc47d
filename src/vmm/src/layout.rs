//! The guest physical address map. One place owns every fixed address so devices never overlap.
//!
//! ```text
//! 0x0000_0500  boot GDT          0x0000_6000  PVH start info / 0x7000 zero page
//! 0x0000_9000  boot page tables  0x0002_0000  command line
//! 0x0010_0000  kernel (1 MiB)    .. low RAM up to MMIO_START
//! 0xC000_0000  PCI BARs (32-bit MMIO window)
//! 0xE000_0000  PCI ECAM (bus 0 only)
//! 0xFEC0_0000  IOAPIC            0xFEE0_0000  LAPIC
//! 0x1_0000_0000 RAM above 4 GiB (when memory > MMIO_START)
//! ```

/// Boot GDT written for the initial vCPU state.
pub const BOOT_GDT_START: u64 = 0x500;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map entries (after the start info).
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// PVH module list (initrd).
pub const PVH_MODLIST_START: u64 = 0x6800;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Identity page tables for 64-bit Linux boot: PML4, PDPT, PD.
pub const PML4_START: u64 = 0x9000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Maximum command line length, including the NUL.
pub const CMDLINE_MAX_BYTES: usize = 4096;
/// Start of the area above the real-mode hole.
pub const HIMEM_START: u64 = 0x10_0000;
/// End of conventional low memory (EBDA and ROM area above are reserved).
pub const LOWMEM_END: u64 = 0x9_fc00;
/// Start of the 32-bit MMIO hole; RAM beyond this moves above 4 GiB.
pub const MMIO_START: u64 = 0xC000_0000;
/// Size of the PCI BAR window.
pub const PCI_MMIO_SIZE: u64 = 0x2000_0000;
/// PCI ECAM base (bus 0, 1 MiB).
pub const PCI_ECAM_START: u64 = 0xE000_0000;
/// PCI ECAM size for bus 0.
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// IOAPIC MMIO (handled by the in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xFEC0_0000;
/// LAPIC MMIO (handled by the in-kernel irqchip).
pub const LAPIC_START: u64 = 0xFEE0_0000;
/// Where RAM continues above the hole.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// KVM's TSS (three pages) just below the BIOS area, needed on Intel.
pub const KVM_TSS_ADDRESS: usize = 0xFFFB_D000;
/// KVM's identity map page for real mode on Intel.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xFFFB_C000;

/// Legacy I/O ports.
pub mod ports {
    /// Boot progress byte (POST code port).
    pub const DEBUG_PROGRESS: u16 = 0x80;
    /// Debug console bytes (QEMU `debugcon` compatible).
    pub const DEBUG_CHAR: u16 = 0xe9;
    /// Exit code (QEMU `isa-debug-exit` compatible address).
    pub const DEBUG_EXIT: u16 = 0x501;
    /// COM1.
    pub const SERIAL_COM1: u16 = 0x3f8;
    /// i8042 controller (data 0x60, command 0x64).
    pub const I8042_DATA: u16 = 0x60;
    /// PCI configuration address.
    pub const PCI_CONFIG_ADDRESS: u16 = 0xcf8;
}

/// First GSI used for MSI routes (0..23 are the IOAPIC pins).
pub const MSI_GSI_BASE: u32 = 24;
/// Upper bound on GSIs we hand out.
pub const MAX_GSI: u32 = 1023;
/// Serial console interrupt line.
pub const SERIAL_IRQ: u32 = 4;
