//! ACPI tables so guests find their CPUs, interrupt controllers, PCI and the power button: RSDP,
//! XSDT, FADT (fixed hardware: PM1a event/control blocks, SCI on IRQ 9, fixed power button),
//! FACS, a DSDT (`\_S5`, the PCI root with hot-plug slots, the GPE handler: see [`dsdt`]), MADT (one LAPIC per vCPU, the
//! IOAPIC, IRQ0->GSI2, IRQ9 level/active high) and MCFG (ECAM for bus 0). Written once at boot
//! into the reserved area below 1 MiB; never read back from the guest.

pub mod aml;
pub mod dsdt;

use crate::devices::acpi_pm::{
    GPE0_LEN, GPE0_PORT, PM1A_CNT_PORT, PM1A_EVT_PORT, PM1_CNT_LEN, PM1_EVT_LEN, SCI_IRQ,
};
use crate::error::{Result, VmmError};
use crate::layout::{IOAPIC_START, LAPIC_START, PCI_ECAM_START};
use crate::memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

/// Where the RSDP goes (inside the BIOS scan area 0xE0000-0xFFFFF).
pub const RSDP_START: u64 = 0xE_0000;
const OEM_ID: &[u8; 6] = b"CAIRN ";
const OEM_TABLE: &[u8; 8] = b"CAIRNVMM";

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// A table: 36-byte SDT header followed by `body`, with length and checksum filled in.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend_from_slice(signature);
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0);
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE);
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(b"CRN ");
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: dual 8259s present
    for id in 0..vcpus {
        b.extend_from_slice(&[0, 8, id, id]);
        b.extend_from_slice(&1u32.to_le_bytes()); // enabled
    }
    b.extend_from_slice(&[1, 12, 0, 0]);
    b.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&[2, 10, 0, 0]); // ISA IRQ0 -> GSI 2
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    // ISA IRQ9 (the SCI) -> GSI 9, level triggered, active high (how the PM device drives it).
    b.extend_from_slice(&[2, 10, 0, SCI_IRQ as u8]);
    b.extend_from_slice(&u32::from(SCI_IRQ).to_le_bytes());
    b.extend_from_slice(&0x000du16.to_le_bytes());
    sdt(b"APIC", 4, &b)
}

fn mcfg() -> Vec<u8> {
    let mut b = vec![0u8; 8];
    b.extend_from_slice(&PCI_ECAM_START.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes()); // segment
    b.extend_from_slice(&[0, 0]); // buses 0..=0
    b.extend_from_slice(&0u32.to_le_bytes());
    sdt(b"MCFG", 1, &b)
}

/// A Generic Address Structure for a system-I/O register of `bits` bits at `port`.
fn gas_io(port: u16, bits: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O space
    g[1] = bits;
    g[3] = 2; // word access
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

fn fadt(dsdt: u64, facs: u64) -> Vec<u8> {
    // FADT 6.x body is 276 - 36 bytes; offsets below are from the table start.
    let mut t = vec![0u8; 276 - 36];
    let mut put =
        |off: usize, bytes: &[u8]| t[off - 36..off - 36 + bytes.len()].copy_from_slice(bytes);
    put(36, &(facs as u32).to_le_bytes()); // FIRMWARE_CTRL (below 4 GiB, so no X_ form)
    put(40, &(dsdt as u32).to_le_bytes());
    put(46, &SCI_IRQ.to_le_bytes()); // SCI_INT; SMI_CMD stays 0: always in ACPI mode
    put(56, &u32::from(PM1A_EVT_PORT).to_le_bytes()); // PM1a_EVT_BLK
    put(64, &u32::from(PM1A_CNT_PORT).to_le_bytes()); // PM1a_CNT_BLK
    put(80, &u32::from(GPE0_PORT).to_le_bytes()); // GPE0_BLK
    put(88, &[PM1_EVT_LEN, PM1_CNT_LEN]);
    put(92, &[GPE0_LEN]);
    put(109, &(1u16 << 1 | 1 << 2).to_le_bytes()); // IAPC_BOOT_ARCH: 8042 present, no VGA
                                                   // Flags: WBINVD; PWR_BUTTON clear = fixed-feature power button present; SLP_BUTTON set = no
                                                   // sleep button. Not hardware-reduced: the PM1 blocks above are the fixed hardware.
    put(112, &(1u32 | 1 << 5).to_le_bytes());
    put(131, &[1]); // minor version 6.1
    put(140, &dsdt.to_le_bytes()); // X_DSDT
    put(148, &gas_io(PM1A_EVT_PORT, PM1_EVT_LEN * 8)); // X_PM1a_EVT_BLK
    put(172, &gas_io(PM1A_CNT_PORT, PM1_CNT_LEN * 8)); // X_PM1a_CNT_BLK
    let mut gpe = gas_io(GPE0_PORT, GPE0_LEN * 8);
    gpe[3] = 1; // GPE registers are byte-accessed
    put(220, &gpe); // X_GPE0_BLK
    put(268, b"CAIRNVMM"); // hypervisor vendor identity
    sdt(b"FACP", 6, &t)
}

/// The 64-byte FACS (no checksum; firmware waking vector and global lock unused).
fn facs() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&64u32.to_le_bytes());
    f[32] = 2; // version
    f
}

