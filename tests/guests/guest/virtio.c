/*
 * Ring-3 PCI + virtio-pci (modern) driver for the tests: enumerates bus 0 through 0xCF8/0xCFC,
 * parses virtio capabilities, programs MSI-X to the LAPIC, negotiates features and drives
 * virtio-blk (QD1 and QD32, flush, discard, write-zeroes, GET_ID) and virtio-rng by polling the
 * used ring. Results are "ok/fail" lines (see lib.c).
 */
#include "guest.h"

#include "virtio.h"

#define LAPIC 0xFEE00000ull
#define BATCH 32

struct blk_req { u32 type, reserved; u64 sector; };

static struct vq blkqs[2], rngq;
/* The virtio-blk queue requests go to (queue index bq_index); multi-queue tests switch it. */
static struct vq *bq = &blkqs[0];
static u16 bq_index;
static int blk_nqueues = 1;
/* The virtio-blk device's common configuration (for resets). */
static u64 blk_common;
static u8 data[BATCH][4096] __attribute__((aligned(4096)));
static struct blk_req reqs[BATCH];
static u8 status[BATCH];
static u8 seg16[16];

static u32 pci_addr(int slot, int off) { return 0x80000000u | ((u32)slot << 11) | (u32)(off & 0xfc); }
u32 pci_r32(int slot, int off) { outl(0xcf8, pci_addr(slot, off)); return inl(0xcfc); }
static u8 pci_r8(int slot, int off) { return (u8)(pci_r32(slot, off) >> ((off & 3) * 8)); }
void pci_w16(int slot, int off, u16 v) { outl(0xcf8, pci_addr(slot, off)); outw(0xcfc + (off & 2), v); }
void pci_w32(int slot, int off, u32 v) { outl(0xcf8, pci_addr(slot, off)); outl(0xcfc, v); }

int find_device(u16 device_id) {
    for (int slot = 0; slot < 32; slot++)
        if (pci_r32(slot, 0) == (0x1af4u | ((u32)device_id << 16))) return slot;
    return -1;
}

u32 pci_id(int slot) { return pci_r32(slot, 0); }

/* Address of memory BAR `bar` (32- or 64-bit), as assigned by the VMM or firmware. */
static u64 bar_addr(int slot, int bar) {
    u32 lo = pci_r32(slot, 0x10 + 4 * bar);
    u64 a = lo & ~0xfull;
    if ((lo & 0x6) == 0x4 && bar < 5) a |= (u64)pci_r32(slot, 0x14 + 4 * bar) << 32;
    return a;
}

int probe(int slot, struct vdev *d) {
    memset(d, 0, sizeof(*d));
    d->slot = slot;
    pci_w16(slot, 4, 0x6); /* memory space + bus master */
    int cap = pci_r8(slot, 0x34);
    for (int guard = 0; cap && guard < 48; guard++) {
        u8 id = pci_r8(slot, cap);
        if (id == 0x09) {
            u8 type = pci_r8(slot, cap + 3);
            u64 addr = bar_addr(slot, pci_r8(slot, cap + 4)) + pci_r32(slot, cap + 8);
            if (type == 1) d->common = addr;
            if (type == 2) { d->notify = addr; d->notify_mult = pci_r32(slot, cap + 16); }
            if (type == 3) d->isr = addr;
            if (type == 4) d->device = addr;
        } else if (id == 0x11) {
            d->msix_cap = cap;
            u32 t = pci_r32(slot, cap + 4);
            d->msix_table = bar_addr(slot, t & 7) + (t & ~7u);
        }
        cap = pci_r8(slot, cap + 1);
    }
    return d->common && d->notify && d->device && d->msix_cap;
}

void msix_setup(struct vdev *d, int nvec, u8 vector_base) {
    for (int v = 0; v < nvec; v++) {
        u64 e = d->msix_table + 16 * (u64)v;
        mmio_w32(e, (u32)LAPIC);
        mmio_w32(e + 4, 0);
        mmio_w32(e + 8, vector_base + v);
        mmio_w32(e + 12, 0);
    }
    pci_w16(d->slot, d->msix_cap + 2, 0x8000);
}

static int lapic_irr(u8 vector) {
    return (mmio_r32(LAPIC + 0x200 + 0x10 * (vector / 32)) >> (vector % 32)) & 1;
}

int negotiate(struct vdev *d, u64 wanted) {
    u64 c = d->common;
    mmio_w8(c + 0x14, 0);
    mmio_w8(c + 0x14, 1);
    mmio_w8(c + 0x14, 3);
    mmio_w32(c + 0x00, 0);
    u64 f = mmio_r32(c + 0x04);
    mmio_w32(c + 0x00, 1);
    f |= (u64)mmio_r32(c + 0x04) << 32;
    d->features = f & wanted;
    mmio_w32(c + 0x08, 0);
    mmio_w32(c + 0x0c, (u32)d->features);
    mmio_w32(c + 0x08, 1);
    mmio_w32(c + 0x0c, (u32)(d->features >> 32));
    mmio_w8(c + 0x14, 3 | 8);
    return (mmio_r8(c + 0x14) & 8) != 0;
}

int queue_setup(struct vdev *d, struct vq *q, u16 index, u16 vector) {
    return queue_setup_sized(d, q, index, vector, QSZ);
}

