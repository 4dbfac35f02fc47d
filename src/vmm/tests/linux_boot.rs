//! Linux boot protocol with the host's Debian kernel and initrd: the loader must produce a
//! correct zero page, and where KVM can run Linux (not PVM) the kernel must boot and print to
//! the console. Under PVM the boot half reports itself skipped.

use std::path::Path;
use vm_memory::{Bytes, GuestAddress};
use vmm::boot::{self, BootConfig, BootEntry, E820_RAM};
use vmm::layout::{CMDLINE_START, ZERO_PAGE_START};
use vmm::memory::{create_memory, ram_ranges};

fn host_kernel() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let dir = std::fs::read_dir("/boot").ok()?;
    let mut kernels: Vec<_> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("vmlinuz-"))
        .collect();
    kernels.sort();
    let k = kernels.pop()?;
    let initrd = Path::new("/boot").join(
        k.file_name()?
            .to_string_lossy()
            .replace("vmlinuz", "initrd.img"),
    );
    initrd.exists().then_some((k, initrd))
}

#[test]
fn bzimage_zero_page_initrd_and_e820() {
    let Some((kernel, initrd)) = host_kernel() else {
        println!("skipped: no /boot/vmlinuz-* with a matching initrd on this host");
        return;
    };
    let mem = create_memory(&ram_ranges(512 << 20).unwrap()).unwrap();
    let cmdline = "console=ttyS0 reboot=k panic=1";
    let cfg = BootConfig {
        kernel,
        initrd: Some(initrd.clone()),
        cmdline: cmdline.into(),
    };
    let entry = boot::load(&mem, &cfg, 2).unwrap();
    let BootEntry::Linux64 { entry, zero_page } = entry else {
        panic!("bzImage must use the Linux protocol")
    };
    assert_eq!(zero_page, ZERO_PAGE_START);
    assert_eq!(
        entry,
        0x10_0000 + 0x200,
        "64-bit entry of a bzImage loaded at 1 MiB"
    );
    let zp = |off: u64| ZERO_PAGE_START + off;
    let boot_flag: u16 = mem.read_obj(GuestAddress(zp(0x1fe))).unwrap();
    let header: u32 = mem.read_obj(GuestAddress(zp(0x202))).unwrap();
    let loader: u8 = mem.read_obj(GuestAddress(zp(0x210))).unwrap();
    let cmd_ptr: u32 = mem.read_obj(GuestAddress(zp(0x228))).unwrap();
    let ramdisk_image: u32 = mem.read_obj(GuestAddress(zp(0x218))).unwrap();
    let ramdisk_size: u32 = mem.read_obj(GuestAddress(zp(0x21c))).unwrap();
    let e820_entries: u8 = mem.read_obj(GuestAddress(zp(0x1e8))).unwrap();
    assert_eq!(boot_flag, 0xaa55);
    assert_eq!(header, 0x5372_6448, "HdrS");
    assert_eq!(loader, 0xff);
    assert_eq!(u64::from(cmd_ptr), CMDLINE_START);
    let mut cl = vec![0u8; cmdline.len()];
    mem.read_slice(&mut cl, GuestAddress(CMDLINE_START))
        .unwrap();
    assert_eq!(cl, cmdline.as_bytes());
    assert_eq!(
        u64::from(ramdisk_size),
        std::fs::metadata(&initrd).unwrap().len()
    );
    assert_eq!(ramdisk_image % 4096, 0);
    assert!(u64::from(ramdisk_image) + u64::from(ramdisk_size) <= 512 << 20);
    let mut first = [0u8; 4];
    mem.read_slice(&mut first, GuestAddress(u64::from(ramdisk_image)))
        .unwrap();
    let mut want = [0u8; 4];
    std::io::Read::read_exact(&mut std::fs::File::open(&initrd).unwrap(), &mut want).unwrap();
    assert_eq!(first, want, "initrd bytes are in guest memory");
    assert!(e820_entries >= 3);
    let e820_0: (u64, u64, u32) = (
        mem.read_obj(GuestAddress(zp(0x2d0))).unwrap(),
        mem.read_obj(GuestAddress(zp(0x2d8))).unwrap(),
        mem.read_obj(GuestAddress(zp(0x2e0))).unwrap(),
    );
    assert_eq!(e820_0, (0, 0x9fc00, E820_RAM));
}

#[test]
fn linux_guest_boots_to_console() {
    if !vmm::kvm_available() {
        println!("skipped: /dev/kvm not available");
        return;
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        println!("skipped: KVM here is PVM, which cannot run an unmodified Linux guest");
        return;
    }
    let Some((kernel, initrd)) = host_kernel() else {
        println!("skipped: no /boot/vmlinuz-* with a matching initrd on this host");
        return;
    };
    let boot = BootConfig {
        kernel,
        initrd: Some(initrd),
        cmdline: "console=ttyS0 reboot=k panic=-1 rdinit=/bin/false".into(),
    };
    let mut cfg = vmm::VmConfig::new("linux", boot);
    cfg.memory_bytes = 512 << 20;
    let mut vm = vmm::Vm::create(cfg).unwrap();
    vm.start().unwrap();
    // The kernel panics (rdinit fails) and reboots through the i8042 after printing its banner.
    let reason = vm.wait_exit(std::time::Duration::from_secs(120));
    let console = String::from_utf8_lossy(&vm.console_output()).into_owned();
    vm.delete();
    assert!(console.contains("Linux version"), "console: {console}");
    assert!(reason.is_some(), "the guest did not stop: {console}");
}
