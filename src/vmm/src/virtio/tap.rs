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
        if name.is_empty()
            || name.len() >= 16
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
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