int queue_setup_sized(struct vdev *d, struct vq *q, u16 index, u16 vector, u16 size) {
    u64 c = d->common;
    memset(q, 0, sizeof(*q));
    mmio_w16(c + 0x16, index);
    if (size > QSZ || mmio_r16(c + 0x18) < size) return 0;
    mmio_w16(c + 0x18, size);
    mmio_w16(c + 0x1a, vector);
    mmio_w64(c + 0x20, (u64)(usize)q->desc);
    mmio_w64(c + 0x28, (u64)(usize)&q->avail);
    mmio_w64(c + 0x30, (u64)(usize)&q->used);
    mmio_w16(c + 0x1c, 1);
    q->notify_addr = d->notify + (u64)mmio_r16(c + 0x1e) * d->notify_mult;
    return mmio_r16(c + 0x1a) == vector;
}

int driver_ok(struct vdev *d) {
    mmio_w8(d->common + 0x14, 1 | 2 | 4 | 8);
    return (mmio_r8(d->common + 0x14) & 0xc0) == 0;
}

/* Publishes n chains starting at descriptor heads and notifies queue `index`. */
static void publish(struct vq *q, u16 index, const u16 *heads, int n) {
    for (int i = 0; i < n; i++) q->avail.ring[(q->avail.idx + i) % QSZ] = heads[i];
    /* Event index: ask for an interrupt once the device passes our current position. */
    q->avail.used_event = q->last_used;
    mb();
    q->avail.idx += n;
    mb();
    mmio_w16(q->notify_addr, index);
}

/* Waits until n more chains are used. */
static int wait_used(struct vq *q, int n) {
    u16 target = q->last_used + n;
    for (u64 spin = 0; spin < 2000000000ull; spin++) {
        barrier();
        if (*(volatile u16 *)&q->used.idx == target) {
            q->last_used = target;
            return 1;
        }
        __asm__ volatile("pause");
    }
    return 0;
}

/* Publishes n chains and waits for their completion. */
static int submit_wait(struct vq *q, u16 index, const u16 *heads, int n) {
    publish(q, index, heads, n);
    return wait_used(q, n);
}

/* Builds request slot i: header, optional data (dlen bytes, device-writable if in), status. */
static u16 build_req(int i, u32 type, u64 sector, void *buf, u32 dlen, int dev_writes) {
    u16 h = (u16)(i * 3);
    reqs[i].type = type;
    reqs[i].reserved = 0;
    reqs[i].sector = sector;
    status[i] = 0xff;
    struct vdesc *d = bq->desc;
    d[h] = (struct vdesc){(u64)(usize)&reqs[i], 16, 1, (u16)(h + 1)};
    if (dlen) {
        d[h + 1] = (struct vdesc){(u64)(usize)buf, dlen, (u16)(1 | (dev_writes ? 2 : 0)), (u16)(h + 2)};
        d[h + 2] = (struct vdesc){(u64)(usize)&status[i], 1, 2, 0};
    } else {
        d[h + 1] = (struct vdesc){(u64)(usize)&status[i], 1, 2, 0};
    }
    return h;
}

static void pattern(u8 *b, u64 seed, u64 sector) {
    u64 x = seed * 0x9E3779B97F4A7C15ull ^ (sector + 1) * 0xBF58476D1CE4E5B9ull;
    for (int i = 0; i < 4096; i += 8) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        *(u64 *)(b + i) = x;
    }
}

static int rw_batch(int n, u32 type, u64 first_sector, u64 seed, int verify) {
    u16 heads[BATCH];
    if (n < 1 || n > BATCH) return 0;
    for (int i = 0; i < n; i++) {
        u64 s = first_sector + 8 * (u64)i;
        if (type == 1) pattern(data[i], seed, s); else memset(data[i], 0xAA, 4096);
        heads[i] = build_req(i, type, s, data[i], 4096, type == 0);
    }
    if (!submit_wait(bq, bq_index, heads, n)) return 0;
    u8 expect[4096];
    for (int i = 0; i < n; i++) {
        if (status[i] != 0) return 0;
        if (verify) {
            pattern(expect, seed, first_sector + 8 * (u64)i);
            if (memcmp(expect, data[i], 4096)) return 0;
        }
    }
    return 1;
}

static int single(u32 type, u64 sector, void *buf, u32 len, int dev_writes) {
    u16 h = build_req(0, type, sector, buf, len, dev_writes);
    if (!submit_wait(bq, bq_index, &h, 1)) return -1;
    return status[0];
}

static int all_zero(const u8 *b, int n) {
    for (int i = 0; i < n; i++) if (b[i]) return 0;
    return 1;
}

/* Finds, probes and starts the virtio-blk device; returns its capacity in sectors (0 = failed). */
static u64 blk_init(int want_mq) {
    struct vdev d;
    int slot = find_device(0x1042);
    check(slot > 0, "pci-find-blk", "no virtio-blk on bus 0");
    if (slot <= 0) return 0;
    check(probe(slot, &d), "virtio-caps", "missing virtio or MSI-X capability");
    msix_setup(&d, want_mq ? 3 : 2, 0x40);
    /* VERSION_1 | EVENT_IDX | FLUSH | DISCARD | WRITE_ZEROES | BLK_SIZE | SEG_MAX (| MQ) */
    u64 wanted = (1ull << 32) | (1ull << 29) | (1 << 9) | (1 << 13) | (1 << 14) | (1 << 6) | (1 << 2);
    if (want_mq) wanted |= 1 << 12;
    check(negotiate(&d, wanted), "virtio-features", "FEATURES_OK not accepted");
    check((d.features & (1ull << 32)) && (d.features & (1 << 9)), "virtio-features-offered", "VERSION_1/FLUSH missing");
    check(queue_setup(&d, &blkqs[0], 0, 1), "virtio-queue", "queue setup failed");
    blk_nqueues = 1;
    if (want_mq) {
        /* num_queues (config offset 34) and the common config's num_queues must agree. */
        u16 nq = mmio_r16(d.device + 34);
        check((d.features & (1 << 12)) && nq >= 2 && mmio_r16(d.common + 0x12) == nq, "blk-mq-offered", "VIRTIO_BLK_F_MQ or num_queues missing");
        /* Queue 1 gets its own MSI-X vector (table entry 2 -> vector 0x42). */
        check(nq >= 2 && queue_setup(&d, &blkqs[1], 1, 2), "blk-mq-queue1", "queue 1 setup failed");
        if (nq >= 2) blk_nqueues = 2;
    }
    check(driver_ok(&d), "virtio-driver-ok", "device needs reset");
    blk_common = d.common;
    u64 capacity = (u64)mmio_r32(d.device) | ((u64)mmio_r32(d.device + 4) << 32);
    puts("capacity-sectors ");
    put_dec(capacity);
    puts("\n");
    return failures ? 0 : capacity;
}

