//! virtio-net through a tap inside a network namespace the test creates for itself: the guest
//! broadcasts a frame, the test answers through an AF_PACKET socket on the tap, the guest checks
//! the reply. Nothing leaves the private namespace.

mod common;

use common::*;
use std::time::Duration;
use vmm::{NetConfig, Vm};

const TAP: &str = "cairn-tap0";
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

fn ifreq_name(name: &str) -> [libc::c_char; 16] {
    let mut n = [0 as libc::c_char; 16];
    for (d, b) in n.iter_mut().zip(name.bytes()) {
        *d = b as libc::c_char;
    }
    n
}

/// Brings `name` up in the current thread's namespace.
fn link_up(name: &str) -> std::io::Result<()> {
    // SAFETY: plain socket creation.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if s < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name = ifreq_name(name);
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads an ifreq we own.
    let r = unsafe { libc::ioctl(s, libc::SIOCSIFFLAGS, &req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(s) };
    if r < 0 {
        Err(err)
    } else {
        Ok(())
    }
}

/// An AF_PACKET socket bound to `name` with a receive timeout.
fn packet_socket(name: &str) -> std::io::Result<i32> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket creation.
    let s = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if s < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: cname is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    // SAFETY: sockaddr_ll is plain data; zeroed is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: binds our socket to a correctly sized sockaddr_ll.
    let r = unsafe {
        libc::bind(
            s,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval of the given size.
    unsafe {
        libc::setsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    Ok(s)
}

/// Boots the "net" guest on tap `tap` in a fresh namespace (made first as a multi-queue tap by
/// `ip` when `precreate_mq`), answers its ping, returns (exit, output, stats); None = skipped.
fn ping_pong_in_netns(
    tap: &'static str,
    precreate_mq: bool,
) -> Option<(Option<vmm::ExitReason>, String, vmm::VmStats)> {
    if !kvm_or_skip() {
        return None;
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        println!("skipped: /dev/net/tun not available");
        return None;
    }
    in_private_netns(move || {
        if precreate_mq {
            let add = [
                "tuntap",
                "add",
                "dev",
                tap,
                "mode",
                "tap",
                "multi_queue",
                "vnet_hdr",
            ];
            if let Err(e) = ip(&add) {
                println!("skipped: cannot create a multi-queue tap: {e}");
                return None;
            }
        }
        let mut cfg = guest_config("net", "net");
        cfg.nets.push(NetConfig {
            id: "nic0".into(),
            tap: tap.into(),
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        });
        let mut vm = Vm::create(cfg).expect("create VM with a tap");
        link_up(tap).expect("bring tap up");
        let sock = packet_socket(tap).expect("packet socket");
        vm.start().unwrap();
        let mut buf = [0u8; 2048];
        let mut guest_mac = None;
        for _ in 0..30 {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe { libc::recv(sock, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 24 && buf[12..14] == ETHERTYPE && &buf[14..24] == b"cairn-ping" {
                guest_mac = Some(<[u8; 6]>::try_from(&buf[6..12]).unwrap());
                break;
            }
        }
        let mac = guest_mac.expect("the guest's frame reached the tap");
        let mut reply = [0u8; 60];
        reply[..6].copy_from_slice(&mac);
        reply[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        reply[12..14].copy_from_slice(&ETHERTYPE);
        reply[14..24].copy_from_slice(b"cairn-pong");
        // SAFETY: reply is valid for reads of its length; the socket is bound to the tap.
        let sent = unsafe { libc::send(sock, reply.as_ptr().cast(), reply.len(), 0) };
        assert_eq!(sent, 60, "send: {}", std::io::Error::last_os_error());
        let reason = vm.wait_exit(Duration::from_secs(60));
        let out = String::from_utf8_lossy(&vm.debug_output()).into_owned();
        let stats = vm.stats();
        vm.delete();
        // SAFETY: closing our socket.
        unsafe { libc::close(sock) };
        Some((reason, out, stats))
    })
}

#[test]
fn virtio_net_frames_through_a_tap_in_a_private_netns() {
    let Some((reason, out, stats)) = ping_pong_in_netns(TAP, false) else {
        return;
    };
    assert_pass(
        &reason,
        &out,
        &[
            "pci-find-net",
            "net-driver-ok",
            "net-mac",
            "net-tx",
            "net-rx",
        ],
    );
    let nic = &stats.nics[0];
    assert!(nic.write_ops >= 1 && nic.read_ops >= 1, "{nic:?}");
}

/// A one-vCPU VM (one queue pair) on a tap someone made multi-queue beforehand: the plain open
/// is refused by the kernel, so the NIC takes one queue of it and works the same.
#[test]
fn virtio_net_single_pair_on_a_precreated_multiqueue_tap() {
    let Some((reason, out, stats)) = ping_pong_in_netns("cairn-tap3", true) else {
        return;
    };
    assert_pass(&reason, &out, &["net-driver-ok", "net-tx", "net-rx"]);
    assert!(stats.nics[0].read_ops >= 1, "{:?}", stats.nics[0]);
}

/// Checksum offload both ways through the tap, verified by the host's own UDP stack: the guest
/// sends a datagram carrying only the pseudo-header sum plus NEEDS_CSUM (delivered only if the
/// vnet header reached the tap), and the reply reaches the guest still marked as offloaded
/// (only after TUNSETOFFLOAD for the negotiated GUEST_CSUM).
#[test]
fn virtio_net_checksum_offload_through_the_tap() {
    if !kvm_or_skip() {
        return;
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        println!("skipped: /dev/net/tun not available");
        return;
    }
    const TAP1: &str = "cairn-tap1";
    let result = in_private_netns(|| {
        let mut cfg = guest_config("net-offload", "net-offload");
        cfg.nets.push(NetConfig {
            id: "nic0".into(),
            tap: TAP1.into(),
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x57],
        });
        let mut vm = Vm::create(cfg).expect("create VM with a tap");
        if let Err(e) = ip(&["addr", "add", "10.0.0.1/24", "dev", TAP1])
            .and_then(|_| ip(&["link", "set", TAP1, "up"]))
            .and_then(|_| {
                ip(&[
                    "neigh",
                    "add",
                    "10.0.0.2",
                    "lladdr",
                    "52:54:00:12:34:57",
                    "dev",
                    TAP1,
                    "nud",
                    "permanent",
                ])
            })
        {
            println!("skipped: cannot configure the tap: {e}");
            return None;
        }
        let sock = std::net::UdpSocket::bind("10.0.0.1:5555").expect("bind in the namespace");
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        vm.start().unwrap();
        let mut buf = [0u8; 256];
        let got = sock.recv_from(&mut buf);
        let host_saw = match &got {
            Ok((n, from)) => Some((buf[..*n].to_vec(), *from)),
            Err(_) => None,
        };
        if host_saw.is_some() {
            sock.send_to(b"cairn-udp-host", "10.0.0.2:5555")
                .expect("send reply");
        }
        let reason = vm.wait_exit(Duration::from_secs(60));
        let out = String::from_utf8_lossy(&vm.debug_output()).into_owned();
        vm.delete();
        Some((host_saw, reason, out))
    });
    let Some((host_saw, reason, out)) = result else {
        return;
    };
    let (payload, from) = host_saw.unwrap_or_else(|| {
        panic!("the host stack never accepted the guest's partially checksummed datagram:\n{out}")
    });
    assert_eq!(payload, b"cairn-udp-csum");
    assert_eq!(from.to_string(), "10.0.0.2:4444");
    assert_pass(
        &reason,
        &out,
        &[
            "net-offload-features",
            "net-tx",
            "net-rx",
            "net-rx-csum-offload",
            "net-rx-num-buffers",
        ],
    );
}

/// An IPv4/UDP frame from the host side (10.0.0.1:`sport` -> 10.0.0.2:5555) to `mac`.
fn udp_frame(mac: &[u8; 6], sport: u16) -> Vec<u8> {
    let payload = b"cairn-mq";
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(mac);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    let sum = !ip
        .chunks(2)
        .fold(0u32, |a, w| a + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = (sum & 0xffff) as u16; // only approximately folded: the guest never checks it
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&5555u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

/// Multi-queue: two vCPUs give two queue pairs on a multi-queue tap. The guest enables both
/// through the control queue, transmits on each pair, and the host's many UDP flows reach
/// both rx queues (the tap spreads flows over its attached queues).
#[test]
fn virtio_net_multiqueue_one_pair_per_vcpu() {
    if !kvm_or_skip() {
        return;
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        println!("skipped: /dev/net/tun not available");
        return;
    }
    const TAP2: &str = "cairn-tap2";
    let result = in_private_netns(|| {
        let mut cfg = guest_config("netmq", "net-mq");
        cfg.vcpus = 2;
        cfg.nets.push(NetConfig {
            id: "nic0".into(),
            tap: TAP2.into(),
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x57],
        });
        let mut vm = Vm::create(cfg).expect("create VM with a multi-queue tap");
        link_up(TAP2).expect("bring tap up");
        let sock = packet_socket(TAP2).expect("packet socket");
        vm.start().unwrap();
        let mut buf = [0u8; 2048];
        let mut seen = [false; 2];
        let mut mac = [0u8; 6];
        for _ in 0..60 {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe { libc::recv(sock, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 25 && buf[12..14] == ETHERTYPE && &buf[14..24] == b"cairn-ping" {
                mac.copy_from_slice(&buf[6..12]);
                if let Some(s) = seen.get_mut(usize::from(buf[24])) {
                    *s = true;
                }
            }
            if seen == [true, true] {
                break;
            }
        }
        let pings = seen;
        if pings == [true, true] {
            for sport in 0..32u16 {
                let f = udp_frame(&mac, 40000 + sport * 7);
                // SAFETY: f is valid for reads of its length; the socket is bound to the tap.
                let sent = unsafe { libc::send(sock, f.as_ptr().cast(), f.len(), 0) };
                assert_eq!(sent, f.len() as isize);
            }
        }
        let reason = vm.wait_exit(Duration::from_secs(60));
        let out = String::from_utf8_lossy(&vm.debug_output()).into_owned();
        vm.delete();
        // SAFETY: closing our socket.
        unsafe { libc::close(sock) };
        Some((pings, reason, out))
    });
    let Some((pings, reason, out)) = result else {
        return;
    };
    assert_eq!(
        pings,
        [true, true],
        "a ping per pair reached the tap:\n{out}"
    );
    assert_pass(
        &reason,
        &out,
        &[
            "net-mq-features",
            "net-mq-pairs",
            "net-mq-queues",
            "net-mq-ctrl-set",
            "net-mq-ctrl-refused",
            "net-mq-tx-both",
            "net-mq-rx-both",
        ],
    );
    assert!(out.contains("net-max-pairs 2\n"), "{out}");
    // Frames per rx queue, for the record.
    if let Some(l) = out.lines().find(|l| l.starts_with("net-mq-rx ")) {
        println!("{l}");
    }
}
