//! The node service on the appliance: the same `node::Node` as `cairn node`, on the machine's
//! blank and Cairn block devices, plus the HTTPS API on :8443, and the configuration record kept
//! in the pool; the cluster member follows the node's address when it changes (see
//! [`address_changed`]). Owns the appliance data directory (/run/cairn/node, in RAM) and its rebuilding
//! from the record at each boot; the raft state is not in it but on the pool (`node::raftdisk`). Must never hand a disk with other data to the node (only
//! blank and Cairn disks are linked into its disk directory).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use engine::{Engine, EngineConfig};

use crate::logln;
use crate::record::{self, NodeRecord, API_STATE_FILES, RECORD_VDISK, RECORD_VDISK_BYTES};

pub const DATA_DIR: &str = "/run/cairn/node";
pub const API_PORT: u16 = 8443;
/// How often API state changes (users, tokens, certificate) are copied into the record.
const SYNC_EVERY: Duration = Duration::from_secs(10);

fn api_dir() -> PathBuf {
    Path::new(DATA_DIR).join("api")
}

/// What the status screen shows.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub running: bool,
    pub disks: usize,
    pub usable_bytes: u64,
    pub degraded_chunks: u64,
    pub vdisks: usize,
}

struct Running {
    rt: tokio::runtime::Handle,
    engine: Engine,
    record: NodeRecord,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The HTTPS API's certificate store, for [`name_ui_address`].
    certs: Option<std::sync::Arc<api::tls::CertStore>>,
}

/// Set when the node is stopped on purpose (power request): its end is then not a failure.
static STOP_REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the node service was asked to stop (by a power request).
pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(std::sync::atomic::Ordering::SeqCst)
}

static RUNNING: Mutex<Option<Running>> = Mutex::new(None);
/// Woken when the management address changes (see [`address_changed`]).
static ADDRESS_CHANGED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The management address changed (a DHCP renewal with another address, a lease back after a
/// loss, a new address from the menu): the running node moves its cluster member when the
/// cluster runs on the management network. Never blocks.
pub fn address_changed() {
    ADDRESS_CHANGED.notify_one();
}

/// Puts the management address into the UI certificate as soon as it is known (re-issued with
/// the same key, see [`name_in_certificate`]): called after every address change, every
/// `SYNC_EVERY` and at each refresh of the console's status screen, so the screen shows the
/// certificate the node serves on that address, not the one before the change (the API
/// would otherwise re-issue only at the first HTTPS connection on the new address). Nothing
/// while the node service or the address is not there. Blocks for the re-issue (file writes).
pub fn name_ui_address() {
    let Some(ip) = crate::net::status()
        .and_then(|s| s.addr)
        .map(|(ip, _)| IpAddr::V4(ip))
    else {
        return;
    };
    let certs = RUNNING
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|r| r.certs.clone());
    if let Some(line) = certs.and_then(|c| name_in_certificate(&c, ip)) {
        logln!("{line}");
    }
}

/// Re-issues the UI certificate in `certs` so that it names `ip`, as the API does at the first
/// connection on an address its certificate does not name: the same key, so a browser or
/// script that trusts the key still does. Nothing when the certificate names `ip` already, is
/// an upload (never touched), or a re-issue for `ip` failed within `api::tls::RETRY_AFTER`.
/// The line to log when something happened.
pub(crate) fn name_in_certificate(certs: &api::tls::CertStore, ip: IpAddr) -> Option<String> {
    if !certs.needs_name(ip) {
        return None;
    }
    match certs.name_address(ip) {
        Ok(true) => Some(format!(
            "UI certificate re-issued (same key) to name {ip}: SHA-256 {}",
            certs.info().sha256_fingerprint
        )),
        Ok(false) => None,
        Err(e) => Some(format!(
            "UI certificate: cannot re-issue it to name {ip} (the old one stays): {e}"
        )),
    }
}

/// Where this node's cluster member should listen: the cluster link's address when it has
/// one, else the management address (None while the management network has none).
fn wanted_cluster_addr(rec: &NodeRecord) -> Option<SocketAddr> {
    let ip = match &rec.cluster_net {
        Some(c) => c.addr,
        None => crate::net::status()
            .and_then(|s| s.addr)
            .map(|(ip, _)| ip)?,
    };
    Some(SocketAddr::from((ip, crate::wizard::CLUSTER_PORT)))
}

