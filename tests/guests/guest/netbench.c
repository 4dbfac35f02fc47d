/*
 * virtio-net transmit throughput for `cairn bench vmm` ("bench-net pairs=N frames=M len=L"):
 * with N queue pairs (N > 1 turns on MQ and sets the pair count through the control queue),
 * keep every pair's tx queue full of L-byte frames (ethertype 0x88b5, which the host stack
 * drops) until M frames are done in total, serving the queues round-robin from this one vCPU.
 * Completions are polled (no interrupts); notifications go out only when the device asks
 * (event index). Prints "bench net-tx pairs=N frames=M bytes=B tsc=T errors=E" (E: frames never
 * completed because the device stalled).
 */
#include "virtio.h"

#define MAXP 8
#define NO_VECTOR 0xffff
#define F_MAC (1ull << 5)
#define F_CTRL_VQ (1ull << 17)
#define F_MQ (1ull << 22)
#define F_EVENT_IDX (1ull << 29)
#define F_VERSION_1 (1ull << 32)

static struct vq txq[MAXP], rxq[MAXP], ctlq;
static u8 frame[2048] __attribute__((aligned(4096)));
static u8 ctl_hdr[2], ctl_data[2], ctl_ack;

static int notify_needed(u16 event, u16 new_idx, u16 old_idx) {
    return (u16)(new_idx - event - 1) < (u16)(new_idx - old_idx);
}

static int set_pairs(u16 index, u16 n) {
    ctl_hdr[0] = 4; /* VIRTIO_NET_CTRL_MQ */
    ctl_hdr[1] = 0; /* VQ_PAIRS_SET */
    ctl_data[0] = (u8)n;
    ctl_data[1] = (u8)(n >> 8);
    ctl_ack = 0xff;
    ctlq.desc[0] = (struct vdesc){(u64)(usize)ctl_hdr, 2, 1, 1};
    ctlq.desc[1] = (struct vdesc){(u64)(usize)ctl_data, 2, 1, 2};
    ctlq.desc[2] = (struct vdesc){(u64)(usize)&ctl_ack, 1, 2, 0};
    ctlq.avail.ring[0] = 0;
    mb();
    ctlq.avail.idx = 1;
    mb();
    mmio_w16(ctlq.notify_addr, index);
    for (u64 spin = 0; spin < 2000000000ull; spin++) {
        barrier();
        if (*(volatile u16 *)&ctlq.used.idx == 1) return ctl_ack;
        __asm__ volatile("pause");
    }
    return -1;
}

void run_net_bench(const char *cmdline) {
    u64 pairs = arg_u64(cmdline, "pairs", 1), total = arg_u64(cmdline, "frames", 100000);
    u64 len = arg_u64(cmdline, "len", 1514);
    if (pairs < 1) pairs = 1;
    if (pairs > MAXP) pairs = MAXP;
    if (len < 60) len = 60;
    if (len > 1514) len = 1514;
    struct vdev d;
    int slot = find_device(0x1041);
    if (slot <= 0 || !probe(slot, &d)) {
        check(0, "netbench-probe", "no virtio-net");
        return;
    }
    u64 want = F_VERSION_1 | F_MAC | F_EVENT_IDX | (pairs > 1 ? F_CTRL_VQ | F_MQ : 0);
    if (!negotiate(&d, want) || d.features != want) {
        check(0, "netbench-features", "features refused");
        return;
    }
    u16 max = pairs > 1 ? mmio_r16(d.device + 8) : 1;
    int ok = pairs <= max;
    for (u16 p = 0; ok && p < pairs; p++)
        ok = queue_setup(&d, &rxq[p], (u16)(2 * p), NO_VECTOR) &&
             queue_setup(&d, &txq[p], (u16)(2 * p + 1), NO_VECTOR);
    if (ok && pairs > 1) ok = queue_setup_sized(&d, &ctlq, (u16)(2 * max), NO_VECTOR, 16);
    ok = ok && driver_ok(&d);
    if (ok && pairs > 1) ok = set_pairs((u16)(2 * max), (u16)pairs) == 0;
    check(ok, "netbench-setup", "queues, DRIVER_OK or pair count refused");
    if (!ok) return;

    memset(frame, 0, sizeof(frame));
    u8 *f = frame + 12; /* after the virtio-net header (all zero: no offloads) */
    memset(f, 0xff, 6);
    for (int i = 0; i < 6; i++) f[6 + i] = mmio_r8(d.device + i);
    f[12] = 0x88;
    f[13] = 0xb5;
    memcpy(f + 14, "cairn-bench", 11);
    for (u16 p = 0; p < pairs; p++)
        for (u16 i = 0; i < QSZ; i++) txq[p].desc[i] = (struct vdesc){(u64)(usize)frame, (u32)(12 + len), 0, 0};

    u64 submitted = 0, completed = 0, stall = 0;
    u64 t0 = rdtsc();
    for (u16 p = 0; p < pairs; p++) {
        struct vq *q = &txq[p];
        u16 n = 0;
        for (; n < QSZ && submitted < total; n++, submitted++) q->avail.ring[n] = n;
        q->avail.used_event = (u16)(q->last_used - 1); /* no interrupts: we poll */
        mb();
        q->avail.idx = n;
        mb();
        mmio_w16(q->notify_addr, (u16)(2 * p + 1));
    }
    while (completed < total) {
        int idle = 1;
        for (u16 p = 0; p < pairs; p++) {
            struct vq *q = &txq[p];
            barrier();
            u16 used = *(volatile u16 *)&q->used.idx;
            if (used == q->last_used) continue;
            idle = 0;
            u16 old = q->avail.idx, added = 0;
            while (q->last_used != used) {
                u32 id = q->used.ring[q->last_used % QSZ].id;
                q->last_used++;
                completed++;
                if (submitted < total && id < QSZ) {
                    q->avail.ring[(u16)(old + added) % QSZ] = (u16)id;
                    added++;
                    submitted++;
                }
            }
            if (added) {
                q->avail.used_event = (u16)(q->last_used - 1);
                mb();
                q->avail.idx = (u16)(old + added);
                mb();
                if (notify_needed(*(volatile u16 *)&q->used.avail_event, q->avail.idx, old))
                    mmio_w16(q->notify_addr, (u16)(2 * p + 1));
            }
        }
        if (!idle) {
            stall = 0;
        } else if (++stall > 2000000000ull) {
            break; /* the device stopped taking frames: report what was done */
        } else {
            __asm__ volatile("pause");
        }
    }
    u64 t1 = rdtsc();
    puts("bench net-tx pairs=");
    put_dec(pairs);
    puts(" frames=");
    put_dec(completed);
    puts(" bytes=");
    put_dec(completed * len);
    puts(" tsc=");
    put_dec(t1 - t0);
    puts(" errors=");
    put_dec(total - completed);
    puts("\n");
}
