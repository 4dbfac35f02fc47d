/* The test guests' virtio-pci (modern) driver pieces shared between test files (virtio.c). */
#ifndef VIRTIO_H
#define VIRTIO_H
#include "guest.h"

#define QSZ 128

struct vdesc { u64 addr; u32 len; u16 flags; u16 next; };
struct vdev {
    int slot;
    u64 common, notify, isr, device;
    u32 notify_mult;
    u64 msix_table;
    int msix_cap;
    u64 features;
};
struct vq {
    struct vdesc desc[QSZ] __attribute__((aligned(4096)));
    struct { u16 flags, idx, ring[QSZ], used_event; } avail __attribute__((aligned(4096)));
    struct { u16 flags, idx; struct { u32 id, len; } ring[QSZ]; u16 avail_event; } used __attribute__((aligned(4096)));
    u16 last_used;
    u64 notify_addr;
};

/* Finds the capabilities of the virtio function in `slot` and turns on memory decode. */
int probe(int slot, struct vdev *d);
/* Points `nvec` MSI-X vectors at the LAPIC (vector_base + i) and enables MSI-X. */
void msix_setup(struct vdev *d, int nvec, u8 vector_base);
/* Reset, ACKNOWLEDGE, DRIVER, features & wanted, FEATURES_OK; 1 if the device accepted. */
int negotiate(struct vdev *d, u64 wanted);
/* Queue `index` of QSZ entries at q with MSI-X `vector`; 1 on success. */
int queue_setup(struct vdev *d, struct vq *q, u16 index, u16 vector);
/* The same with `size` (<= QSZ) entries, for queues the device keeps small (QEMU's control
 * queue has 64). */
int queue_setup_sized(struct vdev *d, struct vq *q, u16 index, u16 vector, u16 size);
/* DRIVER_OK; 1 unless the device asks for a reset. */
int driver_ok(struct vdev *d);

#endif