/// Moves the cluster member to where it should be, if it is not there (checked after every
/// address change and every `SYNC_EVERY`, so a change during start-up or a failed move is
/// caught up). A lost lease is no move: the member keeps its address until a new one comes.
/// `refused`: the last target that was refused, said once rather than every round.
async fn follow_address(node: &node::Node, rec: &NodeRecord, refused: &mut Option<SocketAddr>) {
    let Some(want) = wanted_cluster_addr(rec) else {
        return;
    };
    let now = node.cluster_addr();
    if now == want {
        return;
    }
    match node.set_cluster_addr(want).await {
        Ok(()) => {
            *refused = None;
            logln!("the cluster member moved from {now} to {want}; it announces the new address to the cluster");
        }
        Err(e) if *refused != Some(want) => {
            *refused = Some(want);
            logln!("the cluster member stays at {now}: {}", e.message);
        }
        Err(_) => {}
    }
}
static STOPPED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

fn rt() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("cairn-node")
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

async fn read_record_from(engine: &Engine) -> Result<Option<NodeRecord>, String> {
    let h = match engine.open_vdisk(RECORD_VDISK) {
        Ok(h) => h,
        Err(e) if e.kind() == engine::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("open {RECORD_VDISK}: {e}")),
    };
    let mut buf = vec![0u8; RECORD_VDISK_BYTES as usize];
    h.read(0, &mut buf)
        .await
        .map_err(|e| format!("read {RECORD_VDISK}: {e}"))?;
    match record::decode(&buf) {
        Ok(r) => Ok(Some(r)),
        Err(record::RecordError::Missing) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

async fn write_record_to(engine: &Engine, rec: &NodeRecord) -> Result<(), String> {
    let bytes = record::encode(rec).map_err(|e| e.to_string())?;
    // Node-private (both replicas on this node's disks): the record is this node's alone and
    // must stay writable when its peers are unreachable.
    if engine.vdisk(RECORD_VDISK).is_err() {
        engine
            .create_local_vdisk(RECORD_VDISK, RECORD_VDISK_BYTES)
            .await
            .map_err(|e| format!("create {RECORD_VDISK}: {e}"))?;
    } else {
        engine
            .make_vdisk_local(RECORD_VDISK)
            .await
            .map_err(|e| format!("make {RECORD_VDISK} node-private: {e}"))?;
    }
    let h = engine
        .open_vdisk(RECORD_VDISK)
        .map_err(|e| format!("open {RECORD_VDISK}: {e}"))?;
    h.write(0, &bytes)
        .await
        .map_err(|e| format!("write {RECORD_VDISK}: {e}"))?;
    h.flush()
        .await
        .map_err(|e| format!("flush {RECORD_VDISK}: {e}"))
}

/// Reads the record from the Cairn disks with a short-lived engine (before the node starts, so
/// the node can be started with the right identity). `Ok(None)`: the pool has no record.
pub fn read_record(cairn_disks: &[String]) -> Result<Option<NodeRecord>, String> {
    let rt = rt()?;
    rt.block_on(async {
        let mut devs = Vec::new();
        for d in cairn_disks {
            let path = format!("/dev/{d}");
            match node::open_device(Path::new(&path)) {
                Ok(dev) => devs.push((path, dev)),
                Err(e) => logln!("{path}: {}", e.message),
            }
        }
        // The probe must run as the node that owns the disks: node-private vdisks (this
        // record, the raft state) are placed by node id, and an engine of another id takes
        // their chunks for misplaced ones and moves them in the background, which lost the
        // raft state and the record at a reboot (a new cluster came up).
        let mut node_id = None;
        for (_, dev) in &devs {
            if let Ok(store::Probe::Ours(label)) = store::Store::probe(&**dev).await {
                node_id = Some(label.node_id);
                break;
            }
        }
        let Some(node_id) = node_id else {
            return Ok(None);
        };
        let engine = Engine::open(EngineConfig {
            node_id,
            node_name: "boot-probe".into(),
        })
        .await
        .map_err(|e| format!("engine: {e}"))?;
        for (path, dev) in devs {
            if let Err(e) = engine.add_disk(dev).await {
                logln!("{path}: not opened: {e}");
            }
        }
        let r = read_record_from(&engine).await;
        let _ = engine.shutdown().await;
        r
    })
}

fn snapshot_api_files() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for f in API_STATE_FILES {
        if let Ok(s) = std::fs::read_to_string(api_dir().join(f)) {
            m.insert(f.to_string(), s);
        }
    }
    m
}

