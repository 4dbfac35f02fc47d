//! Transport over real TLS on 127.0.0.x: calls, multiplexing with bounded in-flight, streaming,
//! rejection of peers without a cluster certificate, timeouts and reconnect.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use transport::{
    client_tls_config, node_server_name, server_tls_config, Client, ClientConfig, ClusterCa, Error,
    Handler, NodeIdentity, RemoteError, Server, ServerConfig, ServerHandle, StreamRx,
    CLUSTER_SERVER_NAME,
};

#[derive(Debug, Serialize, Deserialize)]
enum Req {
    Echo(String),
    WhoAmI,
    Sleep(u64),
    Upload,
    Fail,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Resp {
    Echo(String),
    Peer(u64),
    Slept,
    Uploaded { bytes: u64, sum: u64 },
}

#[derive(Default)]
struct TestHandler {
    calls: AtomicUsize,
    active: AtomicUsize,
    max_active: AtomicUsize,
}

impl Handler for TestHandler {
    type Request = Req;
    type Response = Resp;
    async fn handle(
        &self,
        peer: Option<u64>,
        req: Req,
        body: Option<StreamRx>,
    ) -> Result<Resp, RemoteError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_active.fetch_max(now, Ordering::SeqCst);
        let r = match req {
            Req::Echo(s) => Ok(Resp::Echo(s)),
            Req::WhoAmI => Ok(Resp::Peer(
                peer.ok_or_else(|| RemoteError("anonymous".into()))?,
            )),
            Req::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Resp::Slept)
            }
            Req::Upload => {
                let mut body = body.ok_or_else(|| RemoteError("no body".into()))?;
                let (mut bytes, mut sum) = (0u64, 0u64);
                while let Some(chunk) = body.next_chunk().await? {
                    // Slow consumer: the sender must wait for credit.
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    bytes += chunk.len() as u64;
                    sum = chunk
                        .iter()
                        .fold(sum, |s, b| s.wrapping_mul(31).wrapping_add(u64::from(*b)));
                }
                Ok(Resp::Uploaded { bytes, sum })
            }
            Req::Fail => Err(RemoteError("refused".into())),
        };
        self.active.fetch_sub(1, Ordering::SeqCst);
        r
    }
}

async fn serve(ip: &str, id: &NodeIdentity, cfg: ServerConfig) -> (ServerHandle, Arc<TestHandler>) {
    let handler = Arc::new(TestHandler::default());
    let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
    let h = Server::bind(addr, server_tls_config(id).unwrap(), cfg, handler.clone())
        .await
        .unwrap();
    (h, handler)
}

fn client(
    addr: SocketAddr,
    me: &NodeIdentity,
    target: u64,
    cfg: ClientConfig,
) -> Client<Req, Resp> {
    Client::new(
        addr,
        node_server_name(target),
        client_tls_config(me).unwrap(),
        cfg,
    )
}

#[tokio::test]
async fn call_echo_and_peer_identity() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (ca.issue(1).unwrap(), ca.issue(2).unwrap());
    let (srv, h) = serve("127.0.0.2", &a, ServerConfig::default()).await;
    let c = client(srv.local_addr(), &b, 1, ClientConfig::default());
    assert_eq!(
        c.call(&Req::Echo("hi".into())).await.unwrap(),
        Resp::Echo("hi".into())
    );
    assert_eq!(c.call(&Req::WhoAmI).await.unwrap(), Resp::Peer(2));
    assert!(matches!(c.call(&Req::Fail).await, Err(Error::Remote(m)) if m == "refused"));
    // The connection survives a handler error.
    assert_eq!(c.call(&Req::WhoAmI).await.unwrap(), Resp::Peer(2));
    assert_eq!(h.calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn server_name_must_match_target_node() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (ca.issue(1).unwrap(), ca.issue(2).unwrap());
    let (srv, _h) = serve("127.0.0.3", &a, ServerConfig::default()).await;
    let wrong = client(srv.local_addr(), &b, 7, ClientConfig::default());
    assert!(matches!(wrong.connect().await, Err(Error::Connect { .. })));
    let any = Client::<Req, Resp>::new(
        srv.local_addr(),
        CLUSTER_SERVER_NAME.try_into().unwrap(),
        client_tls_config(&b).unwrap(),
        ClientConfig::default(),
    );
    assert_eq!(any.call(&Req::WhoAmI).await.unwrap(), Resp::Peer(2));
}