/// The DSDT (see [`dsdt`]).
fn dsdt() -> Vec<u8> {
    sdt(b"DSDT", 2, &dsdt::aml())
}

/// Writes all tables at [`RSDP_START`]; returns the RSDP address.
pub fn write_tables(mem: &GuestMemoryMmap, vcpus: u8) -> Result<u64> {
    let mut addr = RSDP_START + 64;
    let mut place = |bytes: &[u8]| -> Result<u64> {
        let at = addr;
        mem.write_slice(bytes, GuestAddress(at))
            .map_err(|e| VmmError::Boot(format!("ACPI tables: {e}")))?;
        addr = (at + bytes.len() as u64).next_multiple_of(16);
        Ok(at)
    };
    // First, so it gets the 64-byte alignment the FACS needs (RSDP_START + 64).
    let facs_at = place(&facs())?;
    let dsdt_at = place(&dsdt())?;
    let fadt_at = place(&fadt(dsdt_at, facs_at))?;
    let madt_at = place(&madt(vcpus))?;
    let mcfg_at = place(&mcfg())?;
    let mut entries = Vec::new();
    for a in [fadt_at, madt_at, mcfg_at] {
        entries.extend_from_slice(&a.to_le_bytes());
    }
    let xsdt_at = place(&sdt(b"XSDT", 1, &entries))?;
    let mut rsdp = Vec::with_capacity(36);
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0);
    rsdp.extend_from_slice(OEM_ID);
    rsdp.push(2);
    rsdp.extend_from_slice(&0u32.to_le_bytes());
    rsdp.extend_from_slice(&36u32.to_le_bytes());
    rsdp.extend_from_slice(&xsdt_at.to_le_bytes());
    rsdp.extend_from_slice(&[0, 0, 0, 0]);
    rsdp[8] = checksum(&rsdp[..20]);
    rsdp[32] = checksum(&rsdp);
    mem.write_slice(&rsdp, GuestAddress(RSDP_START))
        .map_err(|e| VmmError::Boot(format!("RSDP: {e}")))?;
    Ok(RSDP_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::acpi_pm::S5_SLP_TYP;
    use crate::memory::{create_memory, ram_ranges};

    fn sum(mem: &GuestMemoryMmap, at: u64, len: usize) -> u8 {
        let mut b = vec![0u8; len];
        mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn tables_checksum_and_link() {
        let mem = create_memory(&ram_ranges(16 << 20).unwrap()).unwrap();
        let rsdp = write_tables(&mem, 3).unwrap();
        assert_eq!(sum(&mem, rsdp, 20), 0);
        assert_eq!(sum(&mem, rsdp, 36), 0);
        let xsdt: u64 = mem.read_obj(GuestAddress(rsdp + 24)).unwrap();
        let xlen: u32 = mem.read_obj(GuestAddress(xsdt + 4)).unwrap();
        assert_eq!(sum(&mem, xsdt, xlen as usize), 0);
        let mut sigs = Vec::new();
        for i in 0..(xlen as u64 - 36) / 8 {
            let t: u64 = mem.read_obj(GuestAddress(xsdt + 36 + 8 * i)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(t + 4)).unwrap();
            assert_eq!(sum(&mem, t, len as usize), 0, "table {i} checksum");
            let mut sig = [0u8; 4];
            mem.read_slice(&mut sig, GuestAddress(t)).unwrap();
            sigs.push(sig);
            if &sig == b"APIC" {
                assert_eq!(
                    len,
                    36 + 8 + 3 * 8 + 12 + 10 + 10,
                    "three LAPICs, an IOAPIC, two overrides"
                );
            }
            if &sig == b"FACP" {
                let flags: u32 = mem.read_obj(GuestAddress(t + 112)).unwrap();
                assert_eq!(flags & (1 << 20), 0, "not hardware-reduced");
                assert_eq!(flags & (1 << 4), 0, "fixed power button");
                let evt: u32 = mem.read_obj(GuestAddress(t + 56)).unwrap();
                assert_eq!(evt, u32::from(PM1A_EVT_PORT));
                let facs: u32 = mem.read_obj(GuestAddress(t + 36)).unwrap();
                assert_eq!(facs % 64, 0, "FACS 64-byte aligned");
                let mut fsig = [0u8; 4];
                mem.read_slice(&mut fsig, GuestAddress(u64::from(facs)))
                    .unwrap();
                assert_eq!(&fsig, b"FACS");
                let dsdt: u64 = mem.read_obj(GuestAddress(t + 140)).unwrap();
                let dlen: u32 = mem.read_obj(GuestAddress(dsdt + 4)).unwrap();
                assert_eq!(sum(&mem, dsdt, dlen as usize), 0);
                let mut aml = vec![0u8; dlen as usize - 36];
                mem.read_slice(&mut aml, GuestAddress(dsdt + 36)).unwrap();
                assert_eq!(&aml[1..5], b"_S5_");
                assert_eq!(aml[9], S5_SLP_TYP);
            }
        }
        assert_eq!(sigs, [*b"FACP", *b"APIC", *b"MCFG"]);
    }
}