/// Lays out /run/cairn/node from the record: node identity, disk links, API state.
fn prepare_data_dir(
    rec: &NodeRecord,
    pool_disks: &[String],
    admin_password: Option<&str>,
) -> Result<(), String> {
    let data = Path::new(DATA_DIR);
    let disks = data.join("disks");
    std::fs::create_dir_all(&disks).map_err(|e| format!("{}: {e}", disks.display()))?;
    std::fs::create_dir_all(api_dir().join("tls")).map_err(|e| format!("api dir: {e}"))?;
    for d in pool_disks {
        let link = disks.join(d);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("/dev/{d}"), &link)
                .map_err(|e| format!("{}: {e}", link.display()))?;
        }
    }
    // node.json: the node crate's identity file (node_id, node_name, created_unix).
    let id = serde_json::json!({
        "node_id": rec.node_id, "node_name": rec.hostname, "created_unix": rec.created_unix,
    });
    std::fs::write(data.join("node.json"), id.to_string())
        .map_err(|e| format!("node.json: {e}"))?;
    for (name, body) in &rec.api_files {
        if !API_STATE_FILES.contains(&name.as_str()) {
            continue;
        }
        std::fs::write(api_dir().join(name), body).map_err(|e| format!("api {name}: {e}"))?;
    }
    if let Some(pw) = admin_password {
        let dir = api::users::Directory::open(&api_dir()).map_err(|e| format!("api users: {e}"))?;
        if dir.is_empty() {
            dir.add_user(api::BOOTSTRAP_ADMIN, control::Role::Admin, pw)
                .map_err(|(_, m)| format!("create admin: {m}"))?;
        }
    }
    Ok(())
}

/// The wizard's "join a cluster" answer, carried out once the node service runs.
#[derive(Debug, Clone)]
pub struct JoinIntent {
    /// A member's cluster address (IP:PORT).
    pub address: String,
    pub token: String,
}

/// Joins the cluster through the node's own controller (`cluster join`). A failure is logged
/// and leaves the node a cluster of its own (the join can be repeated from the API or CLI).
async fn join_cluster(node: &node::Node, j: JoinIntent) -> String {
    logln!("joining the cluster of {}", j.address);
    let actor = control::Actor {
        user: "setup".into(),
        role: control::Role::Admin,
        via: control::Via::Internal,
    };
    let req = control::Request::ClusterJoin {
        address: j.address.clone(),
        token: j.token,
    };
    match node.controller().execute(actor, req).await {
        Ok(_) => {
            logln!("joined the cluster of {}", j.address);
            format!("joined {}", j.address)
        }
        Err(e) => {
            logln!(
                "cluster join failed: {e}; this node stays a cluster of its own (join later with the API or `cairn cluster join`)"
            );
            "created".into()
        }
    }
}

