//! The DSDT: `\_S5` (soft-off), the PCI root `\_SB.PCI0` with its resources and one hot-plug
//! slot device per slot of bus 0 (`_ADR`, `_SUN`, `_STA`, `_EJ0`), the motherboard resources
//! (ECAM and the hot-plug registers) and the GPE handler `\_GPE._E01` that turns the hot-plug
//! registers ([`crate::pci::hotplug`]) into Notify (device check / eject request) on each slot
//! that changed. With this an ACPI guest (Linux acpiphp) attaches and detaches disks on its
//! own; the ring-3 test guest follows the same registers by hand.

use super::aml::*;
use crate::devices::acpi_pm::S5_SLP_TYP;
use crate::layout::{MMIO_START, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO_SIZE};
use crate::pci::hotplug::{FIRST_SLOT, PCIHP_LEN, PCIHP_PORT, SLOTS};

/// Name of slot `slot`'s device under `PCI0` ("S01_".."S1F_").
pub fn slot_name(slot: usize) -> String {
    format!("S{slot:02X}")
}

fn word_addr(kind: u8, type_flags: u8, min: u16, max: u16) -> Vec<u8> {
    // Word address space descriptor: producer, fixed min and max, positive decode.
    let mut d = vec![0x88, 0x0d, 0x00, kind, 0x0c, type_flags];
    for v in [0, min, max, 0, max.wrapping_sub(min).wrapping_add(1)] {
        d.extend_from_slice(&v.to_le_bytes());
    }
    d
}

/// `_CRS` of the root bridge: bus 0, the 0xCF8 config ports, the rest of I/O space and the
/// 32-bit BAR window.
fn root_resources() -> Vec<u8> {
    let mut r = word_addr(2, 0, 0, 0);
    r.extend_from_slice(&[0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]);
    r.extend(word_addr(1, 3, 0x0000, 0x0cf7));
    r.extend(word_addr(1, 3, 0x0d00, 0xffff));
    // DWord memory: producer, fixed, read-write, non-cacheable.
    r.extend_from_slice(&[0x87, 0x17, 0x00, 0x00, 0x0c, 0x01]);
    let (lo, len) = (MMIO_START as u32, PCI_MMIO_SIZE as u32);
    for v in [0, lo, lo + (len - 1), 0, len] {
        r.extend_from_slice(&v.to_le_bytes());
    }
    r.extend_from_slice(&[0x79, 0x00]);
    r
}

/// `_CRS` of the motherboard device: ECAM (so guests trust MCFG) and the hot-plug block.
fn motherboard_resources() -> Vec<u8> {
    let mut r = vec![0x86, 0x09, 0x00, 0x01];
    r.extend_from_slice(&(PCI_ECAM_START as u32).to_le_bytes());
    r.extend_from_slice(&(PCI_ECAM_SIZE as u32).to_le_bytes());
    let [plo, phi] = PCIHP_PORT.to_le_bytes();
    r.extend_from_slice(&[0x47, 0x01, plo, phi, plo, phi, 0x01, PCIHP_LEN as u8]);
    r.extend_from_slice(&[0x79, 0x00]);
    r
}

fn pci0() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(name_decl("_HID", &eisa_id("PNP0A03")));
    b.extend(name_decl("_ADR", &int(0)));
    b.extend(name_decl("_UID", &int(0)));
    b.extend(name_decl("_BBN", &int(0)));
    b.extend(name_decl("_CRS", &buffer(&root_resources())));
    b.extend(op_region_io("PCST", PCIHP_PORT, PCIHP_LEN));
    b.extend(field_dwords("PCST", &["PCIU", "PCID", "B0EJ", "PRES"]));
    // PCEJ (slot): the guest released the slot.
    b.extend(method(
        "PCEJ",
        1,
        &store(&shift_left(&int(1), &arg(0)), &name("B0EJ")),
    ));
    // PSTA (slot): present and enabled, or absent.
    let mut psta = if_(
        &and(&name("PRES"), &shift_left(&int(1), &arg(0))),
        &ret(&int(0x0f)),
    );
    psta.extend(ret(&int(0)));
    b.extend(method("PSTA", 1, &psta));
    for slot in FIRST_SLOT..SLOTS {
        let s = slot as u64;
        let mut d = name_decl("_ADR", &int(s << 16));
        d.extend(name_decl("_SUN", &int(s)));
        d.extend(method("_EJ0", 1, &call("PCEJ", &[&int(s)])));
        d.extend(method("_STA", 0, &ret(&call("PSTA", &[&int(s)]))));
        b.extend(device(&slot_name(slot), &d));
    }
    // PCNT: device check on changed slots, eject request on the ones the host wants back.
    let mut pcnt = store(&name("PCIU"), &local(0));
    pcnt.extend(store(&name("PCID"), &local(1)));
    for slot in FIRST_SLOT..SLOTS {
        let bit = int(1 << slot);
        pcnt.extend(if_(&and(&local(0), &bit), &notify(&slot_name(slot), 1)));
        pcnt.extend(if_(&and(&local(1), &bit), &notify(&slot_name(slot), 3)));
    }
    b.extend(method("PCNT", 0, &pcnt));
    b
}

