//! A Linux tap device opened through /dev/net/tun with a virtio-net header, non-blocking. The
//! tap is created in the calling thread's network namespace. A multi-queue tap
//! ([`Tap::open_queues`], IFF_MULTI_QUEUE) has one fd per queue; the kernel spreads received
//! flows over the attached queues, and a queue can be detached and attached again
//! ([`Tap::set_queue_attached`]).

use crate::error::{Result, VmmError};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_ATTACH_QUEUE: libc::c_short = 0x0200;
const IFF_DETACH_QUEUE: libc::c_short = 0x0400;
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;
/// Most queues one tap may have here (the kernel allows more; a VM never needs them).
pub const MAX_TAP_QUEUES: usize = 16;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// Add an interface (by index) to a Linux bridge (linux/sockios.h).
const SIOCBRADDIF: libc::c_ulong = 0x89a2;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// TUNSETOFFLOAD: the reader (we, for the guest) accepts partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// TUNSETOFFLOAD: the reader accepts TCPv4 GSO frames.
pub const TUN_F_TSO4: u32 = 0x02;
/// TUNSETOFFLOAD: the reader accepts TCPv6 GSO frames.
pub const TUN_F_TSO6: u32 = 0x04;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Whether `name` is an interface name we create or look up: 1-15 letters, digits, '-', '_'
/// or '.', and not `.` or `..` (what Linux accepts, less the characters that need quoting).
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name != "."
        && name != ".."
}

fn ifreq_name(name: &str) -> [libc::c_char; libc::IFNAMSIZ] {
    let mut n = [0 as libc::c_char; libc::IFNAMSIZ];
    for (d, b) in n.iter_mut().zip(name.bytes()) {
        *d = b as libc::c_char;
    }
    n
}

