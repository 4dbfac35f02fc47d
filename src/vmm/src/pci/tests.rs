//! BAR relocation through the PCI root on a real KVM VM (no vCPU needed): config writes through
//! 0xCF8/0xCFC move a virtio device on the MMIO bus, its notify ioeventfds follow, and unusable
//! addresses (size probe, outside the window, onto another device, decode off) leave it
//! unreachable without failing anything.

use super::*;
use crate::bus::BusDevice;
use crate::virtio::pci::{BAR_SIZE, NOTIFY};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch};
use vmm_sys_util::eventfd::EventFd;

struct Rig {
    vm: Arc<VmFd>,
    root: Arc<PciRoot>,
    mmio: Arc<Bus>,
    cfg: PciConfigIo,
    devs: Vec<Arc<VirtioPciDevice>>,
}

fn rig() -> Option<Rig> {
    let Ok(kvm) = Kvm::new() else {
        println!("skipped: /dev/kvm not available");
        return None;
    };
    let vm = Arc::new(crate::machine::create_vm(&kvm).expect("create_vm"));
    vm.create_irq_chip().expect("irqchip");
    let mem = Arc::new(
        crate::memory::create_memory(&crate::memory::ram_ranges(16 << 20).unwrap()).unwrap(),
    );
    let router = Arc::new(msix::GsiRouter::new(vm.clone()));
    let threads = crate::virtio::ThreadEnv {
        seccomp: false,
        cpu: Arc::new(crate::stats::ThreadCpu::default()),
    };
    let root = Arc::new(PciRoot::new());
    let mmio = Arc::new(Bus::new());
    let disk = crate::config::DiskConfig {
        id: "d0".into(),
        backend: Arc::new(crate::RamDisk::new(1 << 20)),
        queues: 1,
        queue_size: 64,
    };
    let devices: Vec<Box<dyn crate::virtio::VirtioDevice>> = vec![
        Box::new(crate::virtio::blk::Blk::new(&disk)),
        Box::<crate::virtio::rng::Rng>::default(),
    ];
    let mut devs = Vec::new();
    for (i, dev) in devices.into_iter().enumerate() {
        let slot = i + 1;
        let d = VirtioPciDevice::new(
            format!("dev{slot}"),
            dev,
            hotplug::bar_of(slot),
            vm.clone(),
            &mmio,
            mem.clone(),
            router.clone(),
            threads.clone(),
        )
        .unwrap();
        root.slots.write()[slot] = Some(d.clone());
        devs.push(d);
    }
    Some(Rig {
        vm,
        cfg: PciConfigIo(root.clone()),
        root,
        mmio,
        devs,
    })
}

impl Rig {
    fn cw32(&self, slot: u32, off: u32, v: u32) {
        self.cfg
            .write(0, 0, &(0x8000_0000 | (slot << 11) | off).to_le_bytes());
        self.cfg.write(0, 4, &v.to_le_bytes());
    }

    fn cr32(&self, slot: u32, off: u32) -> u32 {
        self.cfg
            .write(0, 0, &(0x8000_0000 | (slot << 11) | off).to_le_bytes());
        let mut b = [0u8; 4];
        self.cfg.read(0, 4, &mut b);
        u32::from_le_bytes(b)
    }

    fn move_bar(&self, slot: u32, addr: u64) {
        self.cw32(slot, 0x10, addr as u32);
        self.cw32(slot, 0x14, (addr >> 32) as u32);
    }

    fn r32(&self, addr: u64) -> u32 {
        let mut b = [0u8; 4];
        self.mmio.read(addr, &mut b);
        u32::from_le_bytes(b)
    }

    /// Whether an ioeventfd already sits on `addr`: KVM refuses a second wildcard one there.
    fn notify_registered(&self, bar: u64) -> bool {
        let addr = IoEventAddress::Mmio(bar + NOTIFY);
        let fd = EventFd::new(0).unwrap();
        match self.vm.register_ioevent(&fd, &addr, NoDatamatch) {
            Ok(()) => {
                self.vm.unregister_ioevent(&fd, &addr, NoDatamatch).unwrap();
                false
            }
            Err(e) => {
                assert_eq!(e.errno(), libc::EEXIST, "{e}");
                true
            }
        }
    }