#[tokio::test]
async fn many_concurrent_calls_are_multiplexed_and_bounded() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (ca.issue(1).unwrap(), ca.issue(2).unwrap());
    let (srv, h) = serve("127.0.0.4", &a, ServerConfig::default()).await;
    let cfg = ClientConfig {
        max_in_flight: 4,
        ..ClientConfig::default()
    };
    let c = client(srv.local_addr(), &b, 1, cfg);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { c.call(&Req::Sleep(5)).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Resp::Slept);
    }
    assert_eq!(h.calls.load(Ordering::SeqCst), 40);
    let max = h.max_active.load(Ordering::SeqCst);
    assert!(max <= 4, "client allowed {max} in flight");
    assert!(
        max >= 2,
        "calls were not concurrent on the one connection (max {max})"
    );
}

#[tokio::test]
async fn server_bounds_in_flight_per_connection() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (ca.issue(1).unwrap(), ca.issue(2).unwrap());
    let scfg = ServerConfig {
        max_in_flight_per_conn: 3,
        ..ServerConfig::default()
    };
    let (srv, h) = serve("127.0.0.5", &a, scfg).await;
    let c = client(
        srv.local_addr(),
        &b,
        1,
        ClientConfig {
            max_in_flight: 32,
            ..Default::default()
        },
    );
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { c.call(&Req::Sleep(5)).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Resp::Slept);
    }
    assert!(h.max_active.load(Ordering::SeqCst) <= 3);
}

#[tokio::test]
async fn streaming_upload_with_flow_control() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (ca.issue(1).unwrap(), ca.issue(2).unwrap());
    let scfg = ServerConfig {
        stream_window_chunks: 2,
        ..ServerConfig::default()
    };
    let (srv, _h) = serve("127.0.0.6", &a, scfg).await;
    let c = client(
        srv.local_addr(),
        &b,
        1,
        ClientConfig {
            chunk_bytes: 16 * 1024,
            ..Default::default()
        },
    );
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let want = data
        .iter()
        .fold(0u64, |s, b| s.wrapping_mul(31).wrapping_add(u64::from(*b)));
    let mut rd = &data[..];
    let r = c
        .call_streaming(&Req::Upload, &mut rd, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        r,
        Resp::Uploaded {
            bytes: data.len() as u64,
            sum: want
        }
    );
    // Plain calls still work on the same connection afterwards.
    assert_eq!(c.call(&Req::WhoAmI).await.unwrap(), Resp::Peer(2));
}

#[tokio::test]
async fn timeout_then_connection_still_usable() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (ca.issue(1).unwrap(), ca.issue(2).unwrap());
    let (srv, _h) = serve("127.0.0.7", &a, ServerConfig::default()).await;
    let c = client(srv.local_addr(), &b, 1, ClientConfig::default());
    let r = c
        .call_timeout(&Req::Sleep(2000), Duration::from_millis(100))
        .await;
    assert!(matches!(r, Err(Error::Timeout { timeout_ms: 100 })));
    assert_eq!(
        c.call(&Req::Echo("x".into())).await.unwrap(),
        Resp::Echo("x".into())
    );
}

#[tokio::test]
async fn reconnects_after_server_restart() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (ca.issue(1).unwrap(), ca.issue(2).unwrap());
    let (srv, _h) = serve("127.0.0.8", &a, ServerConfig::default()).await;
    let addr = srv.local_addr();
    let c = client(
        addr,
        &b,
        1,
        ClientConfig {
            call_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    );
    assert_eq!(c.call(&Req::WhoAmI).await.unwrap(), Resp::Peer(2));
    drop(srv);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(c.call(&Req::WhoAmI).await.is_err(), "server is down");
    let h2 = Arc::new(TestHandler::default());
    let _srv2 = Server::bind(
        addr,
        server_tls_config(&a).unwrap(),
        ServerConfig::default(),
        h2.clone(),
    )
    .await
    .unwrap();
    assert_eq!(c.call(&Req::WhoAmI).await.unwrap(), Resp::Peer(2));
    assert_eq!(h2.calls.load(Ordering::SeqCst), 1);
}

