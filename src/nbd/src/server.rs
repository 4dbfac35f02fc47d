//! The listening server: the export registry, the accept loop with its connection bound, and
//! the handle that stops it.
//!
//! It never binds anything but the address it is given (127.0.0.1:10809 by default) and never
//! lets one connection's failure affect another.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::{handshake, transmission, NbdError, NbdExport};

/// Where the server listens unless told otherwise: loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:10809";
/// Connections served at once; more are closed right after accept.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest export name accepted (the protocol's own limit).
pub const MAX_NAME_BYTES: usize = 4096;
/// A client must finish the handshake within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// On stop, connections get this long to answer their in-flight requests.
const STOP_GRACE: Duration = Duration::from_secs(5);

struct Entry {
    export: Arc<dyn NbdExport>,
    removed: watch::Sender<bool>,
}

/// The exports by name; shared by the server, its handle and every connection.
#[derive(Default)]
pub(crate) struct Registry {
    exports: RwLock<BTreeMap<String, Entry>>,
}

impl Registry {
    pub(crate) fn lookup(&self, name: &str) -> Option<(Arc<dyn NbdExport>, watch::Receiver<bool>)> {
        self.exports
            .read()
            .get(name)
            .map(|e| (e.export.clone(), e.removed.subscribe()))
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.exports.read().keys().cloned().collect()
    }

    fn add(&self, name: &str, export: Arc<dyn NbdExport>) -> Result<(), NbdError> {
        if name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
            return Err(NbdError::InvalidName(format!(
                "{name:?}: at most {MAX_NAME_BYTES} bytes, no control characters"
            )));
        }
        let mut map = self.exports.write();
        if map.contains_key(name) {
            return Err(NbdError::ExportExists(name.to_string()));
        }
        map.insert(
            name.to_string(),
            Entry {
                export,
                removed: watch::channel(false).0,
            },
        );
        Ok(())
    }

    fn remove(&self, name: &str) -> bool {
        match self.exports.write().remove(name) {
            Some(e) => {
                // Connections to it finish their in-flight requests and close.
                e.removed.send_replace(true);
                true
            }
            None => false,
        }
    }
}

/// Adds and removes exports of a server, before or while it serves.
#[derive(Clone)]
pub struct Exports(Arc<Registry>);

impl Exports {
    /// Export `export` as `name` (may be empty: the default export). Fails if the name is taken.
    pub fn add(&self, name: &str, export: Arc<dyn NbdExport>) -> Result<(), NbdError> {
        self.0.add(name, export)
    }

    /// Stop exporting `name`; its open connections close after their in-flight requests.
    pub fn remove(&self, name: &str) -> bool {
        self.0.remove(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.0.names()
    }
}

pub struct NbdServer {
    listener: TcpListener,
    registry: Arc<Registry>,
}

impl NbdServer {
    /// Listen on `addr` (use `DEFAULT_ADDR` unless there is a reason not to).
    pub async fn bind(addr: impl ToSocketAddrs + std::fmt::Debug) -> Result<NbdServer, NbdError> {
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| NbdError::Bind {
                addr: format!("{addr:?}"),
                source,
            })?;
        Ok(NbdServer {
            listener,
            registry: Arc::default(),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, NbdError> {
        Ok(self.listener.local_addr()?)
    }

    pub fn exports(&self) -> Exports {
        Exports(self.registry.clone())
    }

    pub fn add_export(&self, name: &str, export: Arc<dyn NbdExport>) -> Result<(), NbdError> {
        self.registry.add(name, export)
    }

    pub fn remove_export(&self, name: &str) -> bool {
        self.registry.remove(name)
    }

    /// Serve in a background task; the handle stops it.
    pub fn spawn(self) -> Result<NbdHandle, NbdError> {
        let addr = self.local_addr()?;
        let exports = self.exports();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(self.serve_until(stop_rx));
        Ok(NbdHandle {
            addr,
            exports,
            stop,
            task,
        })
    }

    /// Serve until the process ends.
    pub async fn serve(self) {
        let (_keep, stop) = watch::channel(false);
        self.serve_until(stop).await
    }

    /// Serve until `stop` turns true (or its sender is dropped).
    pub async fn serve_until(self, mut stop: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut conns = JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = stop.wait_for(|s| *s) => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!("nbd: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!("nbd: refusing {peer}: {MAX_CONNECTIONS} connections already");
                continue;
            };
            let registry = self.registry.clone();
            let stop = stop.clone();
            conns.spawn(async move {
                if let Err(e) = connection(stream, &registry, stop).await {
                    tracing::debug!("nbd: {peer}: {e}");
                }
                drop(slot);
            });
        }
        drop(self.listener);
        let drained = tokio::time::timeout(STOP_GRACE, async {
            while conns.join_next().await.is_some() {}
        });
        if drained.await.is_err() {
            conns.abort_all();
        }
    }
}

async fn connection(
    mut stream: TcpStream,
    registry: &Registry,
    stop: watch::Receiver<bool>,
) -> Result<(), NbdError> {
    stream.set_nodelay(true)?;
    let mut stopping = stop.clone();
    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake::negotiate(&mut stream, registry),
    );
    let chosen = tokio::select! {
        r = handshake => match r {
            Ok(r) => r?,
            Err(_) => return Err(NbdError::Protocol("handshake timed out".into())),
        },
        _ = stopping.wait_for(|s| *s) => return Ok(()),
    };
    let Some(chosen) = chosen else { return Ok(()) };
    let (reader, writer) = stream.split();
    transmission::serve(reader, writer, chosen, stop).await
}

/// A running server.
pub struct NbdHandle {
    addr: SocketAddr,
    exports: Exports,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl NbdHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn exports(&self) -> &Exports {
        &self.exports
    }

    /// Stop accepting, let connections answer what they have in flight, then close them.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}