    /// virtio common config: device_feature (select 0) of whatever decodes at `bar`.
    fn features_at(&self, bar: u64) -> u32 {
        self.mmio.write(bar, &0u32.to_le_bytes());
        self.r32(bar + 4)
    }
}

#[test]
fn bar_follows_config_writes_with_its_ioeventfds() {
    let Some(r) = rig() else {
        return;
    };
    let blk = &r.devs[0];
    let home = hotplug::bar_of(1);
    let moved = layout::MMIO_START + 0x1000_0000;

    // Reset state: assigned but not decoding, nothing on the bus, no ioeventfd.
    assert_eq!(r.cr32(1, 0x10), home as u32 | 0x4, "64-bit memory BAR");
    assert_eq!(blk.bar_address(), None);
    assert_eq!(r.r32(home), 0xffff_ffff);
    assert!(!r.notify_registered(home));

    r.cw32(1, 0x04, 0x6); // memory decode + bus master
    assert_eq!(blk.bar_address(), Some(home));
    assert!(r.notify_registered(home));
    let blk_features = r.features_at(home);
    assert_ne!(blk_features, 0xffff_ffff);
    assert_ne!(blk_features & (1 << 9), 0, "virtio-blk offers FLUSH");

    // Size probe with decode left on: reads back the size, the BAR is briefly unusable.
    r.cw32(1, 0x10, 0xffff_ffff);
    r.cw32(1, 0x14, 0xffff_ffff);
    let size = !((u64::from(r.cr32(1, 0x14)) << 32) | u64::from(r.cr32(1, 0x10) & !0xf)) + 1;
    assert_eq!(size, BAR_SIZE);
    assert_eq!(blk.bar_address(), None);
    assert!(!r.notify_registered(home));

    // Program a new address: the device and its ioeventfd are there, and only there.
    r.move_bar(1, moved);
    assert_eq!(blk.bar_address(), Some(moved));
    assert_eq!(r.features_at(moved), blk_features);
    assert_eq!(r.r32(home), 0xffff_ffff);
    assert!(r.notify_registered(moved));
    assert!(!r.notify_registered(home));

    // Decode off: unreachable, writes go nowhere; back on: same place, state kept.
    r.mmio.write(moved + 0x16, &[0]); // queue_select 0
    r.cw32(1, 0x04, 0x4);
    assert_eq!(blk.bar_address(), None);
    assert_eq!(r.r32(moved), 0xffff_ffff);
    assert!(!r.notify_registered(moved));
    r.mmio.write(moved + 0x16, &[5]);
    r.cw32(1, 0x04, 0x6);
    assert_eq!(blk.bar_address(), Some(moved));
    let mut qs = [0u8; 2];
    r.mmio.read(moved + 0x16, &mut qs);
    assert_eq!(qs, [0, 0], "the write with decode off was ignored");

    // The upper half counts: the same low half above 4 GiB is outside the window.
    r.cw32(1, 0x14, 1);
    assert_eq!(blk.bar_address(), None);
    assert!(!r.notify_registered(moved));
    r.cw32(1, 0x14, 0);
    assert_eq!(blk.bar_address(), Some(moved));

    // Outside the window (ECAM, LAPIC, RAM): refused, nothing else disturbed.
    for bad in [layout::PCI_ECAM_START, layout::LAPIC_START, 0x10_0000] {
        r.move_bar(1, bad);
        assert_eq!(blk.bar_address(), None, "{bad:#x}");
    }
    r.move_bar(1, moved);
    assert_eq!(blk.bar_address(), Some(moved));
}