/// Peers without a certificate from this cluster's CA get nothing: the handshake fails and
/// the handler is never reached.
#[tokio::test]
async fn peers_without_valid_certificate_are_refused() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = ca.issue(1).unwrap();
    let (srv, h) = serve("127.0.0.9", &a, ServerConfig::default()).await;
    let addr = srv.local_addr();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(a.ca_cert_der.clone().into()).unwrap();
    let roots = Arc::new(roots);

    // 1. No client certificate at all.
    let no_cert = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    // 2. A self-signed certificate claiming to be node 2.
    let key = rcgen::KeyPair::generate().unwrap();
    let selfsigned = rcgen::CertificateParams::new(vec!["node-2.cairn".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let ss_id = NodeIdentity::from_parts(
        2,
        selfsigned.der().to_vec(),
        key.serialize_der(),
        a.ca_cert_der.clone(),
    );
    let self_signed = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(vec![ss_id.chain()[0].clone()], ss_id.key())
        .unwrap();
    // 3. A proper node certificate from another cluster's CA.
    let other = ClusterCa::generate("other").unwrap().issue(2).unwrap();
    let other_ca = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(other.chain(), other.key())
        .unwrap();

    for (name, cfg) in [
        ("no cert", no_cert),
        ("self-signed", self_signed),
        ("other CA", other_ca),
    ] {
        let c = Client::<Req, Resp>::new(
            addr,
            node_server_name(1),
            Arc::new(cfg),
            ClientConfig {
                call_timeout: Duration::from_secs(2),
                ..Default::default()
            },
        );
        let r = c.call(&Req::WhoAmI).await;
        assert!(r.is_err(), "{name}: a call got through: {r:?}");
    }
    assert_eq!(
        h.calls.load(Ordering::SeqCst),
        0,
        "a rejected peer reached the handler"
    );

    // And the other direction: a member of another cluster serving, our node calling.
    let (osrv, oh) = serve("127.0.0.10", &other, ServerConfig::default()).await;
    let c = client(osrv.local_addr(), &a, 2, ClientConfig::default());
    assert!(matches!(c.connect().await, Err(Error::Connect { .. })));
    assert_eq!(oh.calls.load(Ordering::SeqCst), 0);
}

/// Raw garbage on the wire after a valid handshake closes the connection; the server stays up.
#[tokio::test]
async fn garbage_frames_close_connection_not_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (ca.issue(1).unwrap(), ca.issue(2).unwrap());
    let (srv, h) = serve("127.0.0.11", &a, ServerConfig::default()).await;
    let tcp = tokio::net::TcpStream::connect(srv.local_addr())
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client_tls_config(&b).unwrap())
        .connect(node_server_name(1), tcp)
        .await
        .unwrap();
    // A frame claiming 4 GiB.
    tls.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0])
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "server should close the connection");
    let c = client(srv.local_addr(), &b, 1, ClientConfig::default());
    assert_eq!(c.call(&Req::WhoAmI).await.unwrap(), Resp::Peer(2));
    assert_eq!(h.calls.load(Ordering::SeqCst), 1);
}