/*
 * Multi-queue: 16 writes in flight on queue 0 and 16 on queue 1 at the same time, then the same
 * as reads, verified; each queue's own MSI-X vector must be pending in the LAPIC IRR.
 */
static void run_blk_mq(const char *cmdline) {
    u64 capacity = blk_init(1);
    if (!capacity || blk_nqueues < 2) return;
    u64 seed = arg_u64(cmdline, "seed", 1), base = arg_u64(cmdline, "base", 2048);
    mmio_w32(LAPIC + 0xf0, 0x1ff); /* software-enable the LAPIC so MSIs land in IRR */
    int ok = 1;
    static const u32 types[2] = {1, 0}; /* writes, then reads */
    for (int t = 0; t < 2; t++) {
        u32 type = types[t];
        u16 heads[2][BATCH / 2];
        for (int q = 0; q < 2; q++) {
            bq = &blkqs[q];
            for (int i = 0; i < BATCH / 2; i++) {
                int slot = q * (BATCH / 2) + i;
                u64 s = base + 8 * (u64)slot;
                if (type == 1) pattern(data[slot], seed, s); else memset(data[slot], 0xAA, 4096);
                heads[q][i] = build_req(slot, type, s, data[slot], 4096, type == 0);
            }
        }
        publish(&blkqs[0], 0, heads[0], BATCH / 2);
        publish(&blkqs[1], 1, heads[1], BATCH / 2);
        ok = ok && wait_used(&blkqs[0], BATCH / 2) && wait_used(&blkqs[1], BATCH / 2);
        u8 expect[4096];
        for (int slot = 0; ok && slot < BATCH; slot++) {
            if (status[slot] != 0) ok = 0;
            if (type == 0) {
                pattern(expect, seed, base + 8 * (u64)slot);
                if (memcmp(expect, data[slot], 4096)) ok = 0;
            }
        }
    }
    bq = &blkqs[0];
    bq_index = 0;
    check(ok, "blk-mq-both-queues", "requests on two queues failed or read back wrong");
    check(lapic_irr(0x41) && lapic_irr(0x42), "blk-mq-vectors", "queue vectors 0x41/0x42 not both pending");
}

/*
 * Device reset with requests in flight ("blk-reset"): BATCH-1 writes of the pattern, then one
 * read, in one notify. The host's disk holds every write until all of them arrived (plus a
 * while) and answers reads at once; the device takes chains in ring order, so once the read is
 * used, every write is in flight. The guest then resets the device, which must wait for them:
 * when the reset write returns they are all answered OK, nothing lands in the old ring later,
 * the device starts again, and every write reads back whole. Prints "reset-pending N": the
 * writes still unanswered when the reset was written.
 */
static void run_blk_reset(const char *cmdline) {
    u64 capacity = blk_init(0);
    if (!capacity) return;
    u64 seed = arg_u64(cmdline, "seed", 1), base = arg_u64(cmdline, "base", 2048);
    int n = BATCH - 1;
    u16 heads[BATCH];
    for (int i = 0; i < n; i++) {
        pattern(data[i], seed, base + 8 * (u64)i);
        heads[i] = build_req(i, 1, base + 8 * (u64)i, data[i], 4096, 0);
    }
    memset(data[n], 0xAA, 4096);
    heads[n] = build_req(n, 0, base, data[n], 4096, 1);
    publish(bq, 0, heads, BATCH);
    int first = 0;
    for (u64 spin = 0; spin < 2000000000ull; spin++) {
        barrier();
        if (*(volatile u16 *)&bq->used.idx != bq->last_used) { first = 1; break; }
        __asm__ volatile("pause");
    }
    check(first && bq->used.ring[bq->last_used % QSZ].id == heads[n], "blk-reset-read-first",
          "the read did not complete ahead of the held writes");
    int pending = 0;
    for (int i = 0; i < n; i++) pending += *(volatile u8 *)&status[i] == 0xff;
    mmio_w8(blk_common + 0x14, 0);
    check(mmio_r8(blk_common + 0x14) == 0, "blk-reset-status-zero", "device status not 0 after reset");
    u16 used = *(volatile u16 *)&bq->used.idx;
    int answered = used == (u16)(bq->last_used + BATCH);
    for (int i = 0; i < n; i++) answered = answered && *(volatile u8 *)&status[i] == 0;
    check(answered, "blk-reset-drained", "in-flight writes not all answered OK when the reset returned");
    for (u64 spin = 0; spin < 20000000ull; spin++) __asm__ volatile("pause");
    check(*(volatile u16 *)&bq->used.idx == used, "blk-reset-quiet", "used ring written after reset");
    puts("reset-pending ");
    put_dec((u64)pending);
    puts("\n");
    check(blk_init(0) != 0, "blk-reset-reinit", "device did not start again after reset");
    check(rw_batch(n, 0, base, seed, 1), "blk-reset-data", "writes in flight at reset did not read back whole");
}

