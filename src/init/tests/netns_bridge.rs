//! PID 1's bridge over the uplink against the real kernel, inside a network namespace this test
//! creates (veth pair cv0/cv1, cv0 the uplink): a static configuration makes bridge cairn0 with
//! cv0's MAC and cv0 as its port, the address and default route on cairn0, not cv0; a port the
//! bridge gained meanwhile (as a VM's tap would be) stays when the configuration changes live to
//! DHCP, served by a small DHCP server on cv1, so every frame crosses the veth pair and the
//! bridge: the lease lands on cairn0, asked for with cv0's MAC; a change to another uplink
//! makes that one the port and gives the bridge its MAC. Needs what `netns_static` needs
//! and bridges in the kernel; otherwise reports itself skipped.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{cfg, in_namespace, ip};
use init::net::{NetConfig, NetMode};
use init::netlive;

/// The MAC `ip -o link show NAME` prints.
fn mac(name: &str) -> Result<String, String> {
    let out = ip(&["-o", "link", "show", name])?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| format!("no MAC in {out:?}"))
}

/// The interface index `ip -o link show NAME` starts with.
fn index(name: &str) -> Result<String, String> {
    let out = ip(&["-o", "link", "show", name])?;
    Ok(out.split(':').next().unwrap_or_default().to_string())
}

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
const LEASED: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 50);

/// One DHCP option: code, length, bytes.
fn opt(out: &mut Vec<u8>, code: u8, data: &[u8]) {
    out.push(code);
    out.push(data.len() as u8);
    out.extend_from_slice(data);
}

/// Answers DISCOVER with an OFFER and REQUEST with an ACK of [`LEASED`]/24 (router and DNS
/// [`SERVER`], an hour), broadcast on the link the socket is bound to; sends each client MAC it
/// served to `seen`. Stops when `stop` is set.
fn serve(sock: UdpSocket, seen: mpsc::Sender<[u8; 6]>, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::SeqCst) {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(_) => continue, // read timeout: look whether the test still runs
        };
        let p = &buf[..n];
        if n < 240 || p[0] != 1 || p[236..240] != [99, 130, 83, 99] {
            continue;
        }
        let mut kind = 0;
        let mut at = 240;
        while at + 1 < n && p[at] != 255 {
            let len = p[at + 1] as usize;
            if p[at] == 53 && len == 1 && at + 2 < n {
                kind = p[at + 2];
            }
            at += 2 + len;
        }
        let answer = match kind {
            1 => 2, // DISCOVER -> OFFER
            3 => 5, // REQUEST -> ACK
            _ => continue,
        };
        let mut chaddr = [0u8; 6];
        chaddr.copy_from_slice(&p[28..34]);
        let mut r = vec![0u8; 240];
        r[0] = 2; // BOOTREPLY
        r[1] = 1;
        r[2] = 6;
        r[4..8].copy_from_slice(&p[4..8]); // xid
        r[10..12].copy_from_slice(&p[10..12]); // flags
        r[16..20].copy_from_slice(&LEASED.octets());
        r[20..24].copy_from_slice(&SERVER.octets());
        r[28..44].copy_from_slice(&p[28..44]);
        r[236..240].copy_from_slice(&[99, 130, 83, 99]);
        opt(&mut r, 53, &[answer]);
        opt(&mut r, 54, &SERVER.octets());
        opt(&mut r, 51, &3600u32.to_be_bytes());
        opt(&mut r, 1, &[255, 255, 255, 0]);
        opt(&mut r, 3, &SERVER.octets());
        opt(&mut r, 6, &SERVER.octets());
        r.push(255);
        let _ = sock.send_to(&r, (Ipv4Addr::BROADCAST, 68));
        let _ = seen.send(chaddr);
    }
}

