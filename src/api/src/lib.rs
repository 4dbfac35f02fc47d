//! Cairn's management front end: the HTTPS server (hyper 1 + rustls, TLS 1.3/1.2, HTTP/1.1 and
//! HTTP/2), authentication (users with argon2id passwords, browser sessions with CSRF
//! protection, API tokens), the REST API under `/api/v1` (documented in `openapi.json`), live
//! statistics over Server-Sent Events, the audit log, and the embedded web UI.
//!
//! What it owns: its state dir (`tls/`, `users.json`, `tokens.json`, `tasks.json`,
//! `audit.jsonl`, `idempotency.jsonl`) and the HTTP surface. What it must never do: touch the
//! engine or any storage state directly. Every storage request is parsed into a [`control::Request`], authorized with
//! [`control::allowed`], and
//! forwarded to the node's [`control::Controller`]. Users, tokens and the certificate are the
//! api's own state; their mutations are one [`admin::AdminAction`] type applied in one function
//! ([`admin::apply`]) — see that module for why they are not `control::Request` variants.
//!
//! Entry points: [`bootstrap_admin`] (first start: creates `admin` with a one-time password and
//! returns it once) and [`serve`].
#![forbid(unsafe_code)]

pub mod admin;
mod assets;
pub use assets::ui_built;
pub mod audit;
mod bodies;
pub mod client;
mod error;
mod files;
mod http;
mod idempotency;
mod lists;
mod login;
mod render;
pub mod routes;
mod server;
mod sessions;
mod sse;
mod state;
mod syslog;
pub use syslog::{LogLine, LogRange, LogRead, LogSource};
pub mod stats;
mod tasks;
pub mod tls;
pub mod users;
mod v1;
mod vms;
mod ws;

pub use error::{ApiError, Result};

use control::Controller;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The OpenAPI 3 document of `/api/v1` (also served at `/api/v1/openapi.json`).
pub const OPENAPI_JSON: &str = v1::OPENAPI;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Where the api keeps its certificate, users, tokens and audit log.
    pub state_dir: PathBuf,
    /// How often statistics are sampled (1 s in production; tests may go faster).
    pub stats_period: Duration,
    pub max_connections: usize,
    /// Keep the virtual disk and VM lists between changes (see `lists`). Off only to measure
    /// what it saves (`cairn bench api --no-list-cache`).
    pub list_cache: bool,
    /// The node's system log, when the process running it keeps one (`GET /system/log`).
    pub system_log: Option<LogSource>,
}

impl ApiConfig {
    pub fn new(listen: SocketAddr, state_dir: PathBuf) -> ApiConfig {
        ApiConfig {
            listen,
            state_dir,
            stats_period: Duration::from_secs(1),
            max_connections: 1024,
            list_cache: true,
            system_log: None,
        }
    }
}

/// A running server. Dropping it does not stop it; call [`ApiHandle::shutdown`].
#[derive(Debug)]
pub struct ApiHandle {
    pub local_addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    certs: Arc<tls::CertStore>,
}

impl ApiHandle {
    /// The certificate store the server serves from: whoever knows the host's address changed
    /// (the appliance's PID 1) re-issues through it ([`tls::CertStore::name_address`]) at once,
    /// rather than at the first connection on the new address.
    pub fn certs(&self) -> Arc<tls::CertStore> {
        self.certs.clone()
    }

    /// Stop accepting, close connections, and wait for the accept loop to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// User name of the account created on first start.
pub const BOOTSTRAP_ADMIN: &str = "admin";

/// On first start (no users yet), create the `admin` user with a random password and return
/// that password so the node can print it once. Later starts return `None`.
pub fn bootstrap_admin(state_dir: &std::path::Path) -> Result<Option<String>> {
    let dir = users::Directory::open(state_dir)?;
    if !dir.is_empty() {
        return Ok(None);
    }
    // 20 characters from a 56-letter alphabet without look-alikes: ~116 bits.
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    use rand::Rng;
    let mut rng = rand::rngs::OsRng;
    let pw: String = (0..20)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    dir.add_user(BOOTSTRAP_ADMIN, control::Role::Admin, &pw)
        .map_err(|(_, m)| ApiError::State {
            path: state_dir.join("users.json"),
            reason: m,
        })?;
    Ok(Some(pw))
}

/// How often what the node did by itself (takeovers, HA restarts) is moved into the event list
/// and the audit log.
const NODE_EVENTS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Moves the node's own events (`Controller::take_node_events`) into the event list and the
/// audit log (as user `system`, via `internal`) until the API stops.
async fn node_events(st: std::sync::Weak<state::State>) {
    loop {
        tokio::time::sleep(NODE_EVENTS_EVERY).await;
        let Some(st) = st.upgrade() else { return };
        for e in st.controller.take_node_events() {
            let severity = match e.severity.as_str() {
                "error" => "error",
                "warning" => "warning",
                _ => "info",
            };
            st.event(severity, &e.action, e.message.clone());
            st.audit.record(
                "system", "internal", "", &e.action, &e.target, "ok", &e.message,
            );
        }
    }
}

/// Start the HTTPS server and the statistics sampler.
pub async fn serve(cfg: ApiConfig, controller: Arc<dyn Controller>) -> Result<ApiHandle> {
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| ApiError::io("create state dir", &cfg.state_dir, e))?;
    let certs = tls::CertStore::open(&cfg.state_dir)?;
    let tls_cfg = tls::server_config(certs.clone())?;
    let hub = Arc::new(stats::StatsHub::default());
    // Shared by the list requests and the sampler: one fetch of each list a second serves both.
    let lists = Arc::new(lists::ListCache::new(cfg.list_cache));
    let st = Arc::new(state::State {
        controller: controller.clone(),
        directory: users::Directory::open(&cfg.state_dir)?,
        sessions: Default::default(),
        limiter: Default::default(),
        audit: audit::AuditLog::open(&cfg.state_dir),
        idempotency: idempotency::IdempotencyCache::open(&cfg.state_dir),
        lists: lists.clone(),
        tasks: tasks::Tasks::open(&cfg.state_dir),
        stats: hub.clone(),
        certs: certs.clone(),
        events: Default::default(),
        sse_clients: Default::default(),
        started: std::time::Instant::now(),
        system_log: cfg.system_log.clone(),
    });
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| ApiError::Listen {
            addr: cfg.listen,
            source: e,
        })?;
    let local_addr = listener.local_addr().map_err(|e| ApiError::Listen {
        addr: cfg.listen,
        source: e,
    })?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let weak = Arc::downgrade(&hub);
    drop(hub);
    let mut sampler_stop = stop_rx.clone();
    let period = cfg.stats_period;
    tokio::spawn(async move {
        tokio::select! {
            _ = stats::run_sampler(weak, controller, lists, period) => {}
            _ = sampler_stop.changed() => {}
        }
    });
    let mut events_stop = stop_rx.clone();
    let events_state = Arc::downgrade(&st);
    tokio::spawn(async move {
        tokio::select! {
            _ = node_events(events_state) => {}
            _ = events_stop.changed() => {}
        }
    });
    let task = tokio::spawn(server::accept_loop(
        listener,
        tls_cfg,
        st,
        cfg.max_connections,
        stop_rx,
    ));
    tracing::info!("api: listening on https://{local_addr}");
    Ok(ApiHandle {
        local_addr,
        stop: stop_tx,
        task,
        certs,
    })
}
