//! One PCI function's 256-byte configuration space: the type-0 header, the capability list and
//! the BAR registers, with per-bit write masks. It owns the BAR state machine a guest drives
//! (size probe with all-ones, address writes, the upper half of 64-bit BARs, the command
//! register's I/O and memory decode bits) and answers one question: where, if anywhere, does
//! each BAR decode right now ([`ConfigSpace::bar_decode`]). It never touches a bus; the device
//! that owns it moves its ranges (see [`super::bar`]).

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory BAR.
    Mem32,
    /// 64-bit memory BAR; occupies this register and the next (the upper half).
    Mem64,
    /// I/O port BAR (16-bit port space).
    Io,
}

#[derive(Debug, Clone, Copy)]
enum BarSlot {
    Unused,
    Bar {
        kind: BarKind,
        size: u64,
    },
    /// The upper half of the 64-bit BAR in the register below.
    Upper,
}

/// Command register bits.
pub const CMD_IO: u16 = 1 << 0;
/// Memory space decode.
pub const CMD_MEM: u16 = 1 << 1;
/// Bus master (DMA).
pub const CMD_BUS_MASTER: u16 = 1 << 2;

const BAR_REG: usize = 4;

/// 256 bytes of config space with per-bit write masks.
pub struct ConfigSpace {
    regs: [u32; 64],
    wmask: [u32; 64],
    bars: [BarSlot; 6],
    next_cap: usize,
    last_cap: usize,
}

impl ConfigSpace {
    /// A type-0 header with decoding off (the reset state: the guest or firmware turns on
    /// memory/I/O decode in the command register).
    pub fn new(vendor: u16, device: u16, class: u32, subsys_vendor: u16, subsys: u16) -> Self {
        let mut c = ConfigSpace {
            regs: [0; 64],
            wmask: [0; 64],
            bars: [BarSlot::Unused; 6],
            next_cap: 0x40,
            last_cap: 0,
        };
        c.regs[0] = u32::from(vendor) | (u32::from(device) << 16);
        c.regs[1] = 1 << 20; // status: capabilities list
        c.wmask[1] = 0x0000_0547; // command: io, mem, bus master, parity, serr, intx disable
        c.regs[2] = (class << 8) | 1; // revision 1
        c.regs[11] = u32::from(subsys_vendor) | (u32::from(subsys) << 16);
        c.regs[15] = 0x0100; // interrupt pin A, line 0
        c.wmask[15] = 0xff;
        c
    }

    /// Declares BAR `idx` of `kind` and `size` (a power of two: at least 16 bytes for memory,
    /// 4 for I/O), initially at `addr` (rounded down to the size). A 64-bit BAR also takes
    /// register `idx + 1`. Invalid declarations (a VMM bug, not guest input) are ignored.
    pub fn add_bar(&mut self, idx: usize, kind: BarKind, addr: u64, size: u64) {
        let min = if kind == BarKind::Io { 4 } else { 16 };
        let limit = match kind {
            BarKind::Mem32 => 1 << 31,
            BarKind::Mem64 => 1 << 62,
            BarKind::Io => 1 << 15,
        };
        let upper_fits = kind != BarKind::Mem64 || idx + 1 < 6;
        if idx >= 6 || !size.is_power_of_two() || size < min || size > limit || !upper_fits {
            return;
        }
        self.bars[idx] = BarSlot::Bar { kind, size };
        let addr = addr & !(size - 1);
        let r = BAR_REG + idx;
        match kind {
            BarKind::Mem32 => {
                self.regs[r] = addr as u32 & !0xf;
                self.wmask[r] = !(size as u32 - 1) & !0xf;
            }
            BarKind::Mem64 => {
                // Type 10b (64-bit) in bits 2:1; the upper half is all address bits that the
                // size leaves writable.
                self.regs[r] = (addr as u32 & !0xf) | 0x4;
                self.wmask[r] = !((size - 1) as u32) & !0xf;
                self.bars[idx + 1] = BarSlot::Upper;
                self.regs[r + 1] = (addr >> 32) as u32;
                self.wmask[r + 1] = !((size - 1) >> 32) as u32;
            }
            BarKind::Io => {
                self.regs[r] = (addr as u32 & 0xfffc) | 0x1;
                self.wmask[r] = !(size as u32 - 1) & 0xfffc;
            }
        }
    }