#[test]
fn overlapping_bars_stay_off_until_the_range_is_free() {
    let Some(r) = rig() else {
        return;
    };
    let (blk, rng) = (&r.devs[0], &r.devs[1]);
    let rng_home = hotplug::bar_of(2);
    r.cw32(1, 0x04, 0x2);
    r.cw32(2, 0x04, 0x2);
    let rng_features = r.features_at(rng_home);
    assert_eq!(rng.bar_address(), Some(rng_home));

    // blk onto rng's range: rng keeps it, blk is off the bus.
    r.move_bar(1, rng_home);
    assert_eq!(blk.bar_address(), None);
    assert_eq!(rng.bar_address(), Some(rng_home));
    assert_eq!(r.features_at(rng_home), rng_features);
    // The neighbouring range is free and works; back onto rng's: off again.
    r.move_bar(1, rng_home + BAR_SIZE);
    assert_eq!(blk.bar_address(), Some(rng_home + BAR_SIZE));
    r.move_bar(1, rng_home);
    assert_eq!(blk.bar_address(), None);

    // rng moves away: blk takes the freed range at once, with its ioeventfd.
    let away = layout::MMIO_START + 0x0800_0000;
    r.move_bar(2, away);
    assert_eq!(rng.bar_address(), Some(away));
    assert_eq!(blk.bar_address(), Some(rng_home));
    assert_ne!(r.features_at(rng_home), rng_features);
    assert!(r.notify_registered(rng_home));

    // Hot-unplug takes blk off for good, wherever it is.
    let taken = r.root.slots.write()[1].take().unwrap();
    taken.detach_bars();
    assert_eq!(blk.bar_address(), None);
    assert!(!r.notify_registered(rng_home));
    assert!(!taken.sync_bars());
    assert_eq!(r.r32(rng_home), 0xffff_ffff);
}

/// A disk hot-added after the guest moved another BAR onto the new slot's default address
/// gets a free address instead, and decodes there once the guest turns decode on.
#[test]
fn hot_add_avoids_a_range_the_guest_took() {
    let Ok(kvm) = Kvm::new() else {
        println!("skipped: /dev/kvm not available");
        return;
    };
    let vm = Arc::new(crate::machine::create_vm(&kvm).expect("create_vm"));
    vm.create_irq_chip().expect("irqchip");
    let mem = Arc::new(
        crate::memory::create_memory(&crate::memory::ram_ranges(16 << 20).unwrap()).unwrap(),
    );
    let disk = |id: &str| crate::config::DiskConfig {
        id: id.into(),
        backend: Arc::new(crate::RamDisk::new(1 << 20)),
        queues: 1,
        queue_size: 64,
    };
    let boot = crate::BootConfig {
        kernel: "unused".into(),
        initrd: None,
        cmdline: String::new(),
    };
    let mut cfg = VmConfig::new("bars", boot);
    cfg.disks.push(disk("a"));
    let (pio, mmio) = (Arc::new(Bus::new()), Arc::new(Bus::new()));
    let cpu = Arc::new(crate::stats::ThreadCpu::default());
    let mut setup = PciSetup::build(&cfg, &vm, &mem, &pio, &mmio, &cpu).unwrap();
    let cfgio = PciConfigIo(setup.wiring.as_ref().unwrap().root.clone());
    let cw32 = |slot: u32, off: u32, v: u32| {
        cfgio.write(0, 0, &(0x8000_0000 | (slot << 11) | off).to_le_bytes());
        cfgio.write(0, 4, &v.to_le_bytes());
    };
    // The guest moves disk "a" (slot 1) onto slot 2's default BAR address.
    let taken = hotplug::bar_of(2);
    cw32(1, 0x10, taken as u32);
    cw32(1, 0x04, 0x2);
    assert_eq!(setup.bar_of("a"), Some(taken));

    setup.hot_add_disk(&disk("b")).unwrap();
    assert_eq!(setup.slot_of("b"), Some(2));
    cw32(2, 0x04, 0x2);
    let b = setup.bar_of("b").expect("b decodes at a free address");
    assert!(
        b + BAR_SIZE <= taken || taken + BAR_SIZE <= b,
        "{b:#x} vs {taken:#x}"
    );
    assert_eq!(setup.bar_of("a"), Some(taken), "a keeps its range");
    setup.shutdown();
}
