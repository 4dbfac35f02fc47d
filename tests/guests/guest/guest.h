/* Shared helpers for the ring-3 part of Cairn's test guests (port I/O, MMIO, output, results). */
#ifndef GUEST_H
#define GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned long usize;

#define DEBUG_PROGRESS_PORT 0x80
#define DEBUG_CHAR_PORT 0xe9
#define DEBUG_EXIT_PORT 0x501

struct hvm_start_info {
    u32 magic;
    u32 version;
    u32 flags;
    u32 nr_modules;
    u64 modlist_paddr;
    u64 cmdline_paddr;
    u64 rsdp_paddr;
    u64 memmap_paddr;
    u32 memmap_entries;
    u32 reserved;
};

struct hvm_memmap_entry {
    u64 addr;
    u64 size;
    u32 type;
    u32 reserved;
};

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline u8 mmio_r8(u64 a) { return *(volatile u8 *)a; }
static inline u16 mmio_r16(u64 a) { return *(volatile u16 *)a; }
static inline u32 mmio_r32(u64 a) { return *(volatile u32 *)a; }
static inline void mmio_w8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void mmio_w16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void mmio_w32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline void mmio_w64(u64 a, u64 v) { mmio_w32(a, (u32)v); mmio_w32(a + 4, (u32)(v >> 32)); }

static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline u64 rdtsc(void) { u32 lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((u64)hi << 32) | lo; }

void puts(const char *s);
void put_hex(u64 v);
void put_dec(u64 v);
void *memset(void *d, int c, usize n);
void *memcpy(void *d, const void *s, usize n);
int memcmp(const void *a, const void *b, usize n);
usize strlen(const char *s);
int str_starts(const char *s, const char *prefix);
/* Value of "key=" in the command line, or dflt. */
u64 arg_u64(const char *cmdline, const char *key, u64 dflt);
int has_word(const char *cmdline, const char *word);

/* PCI slot on bus 0 of the first virtio device with this PCI device id, or -1. */
int find_device(u16 device_id);

/* Vendor/device id dword of a bus-0 slot (all-ones when empty). */
u32 pci_id(int slot);
/* Resets the virtio device in `slot` and turns off its decoding; 1 on success. */
int virtio_release_slot(int slot);

/* Config space of a bus-0 slot through 0xCF8/0xCFC. */
u32 pci_r32(int slot, int off);
void pci_w16(int slot, int off, u16 v);
void pci_w32(int slot, int off, u32 v);

/* virtio-blk driver pieces for tests that move the device under a running driver (virtio.c). */
#define BLK_BATCH 32
u64 virtio_blk_init(void);
int blk_rw(int n, u32 type, u64 first_sector, u64 seed);
u64 blk_notify_addr(void);
void blk_set_notify_addr(u64 a);
void blk_post_reads(int n, u64 first_sector, u64 notify);
int blk_reap_reads(int n, u64 spins, u64 first_sector, u64 seed);

/* Result protocol read by the Rust tests: "ok <name>\n" / "fail <name> <why>\n". */
extern int failures;
void check(int cond, const char *name, const char *why);

#endif
