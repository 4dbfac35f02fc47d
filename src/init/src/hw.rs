//! What the machine has: CPUs, memory, network links, disks, and what each disk holds (blank,
//! Cairn, other data). Owns the read-only disk classification. Must never write to any device,
//! and must classify anything it cannot read as "other data" (never touched).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;

/// Bytes checked at the start and at the end of a disk (matches the store's blank probe).
const PROBE_BYTES: u64 = 1 << 20;
/// First bytes of a Cairn store superblock.
const CAIRN_MAGIC: &[u8; 8] = b"CAIRNSB1";

/// What a disk holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskKind {
    Blank,
    Cairn,
    Other(String),
}

impl std::fmt::Display for DiskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskKind::Blank => f.write_str("blank (joins the pool)"),
            DiskKind::Cairn => f.write_str("Cairn (pool disk)"),
            DiskKind::Other(why) => write!(f, "other data, never touched ({why})"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Disk {
    pub name: String,
    pub size_bytes: u64,
    pub model: String,
    pub kind: DiskKind,
}

#[derive(Debug, Clone)]
pub struct Nic {
    pub name: String,
    pub mac: String,
    pub link_up: bool,
}

#[derive(Debug, Clone)]
pub struct Inventory {
    pub cpus: usize,
    pub mem_bytes: u64,
    pub nics: Vec<Nic>,
    pub disks: Vec<Disk>,
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn cpus() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0)
        .max(1)
}

fn mem_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// Physical network links (not loopback, VLANs, bridges or tun devices), sorted by name.
pub fn nics() -> Vec<Nic> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/class/net") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let base = format!("/sys/class/net/{name}");
        if name == "lo" || std::fs::metadata(format!("{base}/device")).is_err() {
            continue;
        }
        out.push(Nic {
            mac: read_trim(&format!("{base}/address")),
            link_up: read_trim(&format!("{base}/carrier")) == "1",
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Whether a /sys/block name is a disk the pool may consider (NVMe namespaces, virtio, SCSI/
/// SATA/USB). Partitions, loop, ram, zram, optical and md devices are not.
pub fn is_candidate_disk(name: &str) -> bool {
    let nvme = name.starts_with("nvme") && !name.contains('p');
    nvme || name.starts_with("vd") || name.starts_with("sd")
}

/// Classifies the bytes at the start and end of a disk.
pub fn classify(head: &[u8], tail: &[u8]) -> DiskKind {
    if head.len() >= 8 && &head[..8] == CAIRN_MAGIC {
        return DiskKind::Cairn;
    }
    if head.iter().all(|&b| b == 0) && tail.iter().all(|&b| b == 0) {
        return DiskKind::Blank;
    }
    let what = if head.len() >= 0x8000 + 6 && &head[0x8001..0x8006] == b"CD001" {
        "ISO 9660 image (a boot medium?)"
    } else if head.len() >= 520 && &head[512..520] == b"EFI PART" {
        "GPT partition table"
    } else if head.len() >= 512 && head[510] == 0x55 && head[511] == 0xAA {
        "MBR boot sector or partition table"
    } else if head.len() >= 0x43a && head[0x438] == 0x53 && head[0x439] == 0xEF {
        "ext2/3/4 filesystem"
    } else {
        "non-zero data"
    };
    DiskKind::Other(what.into())
}

/// Reads the first and last [`PROBE_BYTES`] of a block device and classifies it. Read-only.
pub fn probe_disk(path: &str) -> (u64, DiskKind) {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) => return (0, DiskKind::Other(format!("cannot open: {e}"))),
    };
    let size = match crate::sys::block_size_bytes(f.as_raw_fd()) {
        Ok(s) => s,
        Err(e) => return (0, DiskKind::Other(format!("cannot size: {e}"))),
    };
    let n = size.min(PROBE_BYTES) as usize;
    let mut head = vec![0u8; n];
    let mut tail = vec![0u8; n];
    let r = f
        .read_exact(&mut head)
        .and_then(|_| f.seek(SeekFrom::Start(size - n as u64)))
        .and_then(|_| f.read_exact(&mut tail));
    match r {
        Ok(()) => (size, classify(&head, &tail)),
        Err(e) => (size, DiskKind::Other(format!("cannot read: {e}"))),
    }
}

/// Every candidate disk under /sys/block, classified, sorted by name.
pub fn disks() -> Vec<Disk> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !is_candidate_disk(&name) {
            continue;
        }
        let (size_bytes, kind) = probe_disk(&format!("/dev/{name}"));
        let model = read_trim(&format!("/sys/block/{name}/device/model"));
        out.push(Disk {
            name,
            size_bytes,
            model,
            kind,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub fn inventory() -> Inventory {
    Inventory {
        cpus: cpus(),
        mem_bytes: mem_bytes(),
        nics: nics(),
        disks: disks(),
    }
}

/// "1.5 GiB"-style sizes.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_never_calls_data_blank() {
        let zero = vec![0u8; 4096];
        assert_eq!(classify(&zero, &zero), DiskKind::Blank);
        let mut cairn = zero.clone();
        cairn[..8].copy_from_slice(CAIRN_MAGIC);
        assert_eq!(classify(&cairn, &zero), DiskKind::Cairn);
        let mut tail = zero.clone();
        tail[4000] = 1;
        assert!(matches!(classify(&zero, &tail), DiskKind::Other(_)));
        let mut mbr = zero.clone();
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert_eq!(
            classify(&mbr, &zero),
            DiskKind::Other("MBR boot sector or partition table".into())
        );
    }

    #[test]
    fn candidate_disks() {
        assert!(is_candidate_disk("nvme0n1"));
        assert!(!is_candidate_disk("nvme0n1p1"));
        assert!(is_candidate_disk("vda"));
        assert!(!is_candidate_disk("loop0"));
        assert!(!is_candidate_disk("sr0"));
        assert_eq!(human(1536 << 20), "1.5 GiB");
    }
}
