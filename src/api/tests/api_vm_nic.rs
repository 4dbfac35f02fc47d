//! A VM with a NIC through the REST API, end to end: in a network namespace of its own (a
//! thread that unshares one, runs the node, the API and the client there, and creates a Linux
//! bridge), `POST /vms` defines a test guest with a NIC on a tap that joins that bridge when
//! the VM starts. The guest broadcasts one frame; the test answers it through an AF_PACKET
//! socket on the bridge; the guest checks the answer and powers off. The NIC's packet and byte
//! counters are then read through `GET /vms/{name}` and the live statistics stream (checked
//! against the OpenAPI document). A NIC whose bridge does not exist is refused at start, with
//! the reason, and so is a NIC on a VLAN where the kernel cannot filter VLANs on a bridge.
//! Nothing leaves the private namespace.

mod common;

use common::kvm_usable;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const BRIDGE: &str = "cbr-test0";
const TAP: &str = "cnic-test0";
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// The guest's ping and our pong are both minimum-size Ethernet frames.
const FRAME_BYTES: u64 = 60;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A raw socket on `name` (every protocol) that gives up a receive after 200 ms.
fn packet_socket(name: &str) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket creation.
    let s = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if s < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `s` is a fresh socket nobody else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(s) };
    let cname = std::ffi::CString::new(name).expect("no NUL in the name");
    // SAFETY: cname is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain data; all zeroes is valid.
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
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval of the given size.
    let r = unsafe {
        libc::setsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Waits (up to `secs`) for the guest's "cairn-ping" on the bridge and answers it with one
/// "cairn-pong" to the sender.
fn answer_ping(sock: std::os::fd::OwnedFd, secs: u64) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let t = Instant::now();
    let mut buf = [0u8; 2048];
    while t.elapsed() < Duration::from_secs(secs) {
        // SAFETY: buf is valid for writes of its length; the socket is ours.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else { continue };
        if n < 24 || buf[12..14] != ETHERTYPE || &buf[14..24] != b"cairn-ping" {
            continue;
        }
        if buf[6..12] != GUEST_MAC {
            return Err(format!("a ping from {:02x?}", &buf[6..12]));
        }
        let mut reply = [0u8; FRAME_BYTES as usize];
        reply[..6].copy_from_slice(&GUEST_MAC);
        reply[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        reply[12..14].copy_from_slice(&ETHERTYPE);
        reply[14..24].copy_from_slice(b"cairn-pong");
        // SAFETY: reply is valid for reads of its length; the socket is bound to the bridge.
        let sent = unsafe { libc::send(sock.as_raw_fd(), reply.as_ptr().cast(), reply.len(), 0) };
        if sent != reply.len() as isize {
            return Err(format!("send: {}", std::io::Error::last_os_error()));
        }
        return Ok(());
    }
    Err(format!("no ping from the guest on {BRIDGE} in {secs} s"))
}

/// Live samples from `/api/v1/stats/stream`, one JSON value per event, in order.
async fn sample_stream(
    h: &common::Harness,
    cookie: String,
) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    use http_body_util::BodyExt;
    let sock = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = h.tls.connect(name, sock).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/api/v1/stats/stream")
        .header("host", "localhost")
        .header("cookie", cookie)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _keep = send;
        let mut text = String::new();
        while let Some(Ok(f)) = body.frame().await {
            let Some(d) = f.data_ref() else { continue };
            text.push_str(&String::from_utf8_lossy(d));
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                    let v: Value = serde_json::from_str(data).expect("a sample is JSON");
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// The sample's entry for VM `name`, if it has one.
fn vm_in<'a>(sample: &'a Value, name: &str) -> Option<&'a Value> {
    sample["vms"].as_array()?.iter().find(|v| v["name"] == name)
}

/// Checks a live sample against the OpenAPI document's `Sample` schema.
fn check_sample_schema(sample: &Value) {
    let doc: Value = serde_json::from_str(api::OPENAPI_JSON).unwrap();
    let root = json!({"$schema": "https://json-schema.org/draft/2020-12/schema",
        "allOf": [{"$ref": "#/components/schemas/Sample"}], "components": doc["components"]});
    let v = jsonschema::validator_for(&root).expect("schema compiles");
    let errors: Vec<String> = v
        .iter_errors(sample)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{errors:?}\n{sample}");
}