static void run_blk(const char *cmdline) {
    if (has_word(cmdline, "blk-reset")) {
        run_blk_reset(cmdline);
        return;
    }
    if (has_word(cmdline, "blk-mq")) {
        run_blk_mq(cmdline);
        return;
    }
    u64 capacity = blk_init(0);
    if (!capacity) return;
    u64 seed = arg_u64(cmdline, "seed", 1);
    u64 base = arg_u64(cmdline, "base", 2048);

    if (has_word(cmdline, "blk-verify")) {
        check(rw_batch(BATCH, 0, base, seed, 1), "blk-verify-after-restart", "data differs");
        return;
    }
    /* QD1: write then read back, one request at a time. */
    int ok = 1;
    for (int i = 0; i < 8 && ok; i++) ok = rw_batch(1, 1, base + 8 * (u64)i, seed, 0) && rw_batch(1, 0, base + 8 * (u64)i, seed, 1);
    check(ok, "blk-qd1", "QD1 write/read mismatch");
    mmio_w32(LAPIC + 0xf0, 0x1ff); /* software-enable the LAPIC so MSIs land in IRR */
    ok = rw_batch(1, 0, base, seed, 1);
    check(ok && lapic_irr(0x41), "msix-delivered", "queue vector 0x41 not pending in LAPIC IRR");
    /* QD32: 32 writes in flight, then 32 reads, verified. */
    check(rw_batch(BATCH, 1, base, seed, 0), "blk-qd32-write", "QD32 writes failed");
    check(rw_batch(BATCH, 0, base, seed, 1), "blk-qd32-read", "QD32 read-back mismatch");
    check(single(4, 0, 0, 0, 0) == 0, "blk-flush", "flush failed");
    char id[20];
    memset(id, 0, sizeof(id));
    check(single(8, 0, id, 20, 1) == 0 && str_starts(id, "cairn-test-disk"), "blk-get-id", "serial mismatch");
    /* Discard the 5th block of the pattern and zero the 6th; both then read as zeros. */
    *(u64 *)seg16 = base + 8 * 4;
    *(u32 *)(seg16 + 8) = 8;
    *(u32 *)(seg16 + 12) = 0;
    check(single(11, 0, seg16, 16, 0) == 0, "blk-discard", "discard failed");
    *(u64 *)seg16 = base + 8 * 5;
    check(single(13, 0, seg16, 16, 0) == 0, "blk-write-zeroes", "write zeroes failed");
    int zero_ok = single(0, base + 8 * 4, data[0], 4096, 1) == 0 && all_zero(data[0], 4096) &&
                  single(0, base + 8 * 5, data[0], 4096, 1) == 0 && all_zero(data[0], 4096);
    check(zero_ok, "blk-discarded-reads-zero", "discarded data still visible");
    check(single(0, capacity, data[0], 4096, 1) == 1, "blk-out-of-range-ioerr", "read past end not rejected");
    check(single(99, 0, 0, 0, 0) == 2, "blk-unknown-unsupp", "unknown type not UNSUPP");
    if (has_word(cmdline, "blk-write")) {
        /* Leave the pattern (rewritten over the discarded blocks) for the restart check. */
        check(rw_batch(BATCH, 1, base, seed, 0), "blk-write-for-restart", "writes failed");
        check(single(4, 0, 0, 0, 0) == 0, "blk-flush-for-restart", "flush failed");
    }
}

static void run_rng(void) {
    struct vdev d;
    int slot = find_device(0x1044);
    check(slot > 0, "pci-find-rng", "no virtio-rng");
    if (slot <= 0) return;
    check(probe(slot, &d), "rng-caps", "missing capabilities");
    msix_setup(&d, 2, 0x50);
    check(negotiate(&d, 1ull << 32), "rng-features", "FEATURES_OK refused");
    check(queue_setup(&d, &rngq, 0, 1), "rng-queue", "queue setup failed");
    check(driver_ok(&d), "rng-driver-ok", "needs reset");
    static u8 a[64], b[64];
    rngq.desc[0] = (struct vdesc){(u64)(usize)a, 64, 2, 0};
    rngq.desc[1] = (struct vdesc){(u64)(usize)b, 64, 2, 0};
    u16 h0 = 0, h1 = 1;
    int ok = submit_wait(&rngq, 0, &h0, 1) && rngq.used.ring[0].len == 64;
    ok = ok && submit_wait(&rngq, 0, &h1, 1) && rngq.used.ring[1].len == 64;
    check(ok && !all_zero(a, 64) && memcmp(a, b, 64) != 0, "rng-entropy", "no or repeated entropy");
}

/* Event-index rule (virtio 2.7.10): notify only if the device asked for this range. */
static int need_event(u16 event, u16 new_idx, u16 old_idx) {
    return (u16)(new_idx - event - 1) < (u16)(new_idx - old_idx);
}

/*
 * Random 4 KiB reads or writes with `qd` requests kept in flight, polling the used ring with
 * interrupts suppressed (used_event far behind) and notifications only when the device asks.
 * Prints "bench <op> qd=<n> ops=<m> tsc=<cycles> errors=<e>"; the host converts cycles to time.
 */
