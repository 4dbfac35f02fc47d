//! NIC VLANs against the real kernel, inside a network namespace the test creates: five taps
//! on one bridge, wired the way a VM's NICs are (`tap::wire`): A and C on VLAN 10, B on VLAN 20,
//! D and E without a VLAN. Frames cross only within a VLAN: A reaches C (untagged), D reaches E
//! (NICs without a VLAN keep working once the bridge filters), nothing from B reaches anyone,
//! and a frame B tags for VLAN 10 itself is dropped at its port. No guest is needed: the test
//! writes and reads frames on the taps' own file descriptors, as the VMM does.
//!
//! Needs bridge VLAN filtering in the kernel (CONFIG_BRIDGE_VLAN_FILTERING, which depends on
//! 8021q). Without it the test checks that `wire` says so and leaves the tap down (so a VM
//! never comes up on the default VLAN instead of its own), then reports itself skipped.

mod common;

use common::{in_private_netns, ip};
use std::time::{Duration, Instant};
use vmm::virtio::tap::{wire, Tap};

const BRIDGE: &str = "cvlan-br";
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// virtio-net header with num_buffers, as the VMM opens its taps.
const VNET_HDR_LEN: usize = 12;
/// How long a frame that should arrive may take (a bound for a hung kernel, not a measure).
const ARRIVAL_LIMIT: Duration = Duration::from_secs(5);

/// A broadcast frame from `src` with our ethertype and `tag` as payload, VLAN-tagged by the
/// sender itself when `dot1q` is given, behind a zero vnet header.
fn frame(src: u8, tag: &str, dot1q: Option<u16>) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, src]);
    if let Some(vid) = dot1q {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ETHERTYPE);
    f.extend_from_slice(tag.as_bytes());
    f.resize(VNET_HDR_LEN + 60, 0);
    f
}

/// The test frames queued on `tap` now: their tags, `tagged:`-prefixed if one arrived with an
/// 802.1Q header (a port on a VLAN must deliver untagged). Other traffic is left out.
fn drain(tap: &Tap, into: &mut Vec<String>) {
    let mut buf = [0u8; 2048];
    while let Some(n) = tap.read_frame(&mut buf).expect("read a tap") {
        let f = &buf[VNET_HDR_LEN.min(n)..n];
        let (tagged, rest) = match f.get(12..14) {
            Some([0x81, 0x00]) => (true, f.get(16..).unwrap_or_default()),
            _ => (false, f.get(12..).unwrap_or_default()),
        };
        if rest.get(..2) == Some(&ETHERTYPE[..]) {
            let tag: String = rest[2..]
                .iter()
                .take_while(|&&b| b != 0)
                .map(|&b| char::from(b))
                .collect();
            into.push(if tagged { format!("tagged:{tag}") } else { tag });
        }
    }
}

fn is_up(name: &str) -> bool {
    flags_of(name).is_some_and(|f| f & libc::IFF_UP as libc::c_short != 0)
}

/// The interface flags of `name` in this thread's namespace.
fn flags_of(name: &str) -> Option<libc::c_short> {
    // SAFETY: plain socket creation; closed below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return None;
    }
    // SAFETY: ifreq is plain data; all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, b) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the ifreq we own.
    let r = unsafe { libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req) };
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(s) };
    if r != 0 {
        return None;
    }
    // SAFETY: SIOCGIFFLAGS succeeded, so it set the flags member of the union.
    Some(unsafe { req.ifr_ifru.ifru_flags })
}

/// Runs the scenario in this thread's (new) namespace; Err(reason) = skipped.
fn scenario() -> Result<(), String> {
    ip(&["link", "add", BRIDGE, "type", "bridge"])
        .map_err(|e| format!("cannot create a bridge: {e}"))?;
    ip(&["link", "set", BRIDGE, "up"]).map_err(|e| format!("cannot bring the bridge up: {e}"))?;
    let open = |name: &str| {
        Tap::open(name, VNET_HDR_LEN as i32).map_err(|e| format!("cannot open tap {name}: {e}"))
    };
    let a = open("cvlan-a")?;
    match wire("cvlan-a", Some(BRIDGE), Some(10)) {
        Ok(()) => {}
        Err(e) if e.to_string().contains("CONFIG_BRIDGE_VLAN_FILTERING") => {
            // What this kernel can check: the reason is given and the tap is not up, so its
            // frames go nowhere rather than onto the bridge's default VLAN.
            assert!(!is_up("cvlan-a"), "a tap whose VLAN failed must stay down");
            // NICs without a VLAN are unaffected by the failed attempt.
            let _d = open("cvlan-d")?;
            wire("cvlan-d", Some(BRIDGE), None).expect("an untagged NIC on the same bridge");
            assert!(is_up("cvlan-d"));
            return Err(format!(
                "kernel without bridge VLAN filtering ({e}); checked the refusal only"
            ));
        }
        Err(e) => panic!("wire cvlan-a on VLAN 10: {e}"),
    }
    let b = open("cvlan-b")?;
    let c = open("cvlan-c")?;
    let d = open("cvlan-d")?;
    let e = open("cvlan-e")?;
    wire("cvlan-b", Some(BRIDGE), Some(20)).expect("wire B on VLAN 20");
    wire("cvlan-c", Some(BRIDGE), Some(10)).expect("wire C on VLAN 10");
    wire("cvlan-d", Some(BRIDGE), None).expect("wire D without a VLAN");
    wire("cvlan-e", Some(BRIDGE), None).expect("wire E without a VLAN");
    assert!(["cvlan-a", "cvlan-b", "cvlan-c", "cvlan-d", "cvlan-e"]
        .iter()
        .all(|t| is_up(t)));

    b.write_frame(&frame(2, "b20", None)).expect("B sends");
    b.write_frame(&frame(2, "b-hop", Some(10)))
        .expect("B sends tagged");
    a.write_frame(&frame(1, "a10", None)).expect("A sends");
    d.write_frame(&frame(4, "d1", None)).expect("D sends");

    let taps = [("A", &a), ("B", &b), ("C", &c), ("D", &d), ("E", &e)];
    let mut got: Vec<Vec<String>> = vec![Vec::new(); taps.len()];
    // Wait for the frames that must arrive; whatever else arrived meanwhile is kept too.
    let start = Instant::now();
    loop {
        for (i, (_, t)) in taps.iter().enumerate() {
            drain(t, &mut got[i]);
        }
        let arrived = got[2].contains(&"a10".to_string()) && got[4].contains(&"d1".to_string());
        if arrived || start.elapsed() > ARRIVAL_LIMIT {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let view: Vec<(&str, &Vec<String>)> = taps.iter().map(|(n, _)| *n).zip(got.iter()).collect();
    assert_eq!(
        view,
        [
            ("A", &vec![]),
            ("B", &vec![]),
            ("C", &vec!["a10".to_string()]),
            ("D", &vec![]),
            ("E", &vec!["d1".to_string()]),
        ],
        "VLAN 10 frames reach only VLAN 10 (untagged), VLAN 20 frames nobody, untagged NICs each other"
    );
    Ok(())
}

#[test]
fn nic_vlans_keep_frames_apart_on_one_bridge() {
    if !std::path::Path::new("/dev/net/tun").exists() {
        println!("skipped: /dev/net/tun not available");
        return;
    }
    // The taps and the bridge live and die with the namespace.
    if let Some(Err(why)) = in_private_netns(|| Some(scenario())) {
        println!("skipped: {why}");
    }
}
