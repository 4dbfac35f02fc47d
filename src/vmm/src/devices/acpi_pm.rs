//! ACPI fixed-hardware power management: the PM1a event block (status + enable) and the PM1a
//! control block, described by the FADT (see [`crate::acpi`]). The host presses the power
//! button ([`AcpiPm::press_power_button`]): PWRBTN_STS latches and, while the guest has
//! PWRBTN_EN set, the SCI (ISA IRQ 9, level, active high) is asserted on the in-kernel irqchip.
//! The guest clears the status (write 1 to clear), and writing SLP_TYP=S5 with SLP_EN to PM1a_CNT
//! powers the VM off ([`ExitReason::Shutdown`]). A GPE0 block carries one more event: bit 1,
//! "PCI devices changed" (a disk was hot-attached; the guest rescans the bus), on the same SCI.
//!
//! Never blocks a vCPU beyond one short lock; a guest writing nonsense (unknown sleep types,
//! odd access sizes) changes nothing but these registers.

use super::{ExitLatch, ExitReason};
use crate::bus::BusDevice;
use kvm_ioctls::VmFd;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// I/O port of the PM1a event block (4 bytes: PM1_STS, PM1_EN). QEMU's PIIX4 uses the same.
pub const PM1A_EVT_PORT: u16 = 0x600;
/// Length of the PM1a event block.
pub const PM1_EVT_LEN: u8 = 4;
/// I/O port of the PM1a control block (2 bytes: PM1_CNT).
pub const PM1A_CNT_PORT: u16 = 0x604;
/// Length of the PM1a control block.
pub const PM1_CNT_LEN: u8 = 2;
/// I/O port of the GPE0 block (4 bytes: GPE0_STS, GPE0_EN).
pub const GPE0_PORT: u16 = 0x620;
/// Length of the GPE0 block.
pub const GPE0_LEN: u8 = 4;
/// GPE0 bit: PCI devices were added (QEMU uses the same bit for PCI hotplug).
pub const GPE_PCI_HOTPLUG: u16 = 1 << 1;
/// The SCI: ISA IRQ / GSI 9 (an override in the MADT makes it level, active high).
pub const SCI_IRQ: u16 = 9;
/// SLP_TYP value the DSDT's `\_S5` package names for soft-off.
pub const S5_SLP_TYP: u8 = 5;

/// PM1_STS / PM1_EN: power button.
pub const PWRBTN: u16 = 1 << 8;
/// PM1_CNT: SCI_EN (ACPI mode; always on, there is no SMI_CMD to switch it).
pub const SCI_EN: u16 = 1;
/// PM1_CNT: SLP_EN (write-only, starts the sleep transition).
pub const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;
/// Status bits we implement (everything else reads 0 and ignores writes).
const STS_MASK: u16 = PWRBTN;
const EN_MASK: u16 = PWRBTN;
/// PM1_CNT bits kept across writes: SLP_TYP (SLP_EN is write-only, SCI_EN is fixed).
const CNT_KEEP: u16 = 7 << SLP_TYP_SHIFT;

#[derive(Default)]
struct Regs {
    sts: u16,
    en: u16,
    cnt: u16,
    gpe_sts: u16,
    gpe_en: u16,
    sci_level: bool,
}

/// Bytes in the register file the bus entries map into: PM1 STS/EN/CNT, GPE0 STS/EN.
const REG_BYTES: usize = 10;

/// Raises and lowers the SCI line (the KVM VM in production, a recorder in unit tests).
pub trait SciLine: Send + Sync {
    /// Drives the line to `level`.
    fn set(&self, level: bool);
}

impl SciLine for VmFd {
    fn set(&self, level: bool) {
        // A failed KVM_IRQ_LINE loses an interrupt, never the VM; the guest can still poll.
        let _ = self.set_irq_line(u32::from(SCI_IRQ), level);
    }
}

/// The PM1a register blocks of one VM.
pub struct AcpiPm {
    regs: Mutex<Regs>,
    line: Arc<dyn SciLine>,
    exit: Arc<ExitLatch>,
    presses: AtomicU64,
}

impl AcpiPm {
    /// PM registers that signal on `line` and report power-off to `exit`.
    pub fn new(line: Arc<dyn SciLine>, exit: Arc<ExitLatch>) -> Self {
        Self {
            regs: Mutex::new(Regs::default()),
            line,
            exit,
            presses: AtomicU64::new(0),
        }
    }