static void run_bench(const char *cmdline) {
    u64 capacity = blk_init(0);
    if (!capacity) return;
    int write = has_word(cmdline, "bench-write");
    u64 qd = arg_u64(cmdline, "qd", 1), ops = arg_u64(cmdline, "ops", 20000);
    if (qd < 1) qd = 1;
    if (qd > BATCH) qd = BATCH;
    if (ops < qd) ops = qd;
    u64 blocks = capacity / 8, x = 0x2545F4914F6CDD1Dull, submitted = 0, completed = 0, errors = 0;
    for (u64 i = 0; i < qd; i++) pattern(data[i], 1, i);
    struct vq *q = bq;
    u64 t0 = rdtsc();
    u16 old = q->avail.idx;
    for (u64 i = 0; i < qd; i++, submitted++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        q->avail.ring[(q->avail.idx + i) % QSZ] = build_req((int)i, write ? 1 : 0, (x % blocks) * 8, data[i], 4096, !write);
    }
    q->avail.used_event = (u16)(q->last_used - 1);
    mb();
    q->avail.idx += (u16)qd;
    mb();
    mmio_w16(q->notify_addr, 0);
    while (completed < ops) {
        barrier();
        u16 used = *(volatile u16 *)&q->used.idx;
        if (used == q->last_used) { __asm__ volatile("pause"); continue; }
        old = q->avail.idx;
        u16 added = 0;
        while (q->last_used != used) {
            u32 id = q->used.ring[q->last_used % QSZ].id;
            int slot = (int)(id / 3);
            if (status[slot] != 0) errors++;
            q->last_used++;
            completed++;
            if (submitted < ops) {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                q->avail.ring[(u16)(old + added) % QSZ] = build_req(slot, write ? 1 : 0, (x % blocks) * 8, data[slot], 4096, !write);
                added++;
                submitted++;
            }
        }
        if (added) {
            q->avail.used_event = (u16)(q->last_used - 1);
            mb();
            q->avail.idx = (u16)(old + added);
            mb();
            if (need_event(*(volatile u16 *)&q->used.avail_event, q->avail.idx, old)) mmio_w16(q->notify_addr, 0);
        }
    }
    u64 t1 = rdtsc();
    puts(write ? "bench write qd=" : "bench read qd=");
    put_dec(qd);
    puts(" ops=");
    put_dec(completed);
    puts(" tsc=");
    put_dec(t1 - t0);
    puts(" errors=");
    put_dec(errors);
    puts("\n");
    check(errors == 0, "bench-no-errors", "requests failed");
}

static struct vq rxq, txq;
static u8 rxbuf[8][2048] __attribute__((aligned(4096)));
static u8 txbuf[2048];

/* Sends an 0x88b5 "cairn-ping" broadcast and waits for a "cairn-pong" addressed to us. */
static void run_net(void) {
    struct vdev d;
    int slot = find_device(0x1041);
    check(slot > 0, "pci-find-net", "no virtio-net");
    if (slot <= 0) return;
    check(probe(slot, &d), "net-caps", "missing capabilities");
    msix_setup(&d, 3, 0x60);
    check(negotiate(&d, (1ull << 32) | (1 << 5)), "net-features", "FEATURES_OK refused");
    check(queue_setup(&d, &rxq, 0, 1) && queue_setup(&d, &txq, 1, 2), "net-queues", "queue setup failed");
    check(driver_ok(&d), "net-driver-ok", "needs reset");
    u8 mac[6];
    for (int i = 0; i < 6; i++) mac[i] = mmio_r8(d.device + i);
    check(mac[0] == 0x52 && mac[1] == 0x54, "net-mac", "unexpected MAC");
    for (u16 i = 0; i < 8; i++) {
        rxq.desc[i] = (struct vdesc){(u64)(usize)rxbuf[i], 2048, 2, 0};
        rxq.avail.ring[i] = i;
    }
    mb();
    rxq.avail.idx = 8;
    mb();
    mmio_w16(rxq.notify_addr, 0);
    memset(txbuf, 0, sizeof(txbuf));
    u8 *f = txbuf + 12;
    memset(f, 0xff, 6);
    memcpy(f + 6, mac, 6);
    f[12] = 0x88;
    f[13] = 0xb5;
    memcpy(f + 14, "cairn-ping", 10);
    txq.desc[0] = (struct vdesc){(u64)(usize)txbuf, 12 + 60, 0, 0};
    u16 h = 0;
    check(submit_wait(&txq, 1, &h, 1), "net-tx", "tx not completed");
    int found = 0;
    for (u64 spin = 0; spin < 4000000000ull && !found; spin++) {
        barrier();
        if (*(volatile u16 *)&rxq.used.idx == rxq.last_used) { __asm__ volatile("pause"); continue; }
        u32 id = rxq.used.ring[rxq.last_used % QSZ].id;
        rxq.last_used++;
        if (id >= 8) break;
        u8 *r = rxbuf[id] + 12;
        if (r[12] == 0x88 && r[13] == 0xb5 && !memcmp(r + 14, "cairn-pong", 10) && !memcmp(r, mac, 6)) found = 1;
        /* Give the buffer back. */
        rxq.avail.ring[rxq.avail.idx % QSZ] = (u16)id;
        mb();
        rxq.avail.idx++;
        mb();
        mmio_w16(rxq.notify_addr, 0);
    }
    check(found, "net-rx", "no reply frame received");
}

static u16 csum_add(u32 sum, const u8 *p, int n) {
    for (int i = 0; i + 1 < n; i += 2) sum += (u32)(p[i] << 8 | p[i + 1]);
    if (n & 1) sum += (u32)(p[n - 1] << 8);
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (u16)sum;
}

