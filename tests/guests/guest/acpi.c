/*
 * ACPI events from ring 3. Power button: finds the FADT and DSDT, enables PWRBTN_EN, routes the SCI
 * through the IOAPIC to the LAPIC (interrupts stay off: the test looks at the LAPIC IRR),
 * polls PM1_STS until the host presses the button, clears it and powers off with the \_S5
 * SLP_TYP through PM1a_CNT (SLP_EN). Hot-attach: waits for GPE0 bit 1 (PCI devices changed)
 * with the SCI routed the same way, after which the caller rescans the bus. Hot-detach: follows
 * the DSDT's hot-plug registers (PCIU/PCID/B0EJ/PRES) by hand, as the GPE and _EJ0 methods do.
 */
#include "guest.h"

#define LAPIC 0xFEE00000ull
#define IOAPIC 0xFEC00000ull
#define SCI_VECTOR 0x90
#define PWRBTN (1u << 8)

static const u8 *find_table(u64 rsdp, const char *sig) {
    const u8 *r = (const u8 *)(usize)rsdp;
    const u8 *x = (const u8 *)(usize)*(const u64 *)(r + 24);
    u32 xlen = *(const u32 *)(x + 4);
    for (u32 off = 36; off + 8 <= xlen && off < 36 + 8 * 16; off += 8) {
        const u8 *t = (const u8 *)(usize)*(const u64 *)(x + off);
        if (!memcmp(t, sig, 4)) return t;
    }
    return 0;
}

/* SLP_TYP of \_S5 from the DSDT's Name(_S5_, Package(){ByteConst..}); -1 if absent. */
static int s5_slp_typ(const u8 *dsdt) {
    u32 len = *(const u32 *)(dsdt + 4);
    for (u32 i = 36; i + 10 <= len && i < 65536; i++) {
        if (memcmp(dsdt + i, "_S5_", 4) || dsdt[i + 4] != 0x12) continue;
        const u8 *p = dsdt + i + 5;
        p += 1 + (p[0] >> 6); /* PkgLength: lead byte + extra bytes */
        p += 1;               /* NumElements */
        if (p[0] == 0x0a) return p[1];
        if (p[0] <= 1) return p[0]; /* ZeroOp / OneOp */
        return -1;
    }
    return -1;
}

static void ioapic_write(u32 reg, u32 v) {
    mmio_w32(IOAPIC, reg);
    mmio_w32(IOAPIC + 0x10, v);
}

static int lapic_irr(u8 vector) {
    return (mmio_r32(LAPIC + 0x200 + 0x10 * (vector / 32)) >> (vector % 32)) & 1;
}

/* SCI: IOAPIC pin `sci` -> vector 0x90 on APIC 0, level, active high, unmasked. */
static void route_sci(u16 sci) {
    mmio_w32(LAPIC + 0xf0, 0x1ff);
    ioapic_write(0x11 + 2 * sci, 0);
    ioapic_write(0x10 + 2 * sci, SCI_VECTOR | (1u << 15));
}

static int sci_pending(void) {
    int irr = 0;
    for (int i = 0; i < 1000000 && !irr; i++) irr = lapic_irr(SCI_VECTOR);
    return irr;
}

/* The hot-plug register block: the SystemIO OperationRegion PCST in the DSDT (0 if absent). */
static u16 pcihp_port(const u8 *dsdt) {
    u32 len = *(const u32 *)(dsdt + 4);
    for (u32 i = 36; i + 10 <= len && i < 65536; i++)
        if (dsdt[i] == 0x5b && dsdt[i + 1] == 0x80 && !memcmp(dsdt + i + 2, "PCST", 4) &&
            dsdt[i + 6] == 1 && dsdt[i + 7] == 0x0b)
            return (u16)(dsdt[i + 8] | dsdt[i + 9] << 8);
    return 0;
}

/* Does the DSDT declare Device (Sxx) with an _EJ0 for this slot? */
static int slot_ejectable(const u8 *dsdt, int slot) {
    static const char hex[] = "0123456789ABCDEF";
    char name[4] = {'S', hex[(slot >> 4) & 0xf], hex[slot & 0xf], '_'};
    u32 len = *(const u32 *)(dsdt + 4);
    for (u32 i = 36; i + 8 <= len && i < 65536; i++) {
        if (dsdt[i] != 0x5b || dsdt[i + 1] != 0x82) continue;
        u32 pl = dsdt[i + 2] >> 6; /* extra PkgLength bytes */
        if (memcmp(dsdt + i + 3 + pl, name, 4)) continue;
        for (u32 j = i; j < i + 120 && j + 4 <= len; j++)
            if (!memcmp(dsdt + j, "_EJ0", 4)) return 1;
    }
    return 0;
}

static u16 gpe_blk, pcihp;
static int hot_slot = -1;

/* Waits for GPE0 bit 1 (the SCI's "PCI changed" event) and clears it, as \_GPE._E01 runs. */
static void wait_gpe(const char *ready) {
    puts(ready);
    while (!(inb(gpe_blk) & 2)) __asm__ volatile("pause");
    outb(gpe_blk, 2); /* write 1 to clear */
}

