//! Fuzzes a whole virtio-blk queue as the guest controls it: the input is guest memory holding
//! the descriptor table, avail ring, used ring and buffers, so virtio-queue's chain walker
//! (loops, indirect tables, wrap-around indexes) and our request handling see arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm::backend::{DiskBackend, RamDisk};
use vmm::memory::GuestMemoryMmap;
use vmm::stats::DeviceCounters;
use vmm::virtio::blk::BlkQueueHandler;

const MEM: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap());
    // Queue size from the input (a power of two up to 256); rings at fixed addresses.
    let size = 1u16 << (data[0] % 9);
    let event_idx = data[1] & 1 == 1;
    let _ = mem.write_slice(&data[2..data.len().min(MEM)], GuestAddress(0));
    let mut q = match Queue::new(256) {
        Ok(q) => q,
        Err(_) => return,
    };
    q.set_size(size);
    q.set_desc_table_address(Some(0x0), Some(0));
    q.set_avail_ring_address(Some(0x1000), Some(0));
    q.set_used_ring_address(Some(0x2000), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    if !q.is_valid(&*mem) {
        return;
    }
    let backend: Arc<dyn DiskBackend> = Arc::new(RamDisk::new(1 << 20));
    let mut h = BlkQueueHandler::new(backend, mem, "fuzz", Arc::new(DeviceCounters::default()));
    // Must return (the avail index bounds the work) and never panic.
    let _ = h.process_queue(&mut q);
});