    /// The address programmed in BAR `idx` (whether or not it decodes), with its kind and size.
    pub fn bar(&self, idx: usize) -> Option<(BarKind, u64, u64)> {
        let BarSlot::Bar { kind, size } = *self.bars.get(idx)? else {
            return None;
        };
        let lo = self.regs[BAR_REG + idx];
        let addr = match kind {
            BarKind::Mem32 => u64::from(lo & !0xf),
            BarKind::Mem64 => {
                u64::from(lo & !0xf) | (u64::from(self.regs[BAR_REG + idx + 1]) << 32)
            }
            BarKind::Io => u64::from(lo & !0x3),
        };
        Some((kind, addr, size))
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.regs[1] as u16
    }

    /// Where BAR `idx` decodes now: its address when the command register enables its kind
    /// of decoding, None otherwise (or when there is no such BAR). Whether that address is
    /// usable (inside the host bridge's window, free) is for the bus to decide.
    pub fn bar_decode(&self, idx: usize) -> Option<(u64, u64)> {
        let (kind, addr, size) = self.bar(idx)?;
        let bit = if kind == BarKind::Io { CMD_IO } else { CMD_MEM };
        (self.command() & bit != 0).then_some((addr, size))
    }

    /// Appends a capability with body `body` (after the id/next bytes); returns its offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> usize {
        let off = self.next_cap;
        let len = (2 + body.len()).div_ceil(4) * 4;
        let mut bytes = vec![id, 0];
        bytes.extend_from_slice(body);
        bytes.resize(len, 0);
        for (i, b) in bytes.iter().enumerate() {
            self.set_byte(off + i, *b);
        }
        if off == 0x40 {
            self.set_byte(0x34, 0x40);
        } else {
            let prev = self.last_cap;
            self.set_byte(prev + 1, off as u8);
        }
        self.last_cap = off;
        self.next_cap = off + len;
        off
    }

    fn set_byte(&mut self, off: usize, v: u8) {
        let shift = (off % 4) * 8;
        self.regs[off / 4] = (self.regs[off / 4] & !(0xff << shift)) | (u32::from(v) << shift);
    }

    /// Marks bytes `off..off+len` guest-writable.
    pub fn set_writable(&mut self, off: usize, len: usize) {
        for o in off..off + len {
            self.wmask[o / 4] |= 0xff << ((o % 4) * 8);
        }
    }

    /// Register read.
    pub fn read(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0)
    }

    /// Byte-granular write through the write mask. A BAR keeps only the address bits its size
    /// allows and its read-only type bits, so writing all-ones reads back the size mask (the
    /// probe) and any other value is a move; nothing is refused, out-of-range registers and
    /// accesses crossing a register are ignored.
    pub fn write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        if reg >= 64 || offset + data.len() > 4 {
            return;
        }
        let mut v = 0u32;
        let mut m = 0u32;
        for (i, b) in data.iter().enumerate() {
            v |= u32::from(*b) << ((offset + i) * 8);
            m |= 0xff << ((offset + i) * 8);
        }
        let m = m & self.wmask[reg];
        self.regs[reg] = (self.regs[reg] & !m) | (v & m);
    }

    /// Byte at `off` (capability parsing in tests).
    pub fn byte(&self, off: usize) -> u8 {
        (self.read(off / 4) >> ((off % 4) * 8)) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w32(c: &mut ConfigSpace, reg: usize, v: u32) {
        c.write(reg, 0, &v.to_le_bytes());
    }

    #[test]
    fn header_and_capabilities() {
        let mut c = ConfigSpace::new(0x1af4, 0x1042, 0x01_0000, 0x1af4, 2);
        w32(&mut c, 0, 0xffff_ffff);
        assert_eq!(c.read(0), 0x1042_1af4, "ids are read-only");
        let off = c.add_capability(0x11, &[1, 2]);
        let off2 = c.add_capability(0x09, &[3]);
        assert_eq!(c.byte(0x34) as usize, off);
        assert_eq!(c.byte(off + 1) as usize, off2);
        c.write(70, 0, &[1]); // out of range: ignored, no panic
        assert_eq!(c.read(70), 0);
        c.write(1, 3, &[1, 2]); // crosses the register: ignored
        assert_eq!(c.command(), 0);
        // Status bits are not writable; only the command bits we model are.
        w32(&mut c, 1, 0xffff_ffff);
        assert_eq!(c.read(1), (1 << 20) | 0x547);
    }

    #[test]
    fn mem32_probe_move_and_decode_bit() {
        let mut c = ConfigSpace::new(0x1af4, 0x1042, 0x01_0000, 0x1af4, 2);
        c.add_bar(0, BarKind::Mem32, 0xc000_0000, 0x8000);
        assert_eq!(c.read(4), 0xc000_0000);
        assert_eq!(c.bar_decode(0), None, "decode is off after reset");
        w32(&mut c, 1, u32::from(CMD_MEM));
        assert_eq!(c.bar_decode(0), Some((0xc000_0000, 0x8000)));
        // Size probe: all-ones reads back the size mask; the BAR then decodes at that
        // (useless) address until restored, which is for the bus to refuse.
        w32(&mut c, 4, 0xffff_ffff);
        assert_eq!(c.read(4), 0xffff_8000);
        assert_eq!(!(c.read(4) & !0xf) + 1, 0x8000);
        w32(&mut c, 4, 0xc000_0000);
        // A move keeps only the size-aligned address bits.
        w32(&mut c, 4, 0xd000_7ff3);
        assert_eq!(c.read(4), 0xd000_0000);
        assert_eq!(c.bar_decode(0), Some((0xd000_0000, 0x8000)));
        // A byte write changes only that byte of the address.
        c.write(4, 3, &[0xc8]);
        assert_eq!(c.bar(0), Some((BarKind::Mem32, 0xc800_0000, 0x8000)));
        // Memory decode off: the BAR keeps its address but does not decode.
        c.write(1, 0, &[u8::try_from(CMD_IO | CMD_BUS_MASTER).unwrap()]);
        assert_eq!(c.bar_decode(0), None);
        assert_eq!(c.bar(0).unwrap().1, 0xc800_0000);
        // Unused BARs read zero and ignore writes (a driver sizes them as absent).
        w32(&mut c, 5, 0xffff_ffff);
        assert_eq!(c.read(5), 0);
        assert_eq!(c.bar(1), None);
    }

    #[test]
    fn mem64_halves() {
        let mut c = ConfigSpace::new(0x1af4, 0x1042, 0x01_0000, 0x1af4, 2);
        c.add_bar(0, BarKind::Mem64, 0xc000_8000, 0x8000);
        assert_eq!(c.read(4), 0xc000_8004, "type bits say 64-bit");
        assert_eq!(c.read(5), 0);
        // Linux's probe: all-ones to both halves.
        w32(&mut c, 4, 0xffff_ffff);
        w32(&mut c, 5, 0xffff_ffff);
        assert_eq!(c.read(4), 0xffff_8004);
        assert_eq!(c.read(5), 0xffff_ffff);
        let mask = (u64::from(c.read(5)) << 32) | u64::from(c.read(4) & !0xf);
        assert_eq!(!mask + 1, 0x8000);
        // Program an address above 4 GiB, then back below.
        w32(&mut c, 4, 0xe000_0000);
        w32(&mut c, 5, 0x1);
        w32(&mut c, 1, u32::from(CMD_MEM));
        assert_eq!(c.bar_decode(0), Some((0x1_e000_0000, 0x8000)));
        w32(&mut c, 5, 0);
        assert_eq!(c.bar_decode(0), Some((0xe000_0000, 0x8000)));
        assert_eq!(c.bar(1), None, "the upper half is not a BAR of its own");
        // A 64-bit BAR cannot start in the last register.
        c.add_bar(5, BarKind::Mem64, 0, 0x1000);
        assert_eq!(c.read(9), 0);
        assert_eq!(c.bar(5), None);
    }

    #[test]
    fn io_bar_and_io_decode_bit() {
        let mut c = ConfigSpace::new(0x1af4, 0x1000, 0x02_0000, 0x1af4, 1);
        c.add_bar(2, BarKind::Io, 0xc040, 0x40);
        assert_eq!(c.read(6), 0xc041);
        w32(&mut c, 6, 0xffff_ffff);
        assert_eq!(c.read(6), 0xffc1, "16-bit port space, bit 0 = I/O");
        w32(&mut c, 6, 0x6000);
        w32(&mut c, 1, u32::from(CMD_MEM));
        assert_eq!(
            c.bar_decode(2),
            None,
            "memory decode does not enable an I/O BAR"
        );
        w32(&mut c, 1, u32::from(CMD_IO));
        assert_eq!(c.bar_decode(2), Some((0x6000, 0x40)));
    }

    #[test]
    fn bad_declarations_are_ignored() {
        let mut c = ConfigSpace::new(0x1af4, 0x1000, 0x02_0000, 0x1af4, 1);
        c.add_bar(0, BarKind::Mem32, 0, 0x3000); // not a power of two
        c.add_bar(1, BarKind::Mem32, 0, 8); // below the 16-byte minimum
        c.add_bar(6, BarKind::Mem32, 0, 0x1000); // no such BAR
        for i in 0..6 {
            assert_eq!(c.bar(i), None);
        }
    }
}
