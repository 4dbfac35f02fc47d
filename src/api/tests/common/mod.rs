//! Test harness: a real node (small file-backed disks in a temp dir) with the HTTPS API on
//! 127.0.0.1, and a small HTTPS client that trusts the node's own certificate.
#![allow(dead_code)]

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub node: Option<node::Node>,
    pub api: Option<api::ApiHandle>,
    pub addr: SocketAddr,
    pub admin_password: String,
    pub tls: tokio_rustls::TlsConnector,
}

impl Harness {
    pub async fn start() -> Result<Harness> {
        Harness::start_with(|_| {}).await
    }

    /// Like [`Harness::start`], with the node's configuration changed by `tune` first.
    pub async fn start_with(tune: impl FnOnce(&mut node::NodeConfig)) -> Result<Harness> {
        Harness::start_on("127.0.0.1:0".parse()?, tune).await
    }

    /// Like [`Harness::start_with`], with the API listening on `listen`.
    pub async fn start_on(
        listen: SocketAddr,
        tune: impl FnOnce(&mut node::NodeConfig),
    ) -> Result<Harness> {
        let dir = tempfile::tempdir()?;
        let mut cfg = node::NodeConfig::new(dir.path().join("data"));
        cfg.disk_count = 2;
        cfg.disk_size_bytes = node::MIN_DISK_SIZE_BYTES.max(128 << 20);
        cfg.api_listen = None;
        cfg.node_name = Some("test-node".into());
        tune(&mut cfg);
        let n = node::Node::start(cfg).await.context("start node")?;
        let state = dir.path().join("api");
        let pw = api::bootstrap_admin(&state)?.context("first start gives a password")?;
        assert!(
            api::bootstrap_admin(&state)?.is_none(),
            "second start prints nothing"
        );
        let mut acfg = api::ApiConfig::new(listen, state.clone());
        acfg.stats_period = std::time::Duration::from_millis(200);
        // Stands in for the ring of the process running the node (`init::log`, which depends
        // on this crate): three lines.
        let lines: Vec<api::LogLine> = (1..=3u64)
            .map(|seq| api::LogLine {
                seq,
                unix_ms: 1_700_000_000_000 + seq,
                text: format!("test line {seq}"),
            })
            .collect();
        acfg.system_log = Some(api::LogSource::new(move |r| {
            api::LogSource::read_slice(&lines, r)
        }));
        let h = api::serve(acfg, n.controller()).await?;
        let addr = h.local_addr;
        let tls = connector(&state)?;
        Ok(Harness {
            dir,
            node: Some(n),
            api: Some(h),
            addr,
            admin_password: pw,
            tls,
        })
    }

    pub fn client(&self) -> Client {
        Client {
            addr: self.addr,
            tls: self.tls.clone(),
            cookie: None,
            csrf: None,
            bearer: None,
            ip: None,
        }
    }

    pub async fn admin(&self) -> Client {
        let mut c = self.client();
        c.login("admin", &self.admin_password)
            .await
            .expect("admin login");
        c
    }

    /// A client holding a token of a new user with `role`.
    pub async fn user_with_token(&self, admin: &Client, name: &str, role: &str) -> Client {
        let pw = "correct horse battery staple";
        let r = admin
            .post(
                "/api/v1/users",
                serde_json::json!({"name": name, "role": role, "password": pw}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let mut c = self.client();
        c.login(name, pw).await.unwrap();
        let t = c
            .post("/api/v1/tokens", serde_json::json!({"name": "t"}))
            .await;
        assert_eq!(t.status, 201, "{}", t.text);
        let mut tc = self.client();
        tc.bearer = Some(t.json["token"].as_str().unwrap().to_string());
        tc
    }

    pub async fn stop(mut self) {
        if let Some(a) = self.api.take() {
            a.shutdown().await;
        }
        if let Some(n) = self.node.take() {
            n.shutdown().await.unwrap();
        }
    }
}

pub fn connector(state: &std::path::Path) -> Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(state.join("tls/cert.pem"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c?)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // Every request verifies the certificate afresh (a resumed session would skip that).
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub text: String,
    pub json: Value,
}

#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub tls: tokio_rustls::TlsConnector,
    pub cookie: Option<String>,
    pub csrf: Option<String>,
    pub bearer: Option<String>,
    pub ip: Option<std::net::IpAddr>,
}

impl Client {
    pub async fn login(&mut self, user: &str, pw: &str) -> Result<Resp> {
        let r = self
            .post(
                "/api/v1/auth/login",
                serde_json::json!({"user": user, "password": pw}),
            )
            .await;
        anyhow::ensure!(r.status == 200, "login {user}: {} {}", r.status, r.text);
        let mut cookies = Vec::new();
        for v in r.headers.get_all("set-cookie") {
            let v = v.to_str()?;
            assert!(v.contains("Secure") && v.contains("SameSite=Strict"), "{v}");
            cookies.push(v.split(';').next().unwrap().to_string());
        }
        self.cookie = Some(cookies.join("; "));
        self.csrf = r.json["csrf_token"].as_str().map(str::to_string);
        Ok(r)
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call("GET", path, None, &[]).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.call("POST", path, Some(body), &[]).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> Resp {
        self.call("PATCH", path, Some(body), &[]).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.call("PUT", path, Some(body), &[]).await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        self.call("DELETE", path, None, &[]).await
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> Resp {
        let raw = body.map(|b| serde_json::to_vec(&b).unwrap());
        self.raw(method, path, raw, extra)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, &str)],
    ) -> Result<Resp> {
        let sock = match self.ip {
            Some(ip) => {
                let s = tokio::net::TcpSocket::new_v4()?;
                s.bind(SocketAddr::new(ip, 0))?;
                s.connect(self.addr).await?
            }
            None => tokio::net::TcpStream::connect(self.addr).await?,
        };
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let tls = self.tls.connect(name, sock).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut b = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if let Some(c) = &self.cookie {
            b = b.header("cookie", c);
        }
        if let Some(c) = &self.csrf {
            b = b.header("x-csrf-token", c);
        }
        if let Some(t) = &self.bearer {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = send.send_request(req).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Resp {
            status,
            headers,
            text,
            json,
        })
    }

    /// Poll a task until it finishes (bounded: 30 s).
    pub async fn wait_task(&self, id: u64) -> Value {
        for _ in 0..300 {
            let t = self.get(&format!("/api/v1/tasks/{id}")).await;
            assert_eq!(t.status, 200, "{}", t.text);
            if t.json["state"] != "running" {
                return t.json;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("task {id} did not finish in 30 s");
    }
}

/// Whether this machine can run the test guest (KVM).
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// `r` is a refusal with `status` whose message says `words`.
pub fn err_has(r: &Resp, status: u16, words: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    let m = r.json["error"]["message"].as_str().unwrap_or_default();
    assert!(m.contains(words), "want {words:?} in {m:?}");
}