async fn nic_end_to_end() -> Result<(), String> {
    // A quiet namespace: loopback for the API, no IPv6 chatter from the bridge or the tap
    // (the guest would count every frame of it).
    ip(&["link", "set", "lo", "up"])?;
    for f in ["all", "default"] {
        let p = format!("/proc/sys/net/ipv6/conf/{f}/disable_ipv6");
        if std::path::Path::new(&p).exists() {
            std::fs::write(&p, "1").map_err(|e| format!("{p}: {e}"))?;
        }
    }
    if let Err(e) = ip(&["link", "add", BRIDGE, "type", "bridge"]) {
        return Err(format!("skipped: cannot create a bridge: {e}"));
    }
    ip(&["link", "set", BRIDGE, "up"])?;

    let h = common::Harness::start()
        .await
        .map_err(|e| format!("harness: {e:#}"))?;
    let a = h.admin().await;
    let guest = test_guests::guest_elf_path();
    let vm = |name: &str, nics: Value| {
        json!({"name": name, "vcpus": 1, "memory_mib": 32, "kernel": guest,
            "cmdline": "net", "nics": nics})
    };

    // Bad NICs are refused before anything is defined.
    for (nics, status, words) in [
        (json!([{"tap": TAP, "bridge": "br/0"}]), 400, "bridge name"),
        (json!([{"tap": TAP, "bridge": TAP}]), 409, "both"),
        (json!([{"tap": TAP}, {"tap": TAP}]), 409, "two NICs"),
        (json!([{"tap": TAP, "colour": "red"}]), 400, "colour"),
        (
            json!([{"tap": TAP, "bridge": BRIDGE, "vlan": 0}]),
            400,
            "VLAN id 0",
        ),
        (
            json!([{"tap": TAP, "bridge": BRIDGE, "vlan": 4095}]),
            400,
            "VLAN id 4095",
        ),
        (json!([{"tap": TAP, "vlan": 10}]), 400, "no bridge"),
    ] {
        let r = a.post("/api/v1/vms", vm("bad", nics.clone())).await;
        assert_eq!(r.status, status, "{nics}: {}", r.text);
        let msg = r.json["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(words), "{nics}: {msg}");
    }
    assert_eq!(a.get("/api/v1/vms/bad").await.status, 404);

    // A bridge that does not exist: defined, but the start is refused with the reason and
    // leaves no machine behind.
    let r = a
        .post(
            "/api/v1/vms",
            vm(
                "nobridge",
                json!([{"tap": "cnic-test9", "bridge": "cbr-none"}]),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = a.post("/api/v1/vms/nobridge/start", json!({})).await;
    assert_eq!(r.status, 409, "{}", r.text);
    let msg = r.json["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("no bridge named cbr-none"), "{msg}");
    assert_eq!(a.get("/api/v1/vms/nobridge").await.json["state"], "defined");
    assert_eq!(a.delete("/api/v1/vms/nobridge").await.status, 204);

    // A NIC on VLAN 10 of the bridge: shown with its VLAN. Where the kernel cannot filter
    // VLANs on a bridge the start is refused with why (never started on the default VLAN);
    // where it can, the VM starts (the frames are `vmm`'s bridge_vlan test).
    let tagged = json!([{"tap": "cnic-test8", "bridge": BRIDGE, "vlan": 10}]);
    let r = a.post("/api/v1/vms", vm("tagged", tagged)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["nics"][0]["vlan"], 10, "{}", r.text);
    let r = a.post("/api/v1/vms/tagged/start", json!({})).await;
    if r.status == 409 {
        let msg = r.json["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("CONFIG_BRIDGE_VLAN_FILTERING"), "{msg}");
        assert_eq!(a.get("/api/v1/vms/tagged").await.json["state"], "defined");
    } else {
        assert_eq!(r.status, 200, "{}", r.text);
        let r = a
            .post("/api/v1/vms/tagged/stop", json!({"force": true}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(a.delete("/api/v1/vms/tagged").await.status, 204);

    // The VM with its NIC on the bridge.
    let r = a
        .post(
            "/api/v1/vms",
            vm(
                "netvm",
                json!([{"tap": TAP, "mac": "52:54:00:12:34:56", "bridge": BRIDGE}]),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.json["nics"],
        json!([{"id": "net0", "tap": TAP, "mac": "52:54:00:12:34:56", "bridge": BRIDGE}])
    );

    // Live samples from before the start: the first with the VM defined is the baseline the
    // rates of the exchange are measured from.
    let mut samples = sample_stream(&h, a.cookie.clone().unwrap()).await;
    let t = Instant::now();
    loop {
        let s = tokio::time::timeout(Duration::from_secs(10), samples.recv())
            .await
            .map_err(|_| "no live sample in 10 s".to_string())?
            .ok_or("the stream ended")?;
        if vm_in(&s, "netvm").is_some() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "netvm never sampled");
    }

    let sock = packet_socket(BRIDGE).map_err(|e| format!("packet socket: {e}"))?;
    let answer = std::thread::spawn(move || answer_ping(sock, 15));
    let r = a.post("/api/v1/vms/netvm/start", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let answered = tokio::task::spawn_blocking(move || answer.join())
        .await
        .unwrap()
        .unwrap();
    let console = || async {
        a.get("/api/v1/vms/netvm/console").await.json["output"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    if let Err(e) = answered {
        panic!("{e}\nconsole: {}", console().await);
    }

    // The guest checks the answer and powers off.
    let t = Instant::now();
    let v = loop {
        let v = a.get("/api/v1/vms/netvm").await.json;
        if v["state"] == "stopped" {
            break v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "netvm never stopped: {v}\nconsole: {}",
            console().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = console().await;
    assert!(
        out.contains("ok net-tx") && out.contains("ok net-rx") && out.contains("result pass"),
        "{out}"
    );
    assert_eq!(v["last_exit"], "exit code 0", "{v}\n{out}");

    // One frame out, counted on the NIC through the VM's statistics. The guest sends only its
    // ping; what it receives is the pong plus whatever the kernel's bridge floods to every port
    // (a CI run once saw one extra 54-byte frame), so receive is at least the pong, and every
    // extra frame is a whole Ethernet frame.
    let nic = &v["stats"]["nics"][0];
    assert_eq!(nic["id"], "net0", "{v}");
    assert_eq!(
        [&nic["write_ops"], &nic["write_bytes"], &nic["errors"]],
        [&json!(1), &json!(FRAME_BYTES), &json!(0)],
        "tx packets, tx bytes, errors: {nic}"
    );
    let rx = |n: &Value| (n["read_ops"].as_u64(), n["read_bytes"].as_u64());
    let (Some(rx_packets), Some(rx_bytes)) = rx(nic) else {
        panic!("rx counters missing: {nic}")
    };
    assert!(
        rx_packets >= 1 && rx_bytes >= FRAME_BYTES + (rx_packets - 1) * 14,
        "rx packets {rx_packets}, rx bytes {rx_bytes}: {nic}"
    );

    // ...and the same totals through the live stream, with rates in the samples that saw them
    // move.
    let (mut tx_rate, mut rx_rate, mut last) = (false, false, None);
    let t = Instant::now();
    while last.is_none() || !(tx_rate && rx_rate) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the stream never showed the NIC's frames: tx rate seen {tx_rate}, rx rate seen {rx_rate}, last {last:?}"
        );
        let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(10), samples.recv()).await
        else {
            panic!("the stream stopped")
        };
        let Some(n) = vm_in(&s, "netvm").map(|v| v["nics"][0].clone()) else {
            continue;
        };
        tx_rate |= n["tx_packets_per_sec"].as_f64().unwrap_or(0.0) > 0.0
            && n["tx_bytes_per_sec"].as_f64().unwrap_or(0.0) > 0.0;
        rx_rate |= n["rx_packets_per_sec"].as_f64().unwrap_or(0.0) > 0.0
            && n["rx_bytes_per_sec"].as_f64().unwrap_or(0.0) > 0.0;
        if n["tx_packets"] == 1 && n["rx_packets"] == rx_packets {
            check_sample_schema(&s);
            last = Some(n);
        }
    }
    let n = last.unwrap();
    assert_eq!(n["id"], "net0");
    assert_eq!(
        [&n["tx_bytes"], &n["rx_bytes"], &n["errors"]],
        [&json!(FRAME_BYTES), &json!(rx_bytes), &json!(0)],
        "{n}"
    );

    assert_eq!(a.delete("/api/v1/vms/netvm").await.status, 204);
    h.stop().await;
    Ok(())
}

#[test]
fn vm_nic_on_a_bridge_counts_frames_through_the_api() {
    if !kvm_usable() {
        println!("skipped: no usable /dev/kvm");
        return;
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        println!("skipped: /dev/net/tun not available");
        return;
    }
    let r = std::thread::spawn(|| {
        // SAFETY: unshare(2) with a plain flag; it only changes this thread's network
        // namespace. The runtime's threads, the node's (VM threads included) and the `ip`
        // children all start from this thread and so live in the private namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "skipped: cannot create a network namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        rt.block_on(nic_end_to_end())
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
    match r {
        Ok(()) => {}
        Err(e) if e.starts_with("skipped:") => println!("{e}"),
        Err(e) => panic!("{e}"),
    }
}
