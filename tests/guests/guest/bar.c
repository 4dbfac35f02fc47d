/*
 * BAR relocation, driven like an OS does it: with the virtio-blk driver live (DRIVER_OK, data
 * written), turn memory decode off, size BAR 0 with all-ones in both halves, program a new
 * address, turn decode back on, and carry on at the new address. Then the unusable cases: the
 * old address and a BAR with decode off read all-ones and ignore writes (notifies included), a
 * BAR outside the window or on top of another device's stays unreachable, and moving it back
 * to a good address brings the device back with its state.
 *
 * Words: "bar-move" (bar-to=<addr>, default 0xD0000000), "bar-decode-off", "bar-bad" (needs
 * virtio-rng for the overlap case). Results are ok/fail lines like every other test.
 */
#include "guest.h"

#define NEVER_SPINS 5000000ull  /* a notify that reached the device completes far sooner */
#define WAIT_SPINS 2000000000ull
#define STATUS_LIVE 0xf         /* ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK */

static u64 bar0(int slot) {
    u64 lo = pci_r32(slot, 0x10), hi = pci_r32(slot, 0x14);
    return (hi << 32) | (lo & ~0xfull);
}

static u16 command(int slot) { return (u16)pci_r32(slot, 4); }

/* Linux's sizing and assignment: decode off, all-ones, read the mask, program, decode back. */
static u64 size_and_move(int slot, u64 to) {
    u16 cmd = command(slot);
    pci_w16(slot, 4, cmd & ~2);
    pci_w32(slot, 0x10, 0xffffffffu);
    pci_w32(slot, 0x14, 0xffffffffu);
    u64 mask = ((u64)pci_r32(slot, 0x14) << 32) | (pci_r32(slot, 0x10) & ~0xfu);
    pci_w32(slot, 0x10, (u32)to);
    pci_w32(slot, 0x14, (u32)(to >> 32));
    pci_w16(slot, 4, cmd);
    return ~mask + 1;
}

/* Device status byte of the virtio common config in a BAR at `bar` (0xff: nothing there). */
static u8 status_at(u64 bar) { return mmio_r8(bar + 0x14); }

void run_bar_tests(const char *cmdline) {
    u64 seed = arg_u64(cmdline, "seed", 1), base = arg_u64(cmdline, "base", 2048);
    u64 to = arg_u64(cmdline, "bar-to", 0xD0000000ull);
    int slot = find_device(0x1042);
    if (!virtio_blk_init() || slot <= 0) return;
    u64 home = bar0(slot);
    check((pci_r32(slot, 0x10) & 0x7) == 0x4, "bar-64bit", "BAR 0 is not a 64-bit memory BAR");
    check(blk_rw(BLK_BATCH, 1, base, seed), "bar-write-at-home", "writes at the first address failed");
    u64 notify_off = blk_notify_addr() - home;

    u64 size = size_and_move(slot, to);
    puts("bar-size ");
    put_hex(size);
    puts("\n");
    check(size == 0x8000, "bar-size-probe", "all-ones did not read back the BAR size");
    check(bar0(slot) == to, "bar-programmed", "BAR does not hold the new address");
    check(mmio_r32(home) == 0xffffffffu && status_at(home) == 0xff, "bar-old-reads-ones",
          "the old address still answers");
    check(status_at(to) == STATUS_LIVE, "bar-state-kept", "device state lost in the move");

    /* A notify at the old address reaches nothing; the same requests go at the new one. */
    blk_post_reads(BLK_BATCH, base, home + notify_off);
    check(blk_reap_reads(BLK_BATCH, NEVER_SPINS, base, seed) == 0, "bar-old-notify-ignored",
          "a notify at the old address reached the device");
    mmio_w16(to + notify_off, 0);
    check(blk_reap_reads(BLK_BATCH, WAIT_SPINS, base, seed) == 1, "bar-new-notify",
          "requests not served after a notify at the new address");
    blk_set_notify_addr(to + notify_off);
    int ok = blk_rw(BLK_BATCH, 1, base + 8 * BLK_BATCH, seed + 1) &&
             blk_rw(BLK_BATCH, 0, base + 8 * BLK_BATCH, seed + 1) && blk_rw(BLK_BATCH, 0, base, seed);
    check(ok, "bar-moved-io", "block I/O at the new address failed or read back wrong");

    if (has_word(cmdline, "bar-decode-off")) {
        u16 cmd = command(slot);
        pci_w16(slot, 4, cmd & ~2);
        check(mmio_r32(to) == 0xffffffffu && status_at(to) == 0xff, "decode-off-reads-ones",
              "BAR answers with memory decode off");
        mmio_w8(to + 0x14, 0); /* a reset that must not arrive */
        blk_post_reads(BLK_BATCH, base, to + notify_off);
        check(blk_reap_reads(BLK_BATCH, NEVER_SPINS, base, seed) == 0, "decode-off-notify-ignored",
              "a notify with decode off reached the device");
        pci_w16(slot, 4, cmd);
        check(status_at(to) == STATUS_LIVE, "decode-off-writes-ignored",
              "a write with decode off changed the device");
        mmio_w16(to + notify_off, 0);
        check(blk_reap_reads(BLK_BATCH, WAIT_SPINS, base, seed) == 1, "decode-on-again",
              "requests not served once decode is back on");
    }

    if (has_word(cmdline, "bar-bad")) {
        /* Outside the window (between ECAM and the IOAPIC), then the low half with a high half. */
        size_and_move(slot, 0xF0000000ull);
        check(mmio_r32(0xF0000000ull) == 0xffffffffu, "bar-outside-window-off",
              "a BAR outside the window decodes");
        size_and_move(slot, to | (1ull << 32));
        check(status_at(to) == 0xff, "bar-high-half-counts", "a BAR above 4 GiB answers below it");
        int rng = find_device(0x1044);
        if (rng > 0) {
            pci_w16(rng, 4, 2);
            u64 rbar = bar0(rng);
            u8 rng_status = status_at(rbar);
            size_and_move(slot, rbar);
            check(status_at(rbar) == rng_status && rng_status != STATUS_LIVE, "bar-overlap-refused",
                  "a BAR on top of another device's took it over");
        }
        size_and_move(slot, to);
        check(status_at(to) == STATUS_LIVE && blk_rw(BLK_BATCH, 0, base, seed), "bar-back-after-bad",
              "device not back after the bad addresses");
    }
}