/// Wires an open tap on the host side, in the calling thread's network namespace: with
/// `bridge`, makes it a port of that existing Linux bridge (what libvirt's bridged networking
/// does), with `vlan` a port on that VLAN only, untagged towards the guest (VLAN filtering is
/// turned on on the bridge; see [`super::bridge_vlan`]); then brings it up, so frames flow
/// from the first one the guest sends. On an error the tap stays down. A tap that lives only
/// as long as the VM holds it leaves the bridge by itself when the VM stops.
pub fn wire(tap: &str, bridge: Option<&str>, vlan: Option<u16>) -> Result<()> {
    if let (Some(v), None) = (vlan, bridge) {
        return Err(VmmError::InvalidConfig(format!(
            "tap {tap} is on VLAN {v} but joins no bridge (the VLAN is set on its bridge port)"
        )));
    }
    for n in std::iter::once(tap).chain(bridge) {
        if !valid_ifname(n) {
            return Err(VmmError::InvalidConfig(format!(
                "bad network interface name {n:?}"
            )));
        }
    }
    // SAFETY: plain socket creation; the fd is owned by `sock` below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(VmmError::Io {
            what: "socket for interface ioctls",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let ctap = std::ffi::CString::new(tap)
        .map_err(|_| VmmError::InvalidConfig(format!("bad tap name {tap:?}")))?;
    // SAFETY: `ctap` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(ctap.as_ptr()) };
    if index == 0 {
        return Err(VmmError::InvalidConfig(format!(
            "tap {tap}: {}",
            io::Error::last_os_error()
        )));
    }
    if let Some(b) = bridge {
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        req.ifr_name = ifreq_name(b);
        req.ifr_ifru.ifru_ifindex = index as libc::c_int;
        // SAFETY: SIOCBRADDIF reads an ifreq (the bridge's name and the port's index), which
        // `req` is; the socket is ours.
        if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDIF, &req) } < 0 {
            let e = io::Error::last_os_error();
            let why = match e.raw_os_error() {
                Some(libc::ENODEV) => format!("there is no bridge named {b}"),
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => format!("{b} is not a bridge"),
                Some(libc::EBUSY) => format!(
                    "tap {tap} is a port of a bridge already (leave the NIC's bridge out for a tap you wire yourself)"
                ),
                _ => format!("cannot add tap {tap} to bridge {b}: {e}"),
            };
            return Err(VmmError::InvalidConfig(why));
        }
        if let Some(vid) = vlan {
            let cb = std::ffi::CString::new(b)
                .map_err(|_| VmmError::InvalidConfig(format!("bad bridge name {b:?}")))?;
            // SAFETY: `cb` is a valid NUL-terminated string.
            let bridge_index = unsafe { libc::if_nametoindex(cb.as_ptr()) };
            if bridge_index == 0 {
                return Err(VmmError::InvalidConfig(format!(
                    "bridge {b}: {}",
                    io::Error::last_os_error()
                )));
            }
            super::bridge_vlan::set_access_vlan(bridge_index, b, index, tap, vid)
                .map_err(VmmError::InvalidConfig)?;
        }
    }
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name = ifreq_name(tap);
    // SAFETY: SIOCGIFFLAGS fills the flags of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(VmmError::Io {
            what: "SIOCGIFFLAGS",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: SIOCGIFFLAGS set the flags member of the union; reading it back is reading plain data.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(VmmError::Io {
            what: "SIOCSIFFLAGS",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// An open tap (or one queue of a multi-queue tap).
pub struct Tap {
    file: File,
    attached: std::sync::atomic::AtomicBool,
}

impl Tap {
    /// Opens (creating if needed) tap `name` with a `vnet_hdr_len`-byte virtio-net header. A
    /// tap that already exists as a multi-queue device (e.g. `ip tuntap add ... multi_queue`)
    /// refuses a plain open; one queue of it serves a single pair just as well.
    pub fn open(name: &str, vnet_hdr_len: i32) -> Result<Tap> {
        match Self::open_with(name, vnet_hdr_len, 0) {
            Err(VmmError::Io {
                what: "TUNSETIFF",
                source,
            }) if source.raw_os_error() == Some(libc::EINVAL) => {
                Self::open_with(name, vnet_hdr_len, IFF_MULTI_QUEUE)
            }
            r => r,
        }
    }

    /// Opens `queues` queues of multi-queue tap `name` (creating it if needed); one queue is a
    /// plain [`Tap::open`]. Fails if the tap exists as a single-queue device.
    pub fn open_queues(name: &str, vnet_hdr_len: i32, queues: usize) -> Result<Vec<Tap>> {
        if queues == 0 || queues > MAX_TAP_QUEUES {
            return Err(VmmError::InvalidConfig(format!(
                "a tap has 1..={MAX_TAP_QUEUES} queues, not {queues}"
            )));
        }
        if queues == 1 {
            return Ok(vec![Self::open(name, vnet_hdr_len)?]);
        }
        (0..queues)
            .map(|_| Self::open_with(name, vnet_hdr_len, IFF_MULTI_QUEUE))
            .collect()
    }

    /// Attaches (true) or detaches this queue of a multi-queue tap: the kernel only hands
    /// received frames to attached queues. Idempotent.
    pub fn set_queue_attached(&self, on: bool) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.attached.load(Ordering::Acquire) == on {
            return Ok(());
        }
        let mut req = IfReq {
            name: [0; 16],
            flags: if on {
                IFF_ATTACH_QUEUE
            } else {
                IFF_DETACH_QUEUE
            },
            _pad: [0; 22],
        };
        // SAFETY: TUNSETQUEUE reads an ifreq (only its flags), which `req` is (40 bytes).
        if unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETQUEUE, &mut req) } < 0 {
            return Err(VmmError::Io {
                what: "TUNSETQUEUE",
                source: io::Error::last_os_error(),
            });
        }
        self.attached.store(on, Ordering::Release);
        Ok(())
    }

    fn open_with(name: &str, vnet_hdr_len: i32, extra_flags: libc::c_short) -> Result<Tap> {
        // The names the control surface accepts ('.' included), so a NIC it took can start.
        if !valid_ifname(name) {
            return Err(VmmError::InvalidConfig(format!("bad tap name {name:?}")));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| VmmError::Io {
                what: "open /dev/net/tun",
                source,
            })?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | extra_flags,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is (layout-compatible, 40 bytes).
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(VmmError::Io {
                what: "TUNSETIFF",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points at a live i32.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &vnet_hdr_len) } < 0 {
            return Err(VmmError::Io {
                what: "TUNSETVNETHDRSZ",
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            attached: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Tells the kernel which offloads frames read from the tap may carry (`TUN_F_*`): with
    /// [`TUN_F_CSUM`] the stack hands over partially checksummed frames (vnet header
    /// NEEDS_CSUM), with TSO4/TSO6 unsegmented TCP frames. Frames written to the tap may always
    /// carry them.
    pub fn set_offload(&self, flags: u32) -> Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned int); no memory is passed.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        } < 0
        {
            return Err(VmmError::Io {
                what: "TUNSETOFFLOAD",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Reads one frame (with its vnet header); Ok(None) when nothing is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(n) => Ok(Some(n)),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Writes one frame (with its vnet header).
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is valid for reads of frame.len() bytes.
        let n = unsafe { libc::write(self.file.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The fd, for polling.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
