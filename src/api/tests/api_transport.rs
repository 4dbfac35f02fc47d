//! Transport: TLS 1.3 and 1.2 accepted (older refused), HTTP/2 by ALPN, the live statistics
//! stream (SSE) delivers samples, and the UI is served compressed.

mod common;
use bytes::Bytes;
use common::Harness;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use std::time::Duration;

fn client_cfg(
    h: &Harness,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(h.dir.path().join("api/tls/cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

async fn connect(
    h: &Harness,
    cfg: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_versions_http2_and_sse() {
    let h = Harness::start().await.unwrap();
    // TLS 1.3 and 1.2 both work.
    let t13 = connect(&h, client_cfg(&h, &[&rustls::version::TLS13], &[])).await;
    assert_eq!(
        t13.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let t12 = connect(&h, client_cfg(&h, &[&rustls::version::TLS12], &[])).await;
    assert_eq!(
        t12.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let suite = t12.get_ref().1.negotiated_cipher_suite().unwrap();
    assert!(
        format!("{:?}", suite.suite()).contains("ECDHE"),
        "forward secrecy: {:?}",
        suite.suite()
    );
    // TLS 1.1 is refused (checked with openssl when it is installed).
    match std::process::Command::new("openssl")
        .args(["s_client", "-connect", &h.addr.to_string(), "-tls1_1"])
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            // No cipher agreed and no certificate sent: the handshake failed.
            assert!(
                !out.status.success() || text.contains("Cipher is (NONE)"),
                "{text}"
            );
            assert!(text.contains("no peer certificate available"), "{text}");
        }
        Err(_) => println!("skipped: TLS 1.1 refusal (no openssl)"),
    }

    // HTTP/2 by ALPN.
    let tls = connect(
        &h,
        client_cfg(&h, &[&rustls::version::TLS13], &[b"h2", b"http/1.1"]),
    )
    .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://localhost/api/v1/health")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert!(resp.headers().get("strict-transport-security").is_some());

    // The UI (or the "not built" page) is served, gzip when asked.
    let c = h.client();
    let r = c
        .call("GET", "/", None, &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"));

    // Live statistics over SSE: at least two samples arrive (sampling is every 200 ms here).
    let a = h.admin().await;
    let tls = connect(&h, client_cfg(&h, &[&rustls::version::TLS13], &[])).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/api/v1/stats/stream")
        .header("host", "localhost")
        .header("cookie", a.cookie.clone().unwrap())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut text = String::new();
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        while text.matches("event: sample").count() < 3 {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Some(d) = f.data_ref() {
                        text.push_str(&String::from_utf8_lossy(d));
                    }
                }
                _ => break,
            }
        }
    })
    .await;
    assert!(got.is_ok(), "no samples within 20 s: {text}");
    let first = text
        .split("data: ")
        .nth(1)
        .unwrap()
        .split('\n')
        .next()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(first).unwrap();
    assert!(v["mem_total_bytes"].as_u64().unwrap() > 0);
    assert!(v["time_ms"].as_u64().unwrap() > 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_client_over_https() {
    let h = Harness::start().await.unwrap();
    let a = h.admin().await;
    let t = a
        .post(
            "/api/v1/tokens",
            serde_json::json!({"name": "cli", "role": "operator"}),
        )
        .await;
    let token = t.json["token"].as_str().unwrap().to_string();
    let ca = std::fs::read(h.dir.path().join("api/tls/cert.pem")).unwrap();
    let url = format!("https://127.0.0.1:{}", h.addr.port());
    let req = control::Request::VdiskCreate {
        name: "cli1".into(),
        size_bytes: 8 << 20,
    };
    let r = api::client::call(&url, &token, &ca, &req).await.unwrap();
    assert!(
        matches!(r, control::Reply::Vdisk(ref v) if v.name == "cli1"),
        "{r:?}"
    );
    let r = api::client::call(&url, &token, &ca, &control::Request::VdiskList)
        .await
        .unwrap();
    assert!(matches!(r, control::Reply::Vdisks(ref v) if v.len() == 1));
    // Errors keep their code; the role policy applies (operator may not add disks).
    let e = api::client::call(
        &url,
        &token,
        &ca,
        &control::Request::VdiskGet {
            name: "nope".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, control::ErrorCode::NotFound);
    let e = api::client::call(
        &url,
        &token,
        &ca,
        &control::Request::DiskAdd { path: "/x".into() },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, control::ErrorCode::Forbidden);
    let e = api::client::call(&url, "cairn_bad", &ca, &control::Request::VdiskList)
        .await
        .unwrap_err();
    assert_eq!(e.code, control::ErrorCode::Unauthorized);
    // A certificate we do not trust is refused before any request is sent.
    let (other, _) = api::tls::self_signed().unwrap();
    let e = api::client::call(&url, &token, other.as_bytes(), &control::Request::VdiskList)
        .await
        .unwrap_err();
    assert_eq!(e.code, control::ErrorCode::Unavailable);
    assert!(e.message.contains("TLS"), "{}", e.message);
    // The audit log names the token.
    let audit = a.get("/api/v1/audit?limit=100").await;
    assert!(
        audit.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "vdisk_create"
                && e["via"].as_str().unwrap().starts_with("token:"))
    );
    h.stop().await;
}

/// A node whose address changes after its certificate was made (a new DHCP lease): a client
/// that saved the node's certificate before reaches it through the new address, without an
/// "insecure" switch. The node names the address in a certificate it re-issues with the same
/// key, so even a client that checks names the way a browser does (rustls's own verifier, no
/// pinning rule) accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reach_the_node_through_an_address_its_certificate_did_not_name() {
    use rustls::pki_types::pem::PemObject;
    // 127.0.0.2 is a loopback address but not one of the host's /32 local routes, so the
    // certificate made at start does not name it.
    let h = Harness::start_on("127.0.0.2:0".parse().unwrap(), |_| {})
        .await
        .unwrap();
    let pinned = std::fs::read(h.dir.path().join("api/tls/cert.pem")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pinned).unwrap();
    let at_start = pem.parse_x509().unwrap();
    let san = at_start.subject_alternative_name().unwrap().unwrap();
    let named = |ip: [u8; 4]| {
        san.value
            .general_names
            .iter()
            .any(|n| matches!(n, x509_parser::extensions::GeneralName::IPAddress(a) if *a == ip))
    };
    assert!(named([127, 0, 0, 1]), "{san:?}");
    assert!(!named([127, 0, 0, 2]), "{san:?}");

    // rustls's standard verifier, trusting the certificate saved at start, checking the name.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pinned) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.2").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await;
    assert!(tls.is_ok(), "{:?}", tls.err());

    let a = h.admin().await;
    let cert = a.get("/api/v1/certificate").await;
    let names = cert.json["names"].as_array().unwrap();
    assert!(names.iter().any(|n| n == "127.0.0.2"), "{}", cert.text);
    let now = rustls::pki_types::CertificateDer::from_pem_slice(
        cert.json["cert_pem"].as_str().unwrap().as_bytes(),
    )
    .unwrap();
    assert_eq!(
        x509_parser::parse_x509_certificate(&now)
            .unwrap()
            .1
            .public_key()
            .raw,
        at_start.public_key().raw,
        "same key"
    );

    // The CLI's client, with the saved certificate as its --ca-cert.
    let t = a
        .post(
            "/api/v1/tokens",
            serde_json::json!({"name": "cli", "role": "operator"}),
        )
        .await;
    let token = t.json["token"].as_str().unwrap().to_string();
    let url = format!("https://127.0.0.2:{}", h.addr.port());
    let r = api::client::call(&url, &token, &pinned, &control::Request::VdiskList).await;
    assert!(matches!(r, Ok(control::Reply::Vdisks(_))), "{r:?}");
    // Still no accept-anything: a certificate the client does not trust is refused there.
    let (other, _) = api::tls::self_signed().unwrap();
    let e = api::client::call(&url, &token, other.as_bytes(), &control::Request::VdiskList)
        .await
        .unwrap_err();
    assert!(e.message.contains("TLS"), "{}", e.message);
    h.stop().await;
}

/// The handle's certificate store is the one the server serves from: the appliance's PID 1
/// re-issues through it when the management address changes, before any connection arrives
/// on the new address (so its console shows the certificate that will be served), and the
/// next handshake and GET /certificate give that certificate, with the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reissue_through_the_handle_is_served_at_the_next_handshake() {
    use rustls::pki_types::pem::PemObject;
    let h = Harness::start().await.unwrap();
    let certs = h.api.as_ref().unwrap().certs();
    let before = certs.info();
    let ip: std::net::IpAddr = "192.0.2.77".parse().unwrap();
    assert!(
        !before.names.contains(&ip.to_string()),
        "{:?}",
        before.names
    );
    assert!(certs.name_address(ip).unwrap());

    let pem = std::fs::read(h.dir.path().join("api/tls/cert.pem")).unwrap();
    let in_file = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    let fp = api::tls::pem_fingerprints(&pem).unwrap();
    assert_ne!(
        fp.certificate, before.sha256_fingerprint,
        "a new certificate"
    );
    assert_eq!(fp.key, before.key_sha256, "the same key");
    let tls = connect(
        &h,
        client_cfg(&h, &[&rustls::version::TLS13], &[b"http/1.1"]),
    )
    .await;
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(
        served, in_file,
        "the handshake serves the re-issued certificate"
    );
    drop(tls);

    let a = h.admin().await;
    let shown = a.get("/api/v1/certificate").await;
    assert_eq!(shown.json["sha256_fingerprint"], fp.certificate.as_str());
    let names = shown.json["names"].as_array().unwrap();
    assert!(names.iter().any(|n| n == "192.0.2.77"), "{}", shown.text);
    h.stop().await;
}