/* Waits for the host to hot-attach a disk: GPE0_STS bit 1 and the SCI; clears the event. */
void run_hotplug_wait(u64 rsdp) {
    const u8 *fadt = rsdp ? find_table(rsdp, "FACP") : 0;
    check(fadt != 0, "acpi-fadt", "no FADT");
    if (!fadt) return;
    u16 sci = *(const u16 *)(fadt + 46);
    u16 gpe = (u16)*(const u32 *)(fadt + 80);
    u8 gpe_len = fadt[92];
    const u8 *dsdt = (const u8 *)(usize)*(const u64 *)(fadt + 140);
    check(gpe && gpe_len >= 2, "acpi-gpe0", "no GPE0 block");
    if (!gpe) return;
    gpe_blk = gpe;
    pcihp = pcihp_port(dsdt);
    check(pcihp != 0, "acpi-pcihp-region", "no PCST OperationRegion in the DSDT");
    check(find_device(0x1042) < 0, "hotplug-none-before", "a virtio-blk disk is already there");
    route_sci(sci);
    outb(gpe + gpe_len / 2, 2); /* GPE0_EN bit 1 */
    puts("hotplug-waiting\n");
    while (!(inb(gpe) & 2)) __asm__ volatile("pause");
    check(sci_pending(), "hotplug-sci", "SCI vector not pending in the LAPIC IRR");
    outb(gpe, 2); /* write 1 to clear */
    check(!(inb(gpe) & 2), "hotplug-gpe-cleared", "GPE0_STS bit 1 did not clear");
    hot_slot = find_device(0x1042);
    check(hot_slot > 0, "hotplug-found", "no virtio-blk after the event");
    if (hot_slot <= 0 || !pcihp) return;
    /* What _E01 does: PCIU names the slot to check, and its _STA (PRES) says present. */
    check(inl(pcihp) == 1u << hot_slot, "hotplug-pciu-slot", "PCIU does not name the new slot");
    check(inl(pcihp) == 0, "hotplug-pciu-cleared", "PCIU not cleared by the read");
    check(inl(pcihp + 12) & (1u << hot_slot), "hotplug-sta-present", "PRES bit clear");
    check(slot_ejectable(dsdt, hot_slot), "hotplug-slot-ej0", "no Device (Sxx) with _EJ0 for the slot");
}

/*
 * Detach, the way Linux acpiphp answers Notify (Sxx, 3): on the GPE, PCID names the slot; the
 * driver releases the device, then _EJ0 writes the slot's bit to B0EJ and the device is gone
 * from config space. Then waits for the host to attach a disk again, expecting the same slot.
 */
void run_hotunplug(void) {
    if (hot_slot <= 0 || !pcihp) {
        check(0, "hotunplug-setup", "no hot-attached disk to detach");
        return;
    }
    u32 bit = 1u << hot_slot;
    wait_gpe("hotunplug-waiting\n");
    check(inl(pcihp + 4) == bit, "hotunplug-request", "PCID does not name the slot");
    check(virtio_release_slot(hot_slot), "hotunplug-driver-released", "device reset failed");
    check(pci_id(hot_slot) != 0xffffffffu, "hotunplug-still-there", "gone before _EJ0");
    outl(pcihp + 8, bit); /* _EJ0 -> PCEJ (slot) */
    check(pci_id(hot_slot) == 0xffffffffu, "hotunplug-gone", "config space still answers");
    check(!(inl(pcihp + 12) & bit) && inl(pcihp + 4) == 0, "hotunplug-sta-absent", "PRES/PCID still set");
    check(find_device(0x1042) < 0, "hotunplug-no-blk", "a virtio-blk is still on the bus");
    puts("hotunplug-done\n");
    wait_gpe("hotplug-waiting-again\n");
    check(inl(pcihp) == bit, "hotplug-again-pciu", "PCIU does not name the old slot");
    check(find_device(0x1042) == hot_slot, "hotplug-same-slot", "re-attached disk not in the freed slot");
}

/* Returns only if the power-off did not happen (the exit code then reports failure). */
void run_acpi_shutdown(u64 rsdp) {
    const u8 *fadt = rsdp ? find_table(rsdp, "FACP") : 0;
    check(fadt != 0, "acpi-fadt", "no FADT");
    if (!fadt) return;
    u32 flags = *(const u32 *)(fadt + 112);
    u16 sci = *(const u16 *)(fadt + 46);
    u16 evt = (u16)*(const u32 *)(fadt + 56);
    u16 cnt = (u16)*(const u32 *)(fadt + 64);
    const u8 *dsdt = (const u8 *)(usize)*(const u64 *)(fadt + 140);
    check(!(flags & (1u << 20)) && !(flags & (1u << 4)) && evt && cnt && fadt[88] == 4,
          "acpi-fixed-power-button", "FADT lacks PM1 blocks or a fixed power button");
    int slp_typ = s5_slp_typ(dsdt);
    check(slp_typ >= 0, "acpi-s5", "no \\_S5 in the DSDT");
    check(inw(cnt) & 1, "acpi-sci-en", "SCI_EN clear: not in ACPI mode");
    route_sci(sci);
    outw(evt + 2, PWRBTN);
    puts("acpi-waiting\n");
    while (!(inw(evt) & PWRBTN)) __asm__ volatile("pause");
    puts("shutdown requested\n");
    check(sci_pending(), "acpi-sci", "SCI vector not pending in the LAPIC IRR");
    outw(evt, PWRBTN); /* write 1 to clear */
    check(!(inw(evt) & PWRBTN), "acpi-pwrbtn-cleared", "PWRBTN_STS did not clear");
    if (failures) {
        puts("result fail\n");
        outb(0x501, 1);
    }
    outw(cnt, (u16)((slp_typ & 7) << 10) | (1u << 13));
    for (u64 spin = 0; spin < 100000000ull; spin++) __asm__ volatile("pause");
    check(0, "acpi-poweroff", "still running after SLP_EN");
}