/// A TCP relay that can cut its current connections without closing them: bytes on a cut
/// connection are swallowed, as on a partitioned link whose TCP session has not yet noticed.
/// Connections made after the cut are relayed normally (the link has healed).
struct Relay {
    addr: SocketAddr,
    cut_before: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl Relay {
    async fn start(ip: &str, target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind(format!("{ip}:0"))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let cut_before = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (cut, acc) = (cut_before.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let n = acc.fetch_add(1, Ordering::SeqCst) + 1;
                let outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pump(ri, wo, n, cut.clone()));
                tokio::spawn(pump(ro, wi, n, cut.clone()));
            }
        });
        Relay {
            addr,
            cut_before,
            accepted,
        }
    }

    /// Every connection accepted so far goes silent for good.
    fn cut_existing(&self) {
        self.cut_before
            .store(self.accepted.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    conn_no: usize,
    cut_before: Arc<AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if conn_no < cut_before.load(Ordering::SeqCst) {
            continue; // swallowed: the link is cut for this connection
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// After a call times out on a connection that has gone completely silent (a partition), the
/// next call must dial a new connection rather than queue behind the dead one.
#[tokio::test]
async fn silent_connection_is_replaced_after_a_timeout() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (ca.issue(1).unwrap(), ca.issue(2).unwrap());
    let (srv, h) = serve("127.0.0.11", &a, ServerConfig::default()).await;
    let relay = Relay::start("127.0.0.11", srv.local_addr()).await;
    let c = client(relay.addr, &b, 1, ClientConfig::default());
    assert_eq!(c.call(&Req::WhoAmI).await.unwrap(), Resp::Peer(2));
    relay.cut_existing();
    let r = c
        .call_timeout(&Req::Echo("lost".into()), Duration::from_millis(300))
        .await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    // The link is back for new connections; the old one stays a black hole.
    let r = c
        .call_timeout(&Req::Echo("again".into()), Duration::from_secs(3))
        .await;
    assert_eq!(r.unwrap(), Resp::Echo("again".into()));
    assert_eq!(
        relay.accepted.load(Ordering::SeqCst),
        2,
        "one new connection"
    );
    assert_eq!(
        h.calls.load(Ordering::SeqCst),
        2,
        "the cut request never arrived"
    );
}

/// A slow request that times out on a connection still carrying other replies does not tear
/// the connection down under its neighbours.
#[tokio::test]
async fn a_slow_call_timing_out_keeps_a_live_connection() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (ca.issue(1).unwrap(), ca.issue(2).unwrap());
    let (srv, _h) = serve("127.0.0.12", &a, ServerConfig::default()).await;
    let relay = Relay::start("127.0.0.12", srv.local_addr()).await;
    let c = client(relay.addr, &b, 1, ClientConfig::default());
    let slow = c.call_timeout(&Req::Sleep(5_000), Duration::from_millis(400));
    let busy = async {
        for i in 0..8 {
            let s = format!("{i}");
            assert_eq!(c.call(&Req::Echo(s.clone())).await.unwrap(), Resp::Echo(s));
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
    };
    let (r, ()) = tokio::join!(slow, busy);
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    c.call(&Req::WhoAmI).await.unwrap();
    assert_eq!(relay.accepted.load(Ordering::SeqCst), 1, "same connection");
}

/// A short call timing out on a connection where a long call still waits and nothing arrived
/// meanwhile (a peer busy with the long request on a loaded machine, a raft heartbeat beside a
/// forwarded VM move): before, the connection was closed and the long call failed with it
/// although the peer went on to answer. Now new calls go to a new connection and the long
/// call gets its answer on the old one.
#[tokio::test]
async fn a_short_call_timing_out_does_not_fail_a_long_one_waiting_beside_it() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (ca.issue(1).unwrap(), ca.issue(2).unwrap());
    let (srv, h) = serve("127.0.0.17", &a, ServerConfig::default()).await;
    let relay = Relay::start("127.0.0.17", srv.local_addr()).await;
    let c = client(relay.addr, &b, 1, ClientConfig::default());
    assert_eq!(c.call(&Req::WhoAmI).await.unwrap(), Resp::Peer(2));
    let long = c.call_timeout(&Req::Sleep(1500), Duration::from_secs(20));
    let short = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.call_timeout(&Req::Sleep(5_000), Duration::from_millis(300))
            .await
    };
    let (l, s) = tokio::join!(long, short);
    assert!(matches!(s, Err(Error::Timeout { .. })), "{s:?}");
    assert_eq!(l.unwrap(), Resp::Slept, "the long call's answer");
    assert_eq!(c.call(&Req::WhoAmI).await.unwrap(), Resp::Peer(2));
    assert_eq!(
        relay.accepted.load(Ordering::SeqCst),
        2,
        "new calls went to a new connection"
    );
    assert_eq!(h.calls.load(Ordering::SeqCst), 4);
}

