//! Fuzzes the virtio-blk descriptor-chain walker and request parser: the input supplies up to
//! 16 descriptors (addr, len, writable) and the guest memory contents they point into.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};
use vmm::backend::{DiskBackend, RamDisk};
use vmm::memory::GuestMemoryMmap;
use vmm::stats::DeviceCounters;
use vmm::virtio::blk::{BlkQueueHandler, Chain};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
    let n = usize::from(data[0] % 16);
    let (descs, rest) = data[1..].split_at((n * 13).min(data.len() - 1));
    let _ = mem.write_slice(&rest[..rest.len().min(1 << 16)], GuestAddress(0));
    let iter = descs.chunks_exact(13).map(|c| {
        let addr = u64::from_le_bytes(c[0..8].try_into().unwrap()) % (2 << 20);
        let len = u32::from_le_bytes(c[8..12].try_into().unwrap()) % (1 << 17);
        (addr, len, c[12] & 1 == 1)
    });
    let backend: Arc<dyn DiskBackend> = Arc::new(RamDisk::new(1 << 20));
    let mut h = BlkQueueHandler::new(
        backend,
        mem.clone(),
        "fuzz",
        Arc::new(DeviceCounters::default()),
    );
    if let Ok(chain) = Chain::walk(&mem, iter) {
        let out = h.execute(&chain);
        assert!(out.status <= 2);
    }
});