    /// Presses the power button: latches PWRBTN_STS and raises the SCI if the guest enabled it.
    pub fn press_power_button(&self) {
        self.presses.fetch_add(1, Ordering::Relaxed);
        let mut r = self.regs.lock();
        r.sts |= PWRBTN;
        self.update_sci(&mut r);
    }

    /// Raises GPE0 bit 1 (PCI devices changed) and the SCI if the guest enabled it.
    pub fn signal_pci_change(&self) {
        let mut r = self.regs.lock();
        r.gpe_sts |= GPE_PCI_HOTPLUG;
        self.update_sci(&mut r);
    }

    /// How many times the power button was pressed.
    pub fn presses(&self) -> u64 {
        self.presses.load(Ordering::Relaxed)
    }

    fn update_sci(&self, r: &mut Regs) {
        let level = r.sts & r.en != 0 || r.gpe_sts & r.gpe_en != 0;
        if level != r.sci_level {
            r.sci_level = level;
            self.line.set(level);
        }
    }

    /// The register bytes as the guest sees them (little endian).
    fn bytes(r: &Regs) -> [u8; REG_BYTES] {
        let mut b = [0u8; REG_BYTES];
        b[0..2].copy_from_slice(&r.sts.to_le_bytes());
        b[2..4].copy_from_slice(&r.en.to_le_bytes());
        b[4..6].copy_from_slice(&(r.cnt | SCI_EN).to_le_bytes());
        b[6..8].copy_from_slice(&r.gpe_sts.to_le_bytes());
        b[8..10].copy_from_slice(&r.gpe_en.to_le_bytes());
        b
    }
}

/// One bus entry per block; `base_offset` places the block in the register file.
pub struct AcpiPmPort {
    /// Shared registers.
    pub pm: Arc<AcpiPm>,
    /// 0 for the PM1 event block, 4 for the PM1 control block, 6 for the GPE0 block.
    pub base_offset: usize,
}

