/*
 * Ring-3 entry of the test guest. The command line (PVH start info) names the tests to run;
 * results go to the debug port as lines, and the return value becomes the exit code written to
 * port 0x501 (0 = every check passed).
 */
#include "guest.h"

int run_pci_tests(const char *cmdline);
void run_acpi_shutdown(u64 rsdp);
void run_hotplug_wait(u64 rsdp);
void run_hotunplug(void);
void run_blk_verify_again(const char *cmdline);
void run_bar_tests(const char *cmdline);
void run_net_bench(const char *cmdline);

/* Follows RSDP -> XSDT -> MADT/MCFG, counts enabled LAPICs and checks the ECAM base. */
static void check_acpi(u64 rsdp) {
    const u8 *r = (const u8 *)(usize)rsdp;
    u8 sum = 0;
    for (int i = 0; i < 36; i++) sum += r[i];
    check(!memcmp(r, "RSD PTR ", 8) && sum == 0, "acpi-rsdp", "bad RSDP");
    const u8 *x = (const u8 *)(usize)*(const u64 *)(r + 24);
    u32 xlen = *(const u32 *)(x + 4);
    int cpus = 0;
    u64 ecam = 0;
    for (u32 off = 36; off + 8 <= xlen && off < 36 + 8 * 16; off += 8) {
        const u8 *t = (const u8 *)(usize)*(const u64 *)(x + off);
        u32 len = *(const u32 *)(t + 4);
        if (!memcmp(t, "APIC", 4)) {
            for (u32 p = 44; p + 2 <= len && p < 4096;) {
                if (t[p] == 0 && (*(const u32 *)(t + p + 4) & 1)) cpus++;
                if (t[p + 1] == 0) break;
                p += t[p + 1];
            }
        } else if (!memcmp(t, "MCFG", 4)) {
            ecam = *(const u64 *)(t + 44);
        }
    }
    puts("acpi-cpus ");
    put_dec((u64)cpus);
    puts("\n");
    check(ecam == 0xE0000000ull, "acpi-mcfg", "MCFG ECAM base wrong");
}

int guest_main(u32 start_info_pa) {
    const struct hvm_start_info *si = (const struct hvm_start_info *)(usize)start_info_pa;
    const char *cmdline = 0;
    puts("hello from ring 3\n");
    if (si && si->magic == 0x336ec578) {
        check(1, "pvh-magic", "");
        if (si->cmdline_paddr) cmdline = (const char *)(usize)si->cmdline_paddr;
        u64 ram = 0;
        const struct hvm_memmap_entry *mm = (const struct hvm_memmap_entry *)(usize)si->memmap_paddr;
        for (u32 i = 0; si->memmap_paddr && i < si->memmap_entries && i < 64; i++)
            if (mm[i].type == 1) ram += mm[i].size;
        puts("ram-bytes ");
        put_dec(ram);
        puts("\n");
    } else {
        check(0, "pvh-magic", "bad start info");
    }
    if (si && si->rsdp_paddr && has_word(cmdline, "acpi")) check_acpi(si->rsdp_paddr);
    if (cmdline) {
        puts("cmdline ");
        puts(cmdline);
        puts("\n");
    }
    if (has_word(cmdline, "porttest")) {
        u16 p = 0xe9;
        __asm__ volatile("outb %0, %1" : : "a"((u8)'A'), "Nd"((u16)0xe9));
        puts(" imm-out ok\n");
        { u8 v; __asm__ volatile("inb $0x80, %0" : "=a"(v)); }
        puts("imm-in ok\n");
        __asm__ volatile("outb %%al, %%dx" : : "a"((u8)'B'), "d"(p));
        puts(" dx-out ok\n");
        { u8 v; __asm__ volatile("inb %%dx, %%al" : "=a"(v) : "d"(p)); }
        puts("dx-in-e9 ok\n");
        static const u16 ports[] = {0x3f8, 0x400, 0x501, 0xcf8, 0xcfc};
        for (unsigned i = 0; i < sizeof(ports) / sizeof(ports[0]); i++) {
            (void)inb(ports[i]);
            puts("in ok ");
            put_hex(ports[i]);
            puts("\n");
        }
    }
    if (has_word(cmdline, "spin"))
        for (;;) __asm__ volatile("pause");
    if (has_word(cmdline, "wait-shutdown")) {
        /* Graceful stop: wait for the ACPI power button, then power off through S5. */
        run_acpi_shutdown(si ? si->rsdp_paddr : 0);
        return 1;
    }
    if (has_word(cmdline, "hotplug")) run_hotplug_wait(si ? si->rsdp_paddr : 0);
    if (has_word(cmdline, "pci") || has_word(cmdline, "blk") || has_word(cmdline, "rng") ||
        has_word(cmdline, "blk-write") || has_word(cmdline, "blk-verify") || has_word(cmdline, "blk-mq") ||
        has_word(cmdline, "blk-reset") ||
        has_word(cmdline, "bench-read") || has_word(cmdline, "bench-write") ||
        has_word(cmdline, "net") || has_word(cmdline, "net-offload") || has_word(cmdline, "net-mq") ||
        has_word(cmdline, "console"))
        run_pci_tests(cmdline);
    if (has_word(cmdline, "bar-move")) run_bar_tests(cmdline);
    if (has_word(cmdline, "bench-net")) run_net_bench(cmdline);
    if (has_word(cmdline, "hotunplug")) {
        run_hotunplug();
        run_blk_verify_again(cmdline);
    }
    puts(failures ? "result fail\n" : "result pass\n");
    return failures ? 1 : 0;
}