/// The DSDT's AML body (the definition blocks after the table header).
pub fn aml() -> Vec<u8> {
    // Name (\_S5, Package () { S5, S5, 0, 0 }): PackageOp, PkgLength, 4 elements.
    let mut aml = name_decl(
        "_S5",
        &[
            0x12, 0x08, 0x04, 0x0a, S5_SLP_TYP, 0x0a, S5_SLP_TYP, 0x00, 0x00,
        ],
    );
    let mut sb = device("PCI0", &pci0());
    let mut mres = name_decl("_HID", &eisa_id("PNP0C02"));
    mres.extend(name_decl("_UID", &int(1)));
    mres.extend(name_decl("_CRS", &buffer(&motherboard_resources())));
    sb.extend(device("MRES", &mres));
    aml.extend(scope("\\_SB", &sb));
    aml.extend(scope(
        "\\_GPE",
        &method("_E01", 0, &call("\\_SB.PCI0.PCNT", &[])),
    ));
    aml
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn dsdt_has_root_slots_region_and_gpe_handler() {
        let a = aml();
        assert_eq!(&a[1..5], b"_S5_");
        // The operation region the test guest looks up: SystemIO at the hot-plug port.
        let mut region = vec![0x5b, 0x80];
        region.extend_from_slice(b"PCST\x01\x0b");
        region.extend_from_slice(&PCIHP_PORT.to_le_bytes());
        assert!(find(&a, &region).is_some());
        for slot in FIRST_SLOT..SLOTS {
            let mut dev = slot_name(slot).into_bytes();
            dev.push(b'_');
            assert!(find(&a, &dev).is_some(), "slot {slot}");
        }
        assert!(find(&a, b"_EJ0").is_some() && find(&a, b"_E01").is_some());
        // The root's resources end with an end tag and cover the BAR window.
        let crs = root_resources();
        assert_eq!(crs[crs.len() - 2..], [0x79, 0x00]);
        assert_eq!(crs.len(), 16 + 8 + 16 + 16 + 26 + 2);
    }

    /// Where ACPICA's compiler is installed, the DSDT must disassemble cleanly and show the
    /// methods by name (a hand-written encoder's mistakes show up as parse errors there).
    #[test]
    fn dsdt_disassembles_with_iasl_when_available() {
        if std::process::Command::new("iasl")
            .arg("-v")
            .output()
            .is_err()
        {
            eprintln!("skipped: iasl (acpica-tools) not installed");
            return;
        }
        let dir = std::env::temp_dir().join(format!("cairn-dsdt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let table = super::super::sdt(b"DSDT", 2, &aml());
        std::fs::write(dir.join("dsdt.dat"), &table).unwrap();
        let out = std::process::Command::new("iasl")
            .current_dir(&dir)
            .args(["-d", "dsdt.dat"])
            .output()
            .unwrap();
        let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{log}");
        for want in [
            "Device (PCI0)",
            "Device (S1F)",
            "Method (_EJ0, 1",
            "Method (_E01, 0",
            "Method (PCNT, 0",
            "Notify (S05, 0x03)",
            "OperationRegion (PCST, SystemIO, 0xAE00, 0x10)",
            "EisaId (\"PNP0A03\")",
            "WordBusNumber",
            "DWordMemory",
        ] {
            assert!(dsl.contains(want), "{want} missing:\n{dsl}\n{log}");
        }
    }
}