/*
 * Checksum offloads through the tap (host side: 10.0.0.1, UDP port 5555; we are 10.0.0.2).
 * tx: a UDP datagram with VIRTIO_NET_HDR_F_NEEDS_CSUM and only the pseudo-header sum in its
 * checksum field; the host stack accepts it only if the header reached the tap intact.
 * rx: the host's reply must arrive with NEEDS_CSUM or DATA_VALID set, which the tap only does
 * once told (TUNSETOFFLOAD) that we negotiated VIRTIO_NET_F_GUEST_CSUM.
 */
static void run_net_offload(void) {
    struct vdev d;
    int slot = find_device(0x1041);
    check(slot > 0, "pci-find-net", "no virtio-net");
    if (slot <= 0) return;
    check(probe(slot, &d), "net-caps", "missing capabilities");
    msix_setup(&d, 3, 0x60);
    /* VERSION_1 | MAC | CSUM | GUEST_CSUM | GUEST_TSO4 | HOST_TSO4 */
    u64 want = (1ull << 32) | (1 << 5) | (1 << 0) | (1 << 1) | (1 << 7) | (1 << 11);
    check(negotiate(&d, want) && d.features == want, "net-offload-features", "offload features not offered/accepted");
    check(queue_setup(&d, &rxq, 0, 1) && queue_setup(&d, &txq, 1, 2), "net-queues", "queue setup failed");
    check(driver_ok(&d), "net-driver-ok", "needs reset");
    u8 mac[6];
    for (int i = 0; i < 6; i++) mac[i] = mmio_r8(d.device + i);
    for (u16 i = 0; i < 8; i++) {
        rxq.desc[i] = (struct vdesc){(u64)(usize)rxbuf[i], 2048, 2, 0};
        rxq.avail.ring[i] = i;
    }
    mb();
    rxq.avail.idx = 8;
    mb();
    mmio_w16(rxq.notify_addr, 0);

    static const u8 me[4] = {10, 0, 0, 2}, host[4] = {10, 0, 0, 1};
    static const char payload[] = "cairn-udp-csum";
    u16 plen = sizeof(payload) - 1, ulen = 8 + plen, tlen = 20 + ulen;
    memset(txbuf, 0, sizeof(txbuf));
    u8 *h = txbuf, *f = txbuf + 12, *ip = f + 14, *udp = ip + 20;
    h[0] = 1;                              /* flags: NEEDS_CSUM */
    *(u16 *)(h + 6) = 14 + 20;             /* csum_start: the UDP header */
    *(u16 *)(h + 8) = 6;                   /* csum_offset: UDP checksum field */
    memset(f, 0xff, 6);
    memcpy(f + 6, mac, 6);
    f[12] = 0x08;
    f[13] = 0x00;
    ip[0] = 0x45;
    ip[2] = (u8)(tlen >> 8);
    ip[3] = (u8)tlen;
    ip[8] = 64;
    ip[9] = 17;
    memcpy(ip + 12, me, 4);
    memcpy(ip + 16, host, 4);
    u16 ipsum = (u16)~csum_add(0, ip, 20);
    ip[10] = (u8)(ipsum >> 8);
    ip[11] = (u8)ipsum;
    udp[0] = 4444 >> 8; udp[1] = 4444 & 0xff;
    udp[2] = 5555 >> 8; udp[3] = 5555 & 0xff;
    udp[4] = (u8)(ulen >> 8); udp[5] = (u8)ulen;
    memcpy(udp + 8, payload, plen);
    /* Pseudo-header sum only (not complemented): the device side completes it. */
    u8 pseudo[12];
    memcpy(pseudo, me, 4);
    memcpy(pseudo + 4, host, 4);
    pseudo[8] = 0; pseudo[9] = 17; pseudo[10] = (u8)(ulen >> 8); pseudo[11] = (u8)ulen;
    u16 ps = csum_add(0, pseudo, 12);
    udp[6] = (u8)(ps >> 8);
    udp[7] = (u8)ps;
    txq.desc[0] = (struct vdesc){(u64)(usize)txbuf, (u32)(12 + 14 + tlen), 0, 0};
    u16 head = 0;
    check(submit_wait(&txq, 1, &head, 1), "net-tx", "tx not completed");

    int found = 0;
    for (u64 spin = 0; spin < 4000000000ull && !found; spin++) {
        barrier();
        if (*(volatile u16 *)&rxq.used.idx == rxq.last_used) { __asm__ volatile("pause"); continue; }
        u32 id = rxq.used.ring[rxq.last_used % QSZ].id;
        rxq.last_used++;
        if (id >= 8) break;
        u8 *rh = rxbuf[id], *r = rxbuf[id] + 12;
        if (r[12] == 0x08 && r[13] == 0x00 && r[14 + 9] == 17 && r[14 + 22] == (5555 >> 8) &&
            r[14 + 23] == (5555 & 0xff) && !memcmp(r + 14 + 28, "cairn-udp-host", 14)) {
            found = 1;
            puts("net-rx-hdr-flags ");
            put_dec(rh[0]);
            puts("\n");
            check((rh[0] & 3) != 0, "net-rx-csum-offload", "reply without NEEDS_CSUM/DATA_VALID");
            check(*(u16 *)(rh + 10) == 1, "net-rx-num-buffers", "num_buffers != 1");
        }
        rxq.avail.ring[rxq.avail.idx % QSZ] = (u16)id;
        mb();
        rxq.avail.idx++;
        mb();
        mmio_w16(rxq.notify_addr, 0);
    }
    check(found, "net-rx", "no UDP reply received");
}