/// Runs the node service until asked to stop. Returns only on failure or stop.
/// `admin_password` is set on the first start after the wizard, `join` when it chose to join.
pub fn run(
    mut rec: NodeRecord,
    pool_disks: Vec<String>,
    admin_password: Option<String>,
    join: Option<JoinIntent>,
    fail: bool,
) -> Result<(), String> {
    if fail {
        return Err(
            "node service failed on purpose (cairn.fail_node on the kernel command line)".into(),
        );
    }
    prepare_data_dir(&rec, &pool_disks, admin_password.as_deref())?;
    let rt = rt()?;
    let first = admin_password.is_some();
    let result = rt.block_on(async move {
        let mut cfg = node::NodeConfig::new(DATA_DIR);
        cfg.disk_count = 0;
        cfg.node_name = Some(rec.hostname.clone());
        // The node starts the HTTPS API itself, with its state in DATA/api (prepared above).
        cfg.api_listen = Some(SocketAddr::from(([0, 0, 0, 0], API_PORT)));
        // The raft member's identity, log and snapshot live on the pool (the node's internal
        // raft vdisk), never in DATA_DIR (RAM): a reboot reopens the same cluster, same CA and
        // member id, and a joined node stays joined. No pool disk is an error, never a new
        // cluster.
        cfg.raft_place = node::RaftPlace::Pool;
        cfg.system_log = Some(crate::log::api_source());
        // Other nodes reach this one's cluster member on the cluster link's address when it
        // has one, else on its management address.
        cfg.cluster_listen = wanted_cluster_addr(&rec);
        // VM NICs that name no bridge join the bridge the network set-up made over the uplink
        // (none when it could not: then they are only brought up, as with `cairn node`), as it
        // is at each request: a bridge made later (the console's network menu) counts at once.
        cfg.vm_bridge_source = Some(crate::netlive::bridge);
        let node = node::Node::start(cfg)
            .await
            .map_err(|e| format!("node: {e}"))?;
        logln!("cluster address {}", node.cluster_addr());
        let engine = node.engine().clone();
        if let Some(j) = join {
            rec.cluster = join_cluster(&node, j).await;
        }
        rec.api_files = snapshot_api_files();
        if first || read_record_from(&engine).await.ok().flatten().is_none() {
            write_record_to(&engine, &rec).await?;
            logln!("configuration record saved in the pool ({RECORD_VDISK})");
        }
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel();
        *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) = Some(Running {
            rt: tokio::runtime::Handle::current(),
            engine: engine.clone(),
            record: rec.clone(),
            stop: Some(stop_tx),
            certs: node.api_certs(),
        });
        logln!(
            "node service running: {} disks, {} usable",
            engine.pool().disks,
            crate::hw::human(engine.pool().usable_bytes)
        );
        let mut refused = None;
        loop {
            follow_address(&node, &rec, &mut refused).await;
            if let Err(e) = tokio::task::spawn_blocking(name_ui_address).await {
                logln!("naming the address in the UI certificate: {e}");
            }
            tokio::select! {
                _ = &mut stop_rx => break,
                _ = ADDRESS_CHANGED.notified() => {}
                _ = tokio::time::sleep(SYNC_EVERY) => {
                    let files = snapshot_api_files();
                    let changed = {
                        let mut g = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
                        match g.as_mut() {
                            Some(r) if r.record.api_files != files => {
                                r.record.api_files = files;
                                Some(r.record.clone())
                            }
                            _ => None,
                        }
                    };
                    if let Some(r) = changed {
                        if let Err(e) = write_record_to(&engine, &r).await {
                            logln!("saving API state into the record: {e}");
                        }
                    }
                }
            }
        }
        node.shutdown()
            .await
            .map_err(|e| format!("node shutdown: {e}"))
    });
    *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) = None;
    let (m, cv) = &STOPPED;
    *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
    cv.notify_all();
    result
}

/// Asks the node service to stop (flush and checkpoint the engine) and waits up to `timeout`.
pub fn stop_node(timeout: Duration) {
    STOP_REQUESTED.store(true, std::sync::atomic::Ordering::SeqCst);
    let stop = RUNNING
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_mut()
        .and_then(|r| r.stop.take());
    let Some(stop) = stop else { return };
    logln!("stopping the node service");
    let _ = stop.send(());
    let (m, cv) = &STOPPED;
    let g = m.lock().unwrap_or_else(|p| p.into_inner());
    let (_g, waited) = cv
        .wait_timeout_while(g, timeout, |stopped| !*stopped)
        .unwrap_or_else(|p| p.into_inner());
    if waited.timed_out() {
        // The caller reboots or powers off next: say that the node did not finish stopping,
        // so a slow shutdown is visible on the console and in the log.
        logln!(
            "the node service did not stop within {} s; going on without it",
            timeout.as_secs()
        );
    }
}

/// Current health, for the status screen.
pub fn health() -> Health {
    let g = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    match g.as_ref() {
        None => Health::default(),
        Some(r) => {
            let p = r.engine.pool();
            Health {
                running: true,
                disks: p.disks,
                usable_bytes: p.usable_bytes,
                degraded_chunks: p.degraded_chunks,
                vdisks: r.engine.vdisks().len(),
            }
        }
    }
}

/// Applies `f` to the stored record and writes it to the pool.
pub fn update_record(f: impl FnOnce(&mut NodeRecord)) -> Result<(), String> {
    let (rt, engine, rec) = {
        let mut g = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        let r = g.as_mut().ok_or("the node service is not running")?;
        f(&mut r.record);
        (r.rt.clone(), r.engine.clone(), r.record.clone())
    };
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(write_record_to(&engine, &rec).await);
    });
    rx.recv_timeout(Duration::from_secs(30))
        .map_err(|_| "timed out saving the record".to_string())?
}

/// Removes the record (the next boot runs the wizard again; pool data stays).
pub fn delete_record() -> Result<(), String> {
    let (rt, engine) = {
        let g = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        let r = g.as_ref().ok_or("the node service is not running")?;
        (r.rt.clone(), r.engine.clone())
    };
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(
            engine
                .delete_vdisk(RECORD_VDISK)
                .await
                .map_err(|e| e.to_string()),
        );
    });
    rx.recv_timeout(Duration::from_secs(30))
        .map_err(|_| "timed out deleting the record".to_string())?
}