/// Sets an integer socket option.
fn set_int(sock: &UdpSocket, name: libc::c_int, v: libc::c_int) -> Result<(), String> {
    // SAFETY: setsockopt reads one c_int from `v` for the given length; the socket is ours.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(format!(
            "setsockopt {name}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// A DHCP server socket on cv1 (port 67, broadcasts allowed, bound to the link). Its UDP
/// checksums are left out (0, allowed over IPv4): a veth would otherwise hand the client a
/// checksum still to be filled in by offload, which smoltcp rightly refuses.
fn server_socket() -> Result<UdpSocket, String> {
    ip(&["addr", "add", "10.88.0.1/24", "dev", "cv1"])?;
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 67)).map_err(|e| format!("bind 67: {e}"))?;
    sock.set_broadcast(true).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    set_int(&sock, libc::SO_NO_CHECK, 1)?;
    let dev = b"cv1\0";
    // SAFETY: SO_BINDTODEVICE reads `dev` (a NUL-terminated name) for the given length; the
    // socket is ours.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            dev.as_ptr().cast(),
            dev.len() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(format!(
            "SO_BINDTODEVICE cv1: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(sock)
}

fn body() -> Result<(), String> {
    if let Err(e) = ip(&["link", "add", "probe0", "type", "bridge"]) {
        return Err(format!("skipped: this kernel has no bridges: {}", e.trim()));
    }
    ip(&["link", "del", "probe0"])?;
    let t = Duration::from_secs(2);
    let uplink_mac = mac("cv0")?;

    let s = netlive::apply(&cfg("cv0", None, "10.77.0.2/24 10.77.0.1"), t)?;
    assert_eq!(s.link, "cv0");
    assert_eq!(s.bridge.as_deref(), Some("cairn0"));
    assert_eq!(netlive::bridge().as_deref(), Some("cairn0"));
    let br = ip(&["-d", "link", "show", "cairn0"])?;
    assert!(br.contains("bridge forward_delay"), "not a bridge: {br}");
    // The bridge's carrier follows its port's through the kernel's link watch, which reports
    // a change up to a second later: wait for it rather than read the state at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut br = br;
    while !br.contains("state UP") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        br = ip(&["link", "show", "cairn0"])?;
    }
    assert!(br.contains("state UP"), "{br}");
    assert_eq!(
        mac("cairn0")?,
        uplink_mac,
        "the bridge takes the uplink's MAC"
    );
    assert!(ip(&["link", "show", "cv0"])?.contains("master cairn0"));
    assert!(ip(&["-4", "-o", "addr", "show", "dev", "cairn0"])?.contains("10.77.0.2/24"));
    let on_uplink = ip(&["-4", "-o", "addr", "show", "dev", "cv0"])?;
    assert!(on_uplink.trim().is_empty(), "cv0 holds {on_uplink}");
    let routes = ip(&["-4", "route", "show", "default"])?;
    assert!(routes.contains("via 10.77.0.1 dev cairn0"), "{routes}");
    let bridge_index = index("cairn0")?;

    // A VM's tap would be a port of the bridge by now: a live change must keep it.
    ip(&["link", "add", "vm0", "type", "veth", "peer", "name", "vm0p"])?;
    ip(&["link", "set", "vm0", "master", "cairn0"])?;

    let sock = server_socket()?;
    let (seen_tx, seen) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = std::thread::spawn(move || serve(sock, seen_tx, stop2));
    let dhcp = NetConfig {
        iface: "cv0".into(),
        vlan: None,
        mode: NetMode::Dhcp,
    };
    let s = netlive::replace(&dhcp, Duration::from_secs(8))?;
    assert_eq!(s.addr, Some((LEASED, 24)));
    assert_eq!(s.gateway, Some(SERVER));
    assert_eq!(s.bridge.as_deref(), Some("cairn0"));
    let addrs = ip(&["-4", "-o", "addr", "show", "dev", "cairn0"])?;
    assert!(addrs.contains("10.88.0.50/24"), "{addrs}");
    assert!(!addrs.contains("10.77.0.2"), "{addrs}");
    let routes = ip(&["-4", "route", "show", "default"])?;
    assert!(routes.contains("via 10.88.0.1 dev cairn0"), "{routes}");
    assert!(!routes.contains("10.77.0.1"), "{routes}");
    let chaddr = seen
        .recv_timeout(Duration::from_secs(1))
        .map_err(|_| "the DHCP server served nobody".to_string())?;
    let chaddr = chaddr
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert_eq!(
        chaddr, uplink_mac,
        "the lease is asked for with the uplink's MAC"
    );
    assert_eq!(index("cairn0")?, bridge_index, "the bridge was made again");
    assert!(ip(&["link", "show", "vm0"])?.contains("master cairn0"));
    assert!(ip(&["link", "show", "cv0"])?.contains("master cairn0"));

    // Back to static: the DHCP client stops.
    netlive::replace(&cfg("cv0", None, "10.77.0.3/24"), t)?;
    stop.store(true, Ordering::SeqCst);
    let _ = server.join();
    assert!(ip(&["-4", "-o", "addr", "show", "dev", "cairn0"])?.contains("10.77.0.3/24"));

    // Another uplink: it replaces cv0 as the port, the bridge (same one, its VM port kept)
    // takes its MAC.
    ip(&["link", "add", "cv2", "type", "veth", "peer", "name", "cv3"])?;
    netlive::replace(&cfg("cv2", None, "10.77.0.4/24"), t)?;
    assert!(ip(&["link", "show", "cv2"])?.contains("master cairn0"));
    assert!(!ip(&["link", "show", "cv0"])?.contains("master"));
    assert_eq!(mac("cairn0")?, mac("cv2")?);
    assert_eq!(index("cairn0")?, bridge_index);
    assert!(ip(&["link", "show", "vm0"])?.contains("master cairn0"));
    assert!(ip(&["-4", "-o", "addr", "show", "dev", "cairn0"])?.contains("10.77.0.4/24"));
    Ok(())
}

#[test]
fn the_bridge_over_the_uplink_holds_the_address_and_dhcp_works_over_it() {
    in_namespace(body);
}