impl BusDevice for AcpiPmPort {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        let bytes = AcpiPm::bytes(&self.pm.regs.lock());
        for (i, d) in data.iter_mut().enumerate() {
            *d = usize::try_from(offset)
                .ok()
                .and_then(|o| bytes.get(self.base_offset + o + i))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        // Split the access into per-register (16-bit) values and masks.
        let mut vals = [0u16; REG_BYTES / 2];
        let mut masks = [0u16; REG_BYTES / 2];
        for (i, b) in data.iter().enumerate() {
            let Some(at) = usize::try_from(offset)
                .ok()
                .map(|o| self.base_offset + o + i)
                .filter(|&a| a < REG_BYTES)
            else {
                continue;
            };
            let shift = (at % 2) * 8;
            vals[at / 2] |= u16::from(*b) << shift;
            masks[at / 2] |= 0xff << shift;
        }
        let mut r = self.pm.regs.lock();
        // PM1_STS: write 1 to clear.
        r.sts &= !(vals[0] & masks[0] & STS_MASK);
        // PM1_EN: plain read/write.
        r.en = (r.en & !masks[1]) | (vals[1] & masks[1] & EN_MASK);
        // PM1_CNT: SLP_TYP kept, SLP_EN starts the transition.
        r.cnt = (r.cnt & !(masks[2] & CNT_KEEP)) | (vals[2] & masks[2] & CNT_KEEP);
        // GPE0_STS: write 1 to clear; GPE0_EN: read/write, only the bits we implement.
        r.gpe_sts &= !(vals[3] & masks[3]);
        r.gpe_en = (r.gpe_en & !masks[4]) | (vals[4] & masks[4] & GPE_PCI_HOTPLUG);
        let sleep = masks[2] & SLP_EN != 0 && vals[2] & SLP_EN != 0;
        let slp_typ = (r.cnt >> SLP_TYP_SHIFT) & 7;
        self.pm.update_sci(&mut r);
        drop(r);
        // Only S5 is declared in the DSDT; any other sleep type is not ours to enter.
        if sleep && slp_typ == u16::from(S5_SLP_TYP) {
            self.pm.exit.set(ExitReason::Shutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[derive(Default)]
    struct Recorder(AtomicBool, AtomicU64);
    impl SciLine for Recorder {
        fn set(&self, level: bool) {
            self.0.store(level, Ordering::SeqCst);
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn setup() -> (Arc<Recorder>, Arc<ExitLatch>, AcpiPmPort, AcpiPmPort) {
        let rec = Arc::new(Recorder::default());
        let exit = Arc::new(ExitLatch::default());
        let pm = Arc::new(AcpiPm::new(rec.clone(), exit.clone()));
        let evt = AcpiPmPort {
            pm: pm.clone(),
            base_offset: 0,
        };
        let cnt = AcpiPmPort { pm, base_offset: 4 };
        (rec, exit, evt, cnt)
    }

    fn r16(p: &AcpiPmPort, off: u64) -> u16 {
        let mut b = [0u8; 2];
        p.read(0, off, &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn power_button_latches_raises_sci_and_clears() {
        let (rec, exit, evt, cnt) = setup();
        assert_eq!(r16(&cnt, 0) & SCI_EN, SCI_EN, "ACPI mode from the start");
        evt.pm.press_power_button();
        assert_eq!(r16(&evt, 0), PWRBTN, "status latches without enable");
        assert!(!rec.0.load(Ordering::SeqCst), "no SCI while disabled");
        evt.write(0, 2, &PWRBTN.to_le_bytes());
        assert!(rec.0.load(Ordering::SeqCst), "SCI once enabled");
        // Writing 0 to the status changes nothing; writing 1 clears and lowers the SCI.
        evt.write(0, 0, &[0, 0]);
        assert_eq!(r16(&evt, 0), PWRBTN);
        evt.write(0, 0, &PWRBTN.to_le_bytes());
        assert_eq!(r16(&evt, 0), 0);
        assert!(!rec.0.load(Ordering::SeqCst));
        assert_eq!(rec.1.load(Ordering::SeqCst), 2, "one raise, one lower");
        // A 32-bit write over the whole event block works the same.
        evt.pm.press_power_button();
        evt.write(
            0,
            0,
            &(u32::from(PWRBTN) | u32::from(PWRBTN) << 16).to_le_bytes(),
        );
        assert_eq!(r16(&evt, 0), 0);
        assert_eq!(r16(&evt, 2), PWRBTN);
        assert!(exit.get().is_none());
        assert_eq!(evt.pm.presses(), 2);
    }

    #[test]
    fn gpe_pci_change_shares_the_sci() {
        let (rec, _exit, evt, _cnt) = setup();
        let gpe = AcpiPmPort {
            pm: evt.pm.clone(),
            base_offset: 6,
        };
        evt.pm.signal_pci_change();
        assert_eq!(r16(&gpe, 0), GPE_PCI_HOTPLUG);
        assert!(!rec.0.load(Ordering::SeqCst));
        gpe.write(0, 2, &[0xff]);
        assert_eq!(
            r16(&gpe, 2),
            GPE_PCI_HOTPLUG,
            "only implemented enables stick"
        );
        assert!(rec.0.load(Ordering::SeqCst));
        gpe.write(0, 0, &[GPE_PCI_HOTPLUG as u8]);
        assert_eq!(r16(&gpe, 0), 0);
        assert!(!rec.0.load(Ordering::SeqCst));
        assert_eq!(r16(&evt, 0), 0, "PM1 untouched");
    }

    #[test]
    fn only_s5_powers_off() {
        let (_rec, exit, _evt, cnt) = setup();
        cnt.write(0, 0, &(3u16 << SLP_TYP_SHIFT | SLP_EN).to_le_bytes());
        assert!(exit.get().is_none(), "S3 is not offered");
        assert_eq!(r16(&cnt, 0) & SLP_EN, 0, "SLP_EN reads 0");
        cnt.write(
            0,
            0,
            &(u16::from(S5_SLP_TYP) << SLP_TYP_SHIFT).to_le_bytes(),
        );
        assert!(exit.get().is_none(), "SLP_TYP alone does nothing");
        // A byte write to the high byte carries SLP_TYP and SLP_EN together.
        cnt.write(
            0,
            1,
            &[((u16::from(S5_SLP_TYP) << SLP_TYP_SHIFT | SLP_EN) >> 8) as u8],
        );
        assert_eq!(exit.get(), Some(ExitReason::Shutdown));
        // Out-of-range offsets are ignored.
        cnt.write(0, 7, &[0xff; 4]);
        let mut b = [0u8; 4];
        cnt.read(0, 7, &mut b);
        assert_eq!(b, [0; 4]);
    }
}