/*
 * Multi-queue: two queue pairs and the control queue. The driver turns on both pairs
 * (VQ_PAIRS_SET 2; an out-of-range count is refused), sends a ping on each pair's tx queue
 * (byte 24 = the pair), and counts the host's UDP frames ("cairn-mq", many flows) per rx queue:
 * the tap spreads flows over the attached queues, so both rx queues must see some.
 */
static struct vq mq_rx[2], mq_tx[2], ctrlq;
static u8 mq_rxbuf[2][8][2048] __attribute__((aligned(4096)));
static u8 mq_txbuf[2][128];
static u8 ctrl_hdr[2], ctrl_data[2], ctrl_ack;

static int ctrl_pairs_set(u16 index, u16 n) {
    ctrl_hdr[0] = 4; /* VIRTIO_NET_CTRL_MQ */
    ctrl_hdr[1] = 0; /* VQ_PAIRS_SET */
    ctrl_data[0] = (u8)n;
    ctrl_data[1] = (u8)(n >> 8);
    ctrl_ack = 0xff;
    ctrlq.desc[0] = (struct vdesc){(u64)(usize)ctrl_hdr, 2, 1, 1};
    ctrlq.desc[1] = (struct vdesc){(u64)(usize)ctrl_data, 2, 1, 2};
    ctrlq.desc[2] = (struct vdesc){(u64)(usize)&ctrl_ack, 1, 2, 0};
    u16 h = 0;
    if (!submit_wait(&ctrlq, index, &h, 1)) return -1;
    return ctrl_ack;
}

static void run_net_mq(void) {
    struct vdev d;
    int slot = find_device(0x1041);
    check(slot > 0, "pci-find-net", "no virtio-net");
    if (slot <= 0) return;
    check(probe(slot, &d), "net-caps", "missing capabilities");
    msix_setup(&d, 6, 0x60);
    /* VERSION_1 | MAC | CTRL_VQ | MQ */
    u64 want = (1ull << 32) | (1 << 5) | (1 << 17) | (1 << 22);
    check(negotiate(&d, want) && d.features == want, "net-mq-features", "MQ/CTRL_VQ not offered");
    u16 pairs = mmio_r16(d.device + 8);
    puts("net-max-pairs ");
    put_dec(pairs);
    puts("\n");
    check(pairs >= 2 && mmio_r16(d.common + 0x12) == 2 * pairs + 1, "net-mq-pairs", "fewer than 2 pairs or wrong queue count");
    if (pairs < 2) return;
    u16 ctrl = (u16)(2 * pairs);
    int ok = 1;
    for (u16 p = 0; p < 2; p++)
        ok = ok && queue_setup(&d, &mq_rx[p], (u16)(2 * p), (u16)(1 + 2 * p)) &&
             queue_setup(&d, &mq_tx[p], (u16)(2 * p + 1), (u16)(2 + 2 * p));
    ok = ok && queue_setup(&d, &ctrlq, ctrl, 5);
    check(ok, "net-mq-queues", "queue setup failed");
    check(driver_ok(&d), "net-driver-ok", "needs reset");
    check(ctrl_pairs_set(ctrl, 2) == 0, "net-mq-ctrl-set", "VQ_PAIRS_SET 2 not acknowledged");
    check(ctrl_pairs_set(ctrl, (u16)(pairs + 1)) == 1, "net-mq-ctrl-refused", "too many pairs accepted");
    u8 mac[6];
    for (int i = 0; i < 6; i++) mac[i] = mmio_r8(d.device + i);
    for (int p = 0; p < 2; p++) {
        for (u16 i = 0; i < 8; i++) {
            mq_rx[p].desc[i] = (struct vdesc){(u64)(usize)mq_rxbuf[p][i], 2048, 2, 0};
            mq_rx[p].avail.ring[i] = i;
        }
        mb();
        mq_rx[p].avail.idx = 8;
        mb();
        mmio_w16(mq_rx[p].notify_addr, (u16)(2 * p));
    }
    int sent = 0;
    for (int p = 0; p < 2; p++) {
        u8 *f = mq_txbuf[p] + 12;
        memset(mq_txbuf[p], 0, sizeof(mq_txbuf[p]));
        memset(f, 0xff, 6);
        memcpy(f + 6, mac, 6);
        f[12] = 0x88;
        f[13] = 0xb5;
        memcpy(f + 14, "cairn-ping", 10);
        f[24] = (u8)p;
        mq_tx[p].desc[0] = (struct vdesc){(u64)(usize)mq_txbuf[p], 12 + 60, 0, 0};
        u16 h = 0;
        sent += submit_wait(&mq_tx[p], (u16)(2 * p + 1), &h, 1);
    }
    check(sent == 2, "net-mq-tx-both", "a pair's tx queue did not complete");
    int got[2] = {0, 0};
    for (u64 spin = 0; spin < 4000000000ull && (!got[0] || !got[1]) && got[0] + got[1] < 64; spin++) {
        int idle = 1;
        for (int p = 0; p < 2; p++) {
            struct vq *q = &mq_rx[p];
            barrier();
            if (*(volatile u16 *)&q->used.idx == q->last_used) continue;
            idle = 0;
            u32 id = q->used.ring[q->last_used % QSZ].id;
            q->last_used++;
            if (id >= 8) { spin = ~0ull - 1; break; }
            u8 *r = mq_rxbuf[p][id] + 12;
            if (r[12] == 0x08 && r[13] == 0x00 && !memcmp(r + 14 + 28, "cairn-mq", 8)) got[p]++;
            q->avail.ring[q->avail.idx % QSZ] = (u16)id;
            mb();
            q->avail.idx++;
            mb();
            mmio_w16(q->notify_addr, (u16)(2 * p));
        }
        if (idle) __asm__ volatile("pause");
    }
    puts("net-mq-rx ");
    put_dec((u64)got[0]);
    puts(" ");
    put_dec((u64)got[1]);
    puts("\n");
    check(got[0] > 0 && got[1] > 0, "net-mq-rx-both", "received flows did not reach both rx queues");
}