/// Many calls in flight at once on one connection (their requests and replies share writes):
/// each gets its own answer — the refusals among them touch no other call — and when the
/// server dies with a burst in flight, every call not yet answered fails; none is reported
/// done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_calls_succeeds_and_fails_call_by_call() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (ca.issue(1).unwrap(), ca.issue(2).unwrap());
    let (srv, h) = serve("127.0.0.13", &a, ServerConfig::default()).await;
    let c = client(srv.local_addr(), &b, 1, ClientConfig::default());
    let mut tasks = Vec::new();
    for i in 0..60u32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let req = if i % 3 == 0 {
                Req::Fail
            } else {
                Req::Echo(format!("call {i}"))
            };
            (i, c.call(&req).await)
        }));
    }
    for t in tasks {
        match t.await.unwrap() {
            (i, Err(Error::Remote(m))) if i % 3 == 0 => assert_eq!(m, "refused"),
            (i, Ok(r)) if i % 3 != 0 => assert_eq!(r, Resp::Echo(format!("call {i}"))),
            (i, other) => panic!("call {i}: {other:?}"),
        }
    }
    assert_eq!(h.calls.load(Ordering::SeqCst), 60);

    // The server dies while 32 calls wait for their answers.
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let c = c.clone();
        tasks.push(tokio::spawn(
            async move { c.call(&Req::Sleep(60_000)).await },
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while h.active.load(Ordering::SeqCst) < 32 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "calls never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    srv.shutdown();
    for t in tasks {
        let r = t.await.unwrap();
        assert!(matches!(r, Err(Error::Closed)), "{r:?}");
    }
}

/// Waits (generously: the machine may be loaded) until no handler of `h` is running; panics
/// after 60 s. A handler cut off half-way never gets there.
async fn wait_idle(h: &TestHandler, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while h.active.load(Ordering::SeqCst) != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: a running request was cut off"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn requests_run_to_their_end_when_the_connection_goes() {
    // Requests run inside the connection's task: when the connection ends (the peer hangs up,
    // or the server shuts down) the requests already started must still finish, as they would
    // in tasks of their own (a store write must not be dropped half-way).
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (ca.issue(1).unwrap(), ca.issue(2).unwrap());
    for shutdown in [false, true] {
        let (srv, h) = serve("127.0.0.14", &a, ServerConfig::default()).await;
        let c = client(srv.local_addr(), &b, 1, ClientConfig::default());
        let call = {
            let c = c.clone();
            tokio::spawn(async move { c.call(&Req::Sleep(1500)).await })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while h.active.load(Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "call never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if shutdown {
            srv.shutdown();
        } else {
            c.disconnect().await;
        }
        assert!(matches!(call.await.unwrap(), Err(Error::Closed)));
        wait_idle(&h, if shutdown { "shutdown" } else { "hang-up" }).await;
        assert_eq!(h.calls.load(Ordering::SeqCst), 1);
        drop(srv);
    }
}

#[tokio::test]
async fn replies_to_a_caller_that_reads_late_all_arrive_whole_and_in_order() {
    // A caller that sends a burst and reads only later fills the socket (24 MiB of replies),
    // so the server's writes stop half-way and resume while it stops reading; every reply must
    // still arrive whole, once, and a streamed request's credit frames (sent by its handler)
    // must come before its reply.
    use tokio::io::AsyncWriteExt;
    use transport::{encode, Frame, FrameKind};
    const MAX: u32 = 16 * 1024 * 1024;
    const N: u64 = 96;
    let text = |id: u64| {
        char::from(b'a' + (id % 26) as u8)
            .to_string()
            .repeat(256 * 1024)
    };
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (ca.issue(1).unwrap(), ca.issue(2).unwrap());
    let (srv, h) = serve("127.0.0.15", &a, ServerConfig::default()).await;
    let tcp = tokio::net::TcpStream::connect(srv.local_addr())
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_tls_config(&b).unwrap())
        .connect(node_server_name(1), tcp)
        .await
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        let mut buf = Vec::new();
        let upload = encode(&Req::Upload, u64::from(MAX)).unwrap();
        Frame::new(FrameKind::StreamRequest, 0, upload)
            .encode_into(&mut buf, MAX)
            .unwrap();
        for c in 0..3u8 {
            Frame::new(FrameKind::Chunk, 0, vec![c; 1000])
                .encode_into(&mut buf, MAX)
                .unwrap();
        }
        Frame::new(FrameKind::End, 0, Vec::new())
            .encode_into(&mut buf, MAX)
            .unwrap();
        for id in 1..=N {
            let req = encode(&Req::Echo(text(id)), u64::from(MAX)).unwrap();
            Frame::new(FrameKind::Request, id, req)
                .encode_into(&mut buf, MAX)
                .unwrap();
        }
        // Blocks once the server stops reading (its replies are not being taken).
        wr.write_all(&buf).await.unwrap();
        wr.flush().await.unwrap();
        wr
    });
    // Let the replies pile up before reading any (how far they get does not matter).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut echoed = std::collections::BTreeSet::new();
    let (mut credits, mut uploaded) = (0, None);
    while echoed.len() < N as usize || uploaded.is_none() {
        let f = tokio::time::timeout(Duration::from_secs(30), Frame::read_from(&mut rd, MAX))
            .await
            .expect("a reply never came")
            .unwrap()
            .expect("the server closed the connection");
        match (f.kind, f.id) {
            (FrameKind::Credit, 0) => {
                assert_eq!(uploaded, None, "a credit frame came after its reply");
                credits += 1;
            }
            (FrameKind::Response, 0) => {
                let r: Resp = transport::decode(&f.payload, u64::from(MAX)).unwrap();
                uploaded = Some(r);
            }
            (FrameKind::Response, id) => {
                let r: Resp = transport::decode(&f.payload, u64::from(MAX)).unwrap();
                assert_eq!(r, Resp::Echo(text(id)), "reply {id}");
                assert!(echoed.insert(id), "reply {id} came twice");
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    // The first window, then one credit per chunk the handler took.
    assert_eq!(credits, 4);
    let sum = (0..3u8).fold(0u64, |s, c| {
        (0..1000).fold(s, |s, _| s.wrapping_mul(31).wrapping_add(u64::from(c)))
    });
    assert_eq!(uploaded, Some(Resp::Uploaded { bytes: 3000, sum }));
    assert_eq!(echoed, (1..=N).collect());
    assert_eq!(h.calls.load(Ordering::SeqCst), N as usize + 1);
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn requests_of_mixed_sizes_on_one_connection_each_get_their_own_reply() {
    // The server reads every request into one reused buffer and the client encodes into
    // buffers its writer hands back: long and short requests, and one that does not decode,
    // all at once on one connection, each answered with exactly its own bytes.
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (ca.issue(1).unwrap(), ca.issue(2).unwrap());
    let (srv, h) = serve("127.0.0.16", &a, ServerConfig::default()).await;
    let c = client(srv.local_addr(), &b, 1, ClientConfig::default());
    let text = |i: usize| {
        let len = if i.is_multiple_of(3) { 20_000 + i } else { i };
        char::from(b'a' + (i % 26) as u8).to_string().repeat(len)
    };
    let calls = (0..48).map(|i| {
        let c = c.clone();
        async move {
            if i == 17 {
                // Not a request at all: refused by the server, the connection lives on.
                let r = c
                    .call_encoded(vec![0xff; 64], Duration::from_secs(10))
                    .await;
                match &r {
                    Err(Error::Remote(m)) => assert!(m.starts_with("bad request"), "{m}"),
                    other => panic!("expected the server's bad-request refusal, got {other:?}"),
                }
            } else {
                let r = c.call(&Req::Echo(text(i))).await.unwrap();
                assert_eq!(r, Resp::Echo(text(i)), "call {i}");
            }
        }
    });
    futures::future::join_all(calls).await;
    assert_eq!(h.calls.load(Ordering::SeqCst), 47);
    // A sent request's buffer came back for the next one: it is empty, with room already.
    assert_eq!(
        c.call(&Req::Echo(text(3))).await.unwrap(),
        Resp::Echo(text(3))
    );
    let reused = c.encode(&Req::WhoAmI).unwrap();
    assert!(reused.capacity() > 1000, "capacity {}", reused.capacity());
    assert_eq!(
        c.call_encoded(reused, Duration::from_secs(10))
            .await
            .unwrap(),
        Resp::Peer(2)
    );
}

/// A handler with a batch ([`Handler::batch`]) whose requests can only finish once no batch is
/// held: the server must let go of the batch whenever it would wait.
#[derive(Default)]
struct Batching {
    /// Batches held now.
    live: Arc<AtomicUsize>,
    taken: AtomicUsize,
    calls: AtomicUsize,
    /// Requests whose handler first ran while no batch was held.
    outside: AtomicUsize,
    /// Requests started under the latest batch, and the most under any one.
    in_batch: AtomicUsize,
    most_in_batch: AtomicUsize,
}

struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Handler for Batching {
    type Request = Req;
    type Response = Resp;
    async fn handle(
        &self,
        _peer: Option<u64>,
        req: Req,
        _body: Option<StreamRx>,
    ) -> Result<Resp, RemoteError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.live.load(Ordering::SeqCst) == 0 {
            self.outside.fetch_add(1, Ordering::SeqCst);
        } else {
            let n = self.in_batch.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_batch.fetch_max(n, Ordering::SeqCst);
        }
        // Like a device request held back by a plug: it only gets on once the batch is gone.
        while self.live.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        match req {
            Req::Echo(s) => Ok(Resp::Echo(s)),
            _ => Err(RemoteError("unexpected".into())),
        }
    }

    fn batch(&self) -> Option<transport::Batch> {
        self.live.fetch_add(1, Ordering::SeqCst);
        self.taken.fetch_add(1, Ordering::SeqCst);
        self.in_batch.store(0, Ordering::SeqCst);
        Some(Box::new(Held(self.live.clone())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_together_start_under_one_batch_released_before_waiting() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (ca.issue(1).unwrap(), ca.issue(2).unwrap());
    let handler = Arc::new(Batching::default());
    let addr: SocketAddr = "127.0.0.18:0".parse().unwrap();
    let srv = Server::bind(
        addr,
        server_tls_config(&a).unwrap(),
        ServerConfig::default(),
        handler.clone(),
    )
    .await
    .unwrap();
    let cfg = ClientConfig {
        call_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    };
    let c = client(srv.local_addr(), &b, 1, cfg);
    c.connect().await.unwrap();
    let mut sent = 0;
    for burst in 0..20 {
        // Queued for the connection's writer together, so they travel in few TLS records.
        let calls = (0..48).map(|i| {
            let c = c.clone();
            async move { c.call(&Req::Echo(format!("{burst}/{i}"))).await }
        });
        for (i, r) in futures::future::join_all(calls)
            .await
            .into_iter()
            .enumerate()
        {
            // A batch held while the connection waited would leave these hanging (timeout).
            assert_eq!(r.unwrap(), Resp::Echo(format!("{burst}/{i}")));
        }
        sent += 48;
        if handler.taken.load(Ordering::SeqCst) < sent {
            break;
        }
    }
    assert_eq!(handler.calls.load(Ordering::SeqCst), sent);
    assert_eq!(
        handler.outside.load(Ordering::SeqCst),
        0,
        "every request is started under a batch"
    );
    let taken = handler.taken.load(Ordering::SeqCst);
    assert!(
        taken < sent,
        "{sent} requests sent in bursts took {taken} batches: none shared one"
    );
    let most = handler.most_in_batch.load(Ordering::SeqCst);
    assert!(
        most <= transport::MAX_BATCH,
        "{most} requests started under one batch, more than MAX_BATCH"
    );
    assert_eq!(
        handler.live.load(Ordering::SeqCst),
        0,
        "no batch is left held"
    );
}

/// `call_encoded_noting` says whether the request was handed to a connection: not when
/// nothing could be reached (a caller giving such a call up knows nothing can land), yes when
/// it went out.
#[tokio::test]
async fn a_call_says_whether_its_request_left() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (ca.issue(1).unwrap(), ca.issue(2).unwrap());
    let closed = std::net::TcpListener::bind("127.0.0.18:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let c = client(closed, &b, 1, ClientConfig::default());
    let sent = std::sync::atomic::AtomicBool::new(false);
    let payload = c.encode(&Req::WhoAmI).unwrap();
    let r = c
        .call_encoded_noting(payload, Duration::from_secs(5), &sent)
        .await;
    assert!(r.is_err(), "{r:?}");
    assert!(!sent.load(Ordering::Acquire), "nothing listened there");
    let (srv, _h) = serve("127.0.0.18", &a, ServerConfig::default()).await;
    let c = client(srv.local_addr(), &b, 1, ClientConfig::default());
    let payload = c.encode(&Req::WhoAmI).unwrap();
    let r = c
        .call_encoded_noting(payload, Duration::from_secs(5), &sent)
        .await;
    assert_eq!(r.unwrap(), Resp::Peer(2));
    assert!(sent.load(Ordering::Acquire));
}