static struct vq conrx, contx;
static u8 conin[64], conout[64];

/* Writes a line on the virtio-console and waits for "ping" from the host. */
static void run_console(void) {
    struct vdev d;
    int slot = find_device(0x1043);
    check(slot > 0, "pci-find-console", "no virtio-console");
    if (slot <= 0) return;
    check(probe(slot, &d), "con-caps", "missing capabilities");
    msix_setup(&d, 3, 0x70);
    check(negotiate(&d, 1ull << 32), "con-features", "FEATURES_OK refused");
    check(queue_setup(&d, &conrx, 0, 1) && queue_setup(&d, &contx, 1, 2), "con-queues", "queue setup failed");
    check(driver_ok(&d), "con-driver-ok", "needs reset");
    static const char msg[] = "hello virtio-console\n";
    memcpy(conout, msg, sizeof(msg) - 1);
    contx.desc[0] = (struct vdesc){(u64)(usize)conout, (u32)(sizeof(msg) - 1), 0, 0};
    u16 h = 0;
    check(submit_wait(&contx, 1, &h, 1), "con-tx", "tx not completed");
    conrx.desc[0] = (struct vdesc){(u64)(usize)conin, sizeof(conin), 2, 0};
    int ok = submit_wait(&conrx, 0, &h, 1);
    u32 len = conrx.used.ring[0].len;
    check(ok && len >= 4 && !memcmp(conin, "ping", 4), "con-rx", "no input from host");
}

/*
 * The driver lets go of the device in `slot` before ejecting it (what Linux does on an eject
 * request): device reset (status 0, which drains the host side), then memory and bus master off.
 */
int virtio_release_slot(int slot) {
    struct vdev d;
    if (!probe(slot, &d)) return 0;
    mmio_w8(d.common + 0x14, 0);
    int reset = mmio_r8(d.common + 0x14) == 0;
    pci_w16(slot, 4, 0);
    return reset;
}

/* After a re-attach: the pattern written before the detach is still on the disk. */
void run_blk_verify_again(const char *cmdline) {
    u64 capacity = blk_init(0);
    if (!capacity) return;
    check(rw_batch(BATCH, 0, arg_u64(cmdline, "base", 2048), arg_u64(cmdline, "seed", 1), 1),
          "blk-verify-after-reattach", "data differs after detach + attach");
}

/* For bar.c: the virtio-blk driver's queue 0, driven through whatever notify address is given. */
u64 virtio_blk_init(void) { return blk_init(0); }
int blk_rw(int n, u32 type, u64 first_sector, u64 seed) { return rw_batch(n, type, first_sector, seed, type == 0); }
u64 blk_notify_addr(void) { return bq->notify_addr; }
void blk_set_notify_addr(u64 a) { bq->notify_addr = a; }

/* Publishes n reads of the pattern blocks at first_sector and writes the notify to `notify`. */
void blk_post_reads(int n, u64 first_sector, u64 notify) {
    u16 heads[BATCH];
    if (n > BATCH) n = BATCH;
    for (int i = 0; i < n; i++) {
        memset(data[i], 0xAA, 4096);
        heads[i] = build_req(i, 0, first_sector + 8 * (u64)i, data[i], 4096, 1);
    }
    for (int i = 0; i < n; i++) bq->avail.ring[(bq->avail.idx + i) % QSZ] = heads[i];
    bq->avail.used_event = bq->last_used;
    mb();
    bq->avail.idx += (u16)n;
    mb();
    mmio_w16(notify, bq_index);
}

/* Whether the n posted reads completed within `spins` polls; if so, whether they match `seed`. */
int blk_reap_reads(int n, u64 spins, u64 first_sector, u64 seed) {
    u16 target = (u16)(bq->last_used + n);
    u64 spin = 0;
    while (*(volatile u16 *)&bq->used.idx != target) {
        if (++spin > spins) return 0;
        __asm__ volatile("pause");
    }
    bq->last_used = target;
    u8 expect[4096];
    for (int i = 0; i < n; i++) {
        pattern(expect, seed, first_sector + 8 * (u64)i);
        if (status[i] != 0 || memcmp(expect, data[i], 4096)) return -1;
    }
    return 1;
}

int run_pci_tests(const char *cmdline) {
    int host = find_device(0) ;
    (void)host;
    check(pci_r32(0, 0) != 0xffffffffu, "pci-host-bridge", "no device at 00:00.0");
    check(pci_r32(31, 0) == 0xffffffffu || pci_r32(31, 0) != 0, "pci-empty-slot", "");
    if (has_word(cmdline, "blk") || has_word(cmdline, "blk-write") || has_word(cmdline, "blk-verify") || has_word(cmdline, "blk-mq") || has_word(cmdline, "blk-reset")) run_blk(cmdline);
    if (has_word(cmdline, "rng")) run_rng();
    if (has_word(cmdline, "net")) run_net();
    if (has_word(cmdline, "net-offload")) run_net_offload();
    if (has_word(cmdline, "net-mq")) run_net_mq();
    if (has_word(cmdline, "console")) run_console();
    if (has_word(cmdline, "bench-read") || has_word(cmdline, "bench-write")) run_bench(cmdline);
    return failures;
}
