//! The calling side: a link to one peer node ([`PeerLink`]: one mutual-TLS connection, bounded
//! in flight, session numbers) and one [`RemoteReplica`] per disk of that peer, implementing the
//! engine's `Replica` trait.
//!
//! Failure handling (timeouts in [`MirrorConfig`]): a request that cannot reach the peer
//! (connect refused, reset, no answer within `call_timeout`) makes the replica *away*. While
//! away, mutations are not sent: the objects they touch are recorded as dirty and the call
//! succeeds, so the engine acknowledges on the surviving replica. Objects written since the
//! peer's last completed flush are dirty too (a crashed peer may have lost them). Reads of an
//! away or dirty replica fail at once (the engine reads the other replica). Heartbeats notice
//! the peer coming back; the replica then opens a new session (the peer opens it once none of
//! the older session's requests is still running, and refuses those still queued from then
//! on) and reports `Back`; the engine copies the dirty objects
//! and calls `resync_done`. A reply from a new server instance (the peer restarted) also
//! makes every unflushed object dirty. A mutation whose caller gives it up before the answer
//! (its request may still land) leaves the replica away too, its objects dirty.
//!
//! Fencing: every mutation carries (virtual disk, epoch from the [`EpochBook`], session). A
//! `Fenced` reply is an error to the caller (this node no longer owns the disk), never a reason
//! to go away and continue alone.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use engine::Reachability;
use parking_lot::Mutex;
use store::{ObjectId, Space, StoreError};
use transport::{Client, ClientConfig, NodeIdentity};

use crate::error::{MirrorError, Result};
use crate::fence::EpochBook;
use crate::wire::*;

type R<T> = std::result::Result<T, StoreError>;

/// Timeouts and limits of the replica client.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// A data request (read, write, flush, ...) not answered within this makes the peer away.
    /// Keep it above the server's wait for a new session (1 s), so that answer arrives.
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
    /// Export/import of a whole chunk and scrub may take longer.
    pub bulk_timeout: Duration,
    /// Heartbeat period; `heartbeat_misses` missed in a row make an idle peer away.
    pub heartbeat: Duration,
    pub heartbeat_misses: u32,
    /// Requests in flight per peer connection (further ones wait: back-pressure).
    pub max_in_flight: usize,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            call_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            bulk_timeout: Duration::from_secs(60),
            heartbeat: Duration::from_millis(250),
            heartbeat_misses: 2,
            max_in_flight: 64,
        }
    }
}

/// An encoded mutation: its bytes, the session its fence carries, its timeout.
pub(crate) struct Outgoing {
    pub(crate) payload: Vec<u8>,
    pub(crate) session: u64,
    pub(crate) timeout: Duration,
}

/// Why a call failed.
pub(crate) enum CallErr {
    /// The peer could not be reached or did not answer: go away. A request that left may
    /// still be applied there.
    Net(String),
    /// The peer answered that it did not apply the request and cannot serve it now (it lost
    /// the disk, or the request's session is older than its floor): go away, but nothing of
    /// this request can land later.
    Refused(String),
    /// The peer answered with an error.
    Wire(WireError),
}

/// One peer node: the connection, its session and the server instance last seen.
pub struct PeerLink {
    pub(crate) node_id: u64,
    /// This node's id (from its certificate): the peer files our copies under it.
    home: u64,
    client: Client<Req, Resp>,
    pub(crate) cfg: MirrorConfig,
    pub(crate) epochs: Arc<EpochBook>,
    session: Mutex<u64>,
    instance: AtomicU64,
    /// Bumped whenever a new server instance is seen; replicas compare to notice restarts.
    restarts: AtomicU64,
}

impl std::fmt::Debug for PeerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PeerLink(node {} at {})",
            self.node_id,
            self.client.addr()
        )
    }
}

impl PeerLink {
    /// A link to node `node_id` at `addr`, authenticated with this node's `identity`. Does not
    /// connect yet.
    pub fn new(
        node_id: u64,
        addr: SocketAddr,
        identity: &NodeIdentity,
        epochs: Arc<EpochBook>,
        cfg: MirrorConfig,
    ) -> Result<Arc<PeerLink>> {
        let ccfg = ClientConfig {
            max_frame_bytes: MAX_MSG_BYTES,
            max_in_flight: cfg.max_in_flight,
            connect_timeout: cfg.connect_timeout,
            call_timeout: cfg.call_timeout,
            ..ClientConfig::default()
        };
        let client = Client::new(
            addr,
            transport::node_server_name(node_id),
            transport::client_tls_config(identity)?,
            ccfg,
        );
        Ok(Arc::new(PeerLink {
            node_id,
            home: identity.node_id,
            client,
            cfg,
            epochs,
            // Sessions start at the clock so a restarted process is never behind the floor
            // its predecessor left on the peer.
            session: Mutex::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_micros() as u64),
            ),
            instance: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
        }))
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Where the peer's replica server is called.
    pub fn addr(&self) -> SocketAddr {
        self.client.addr()
    }

    /// The peer's replica server moved to `addr` (its member moved): every replica on this
    /// link calls it there from now on, so they come back (resyncing what they missed) instead
    /// of staying away until the grace period gives their disks up.
    pub async fn retarget(&self, addr: SocketAddr) {
        if self.client.addr() != addr {
            tracing::info!(node = self.node_id, old = %self.client.addr(), new = %addr, "mirror: peer moved; calling it at its new address");
            self.client.retarget(addr).await;
        }
    }

    pub fn epochs(&self) -> &Arc<EpochBook> {
        &self.epochs
    }

    pub(crate) fn session(&self) -> u64 {
        *self.session.lock()
    }

    pub(crate) async fn call(
        &self,
        req: &Req,
        timeout: Duration,
    ) -> std::result::Result<Body, CallErr> {
        let r = self.client.call_timeout(req, timeout).await;
        self.answer(r)
    }

    /// `req` encoded for [`PeerLink::call_encoded`], into a buffer an earlier request left.
    pub(crate) fn encode<T: serde::Serialize>(
        &self,
        req: &T,
    ) -> std::result::Result<Vec<u8>, StoreError> {
        self.client
            .encode(req)
            .map_err(|e| StoreError::InvalidArgument(format!("request: {e}")))
    }

    /// A request already encoded (see `wire::WriteRef`).
    /// `sent`: set once the request is handed to the connection (see
    /// `transport::Client::call_encoded_noting`).
    pub(crate) async fn call_encoded(
        &self,
        payload: Vec<u8>,
        timeout: Duration,
        sent: &AtomicBool,
    ) -> std::result::Result<Body, CallErr> {
        let r = self
            .client
            .call_encoded_noting(payload, timeout, sent)
            .await;
        self.answer(r)
    }

    fn answer(
        &self,
        r: std::result::Result<Resp, transport::Error>,
    ) -> std::result::Result<Body, CallErr> {
        match r {
            Ok(resp) => {
                let prev = self.instance.swap(resp.instance, Ordering::AcqRel);
                if prev != 0 && prev != resp.instance {
                    self.restarts.fetch_add(1, Ordering::AcqRel);
                }
                match resp.result {
                    Ok(b) => Ok(b),
                    // A peer that lost its disks, or an old session: treat as unreachable.
                    Err(w @ (WireError::NoDisk(_) | WireError::StaleSession { .. })) => {
                        if let WireError::StaleSession { current, .. } = w {
                            self.move_past(current);
                        }
                        Err(CallErr::Refused(w.to_string()))
                    }
                    Err(w) => Err(CallErr::Wire(w)),
                }
            }
            Err(transport::Error::Remote(m)) => Err(CallErr::Wire(WireError::Server(m))),
            Err(e) => Err(CallErr::Net(e.to_string())),
        }
    }

    /// The peer's floor for this node's sessions is `floor`. Normally this node's own session
    /// is there already (the refusal was for a request sent before it opened the newest). If
    /// it is below, this process started its sessions below its predecessor's (sessions
    /// start at the clock, and the clock went back): every change would be refused for good.
    /// So the next session is past the floor; opening it (the next `Hello`) still waits for
    /// the peer to finish this node's older mutations.
    fn move_past(&self, floor: u64) {
        let mut s = self.session.lock();
        if *s < floor {
            tracing::warn!(
                node = self.node_id,
                ours = *s,
                floor,
                "peer refuses this node's sessions as older than one it saw before (this \
                 host's clock went back?); moving past them"
            );
            *s = floor.saturating_add(1);
        }
    }

    /// Open a session and list the peer's disks. `after`: the newest session under which a
    /// returning replica sent a change that may still land on the peer; the session opened is
    /// newer (a new one if needed), and the peer answers only once no change of an older
    /// session runs there or can start.
    async fn hello(&self, after: Option<u64>) -> std::result::Result<Vec<DiskDesc>, CallErr> {
        let session = {
            let mut s = self.session.lock();
            if let Some(a) = after.filter(|a| *a >= *s) {
                *s = a + 1;
            }
            *s
        };
        match self
            .call(&Req::Hello { session }, self.cfg.call_timeout)
            .await?
        {
            Body::Hello { disks } => Ok(disks),
            other => Err(CallErr::Wire(WireError::Server(format!(
                "unexpected reply {other:?}"
            )))),
        }
    }

    /// One round trip: the space of the peer's disk `disk`.
    pub async fn ping(&self, disk: &str) -> Result<Space> {
        match self
            .call(
                &Req::Ping {
                    disk: disk.to_string(),
                },
                self.cfg.call_timeout,
            )
            .await
            .map_err(call_err)?
        {
            Body::Space(s) => Ok(s),
            other => Err(MirrorError::Protocol(format!("ping: {other:?}"))),
        }
    }

    /// The disks the peer serves.
    pub async fn disks(&self) -> Result<Vec<DiskDesc>> {
        self.hello(None).await.map_err(call_err)
    }

    /// Raise this node's own `vdisk` to `epoch`: record it as this node's epoch and raise it
    /// on the peer, so that writers with an older epoch are refused there from now on.
    pub async fn raise(&self, vdisk: u64, epoch: u64) -> Result<()> {
        self.epochs.set(vdisk, epoch);
        self.raise_for(self.home, vdisk, epoch).await
    }

    /// Fence the copies node `home` keeps on the peer for its `vdisk` at `epoch` (a node
    /// taking over another's virtual disk): its older writers are refused there from now on.
    pub async fn raise_for(&self, home: u64, vdisk: u64, epoch: u64) -> Result<()> {
        match self
            .call(&Req::Raise { home, vdisk, epoch }, self.cfg.call_timeout)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(call_err(e)),
        }
    }

    /// Tell the peer what this node's virtual disks are now (see `Req::Describe`).
    pub async fn describe(&self, vdisks: Vec<engine::VdiskRecord>) -> Result<()> {
        match self
            .call(&Req::Describe { vdisks }, self.cfg.call_timeout)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(call_err(e)),
        }
    }

    /// A replica on the peer's disk `desc` (fetches its object list and space first).
    pub async fn open_disk(self: &Arc<Self>, desc: &DiskDesc) -> Result<Arc<RemoteReplica>> {
        let objects = match self
            .call(
                &Req::Objects {
                    disk: desc.id.clone(),
                },
                self.cfg.bulk_timeout,
            )
            .await
            .map_err(call_err)?
        {
            Body::Objects(o) => o,
            other => return Err(MirrorError::Protocol(format!("objects: {other:?}"))),
        };
        let space = match self
            .call(
                &Req::Ping {
                    disk: desc.id.clone(),
                },
                self.cfg.call_timeout,
            )
            .await
            .map_err(call_err)?
        {
            Body::Space(s) => s,
            other => return Err(MirrorError::Protocol(format!("ping: {other:?}"))),
        };
        let r = Arc::new(RemoteReplica {
            link: self.clone(),
            disk: desc.clone(),
            objects,
            space: Mutex::new(space),
            st: Mutex::new(State {
                mode: Reachability::Up,
                since: None,
                inflight: 0,
                unsure: 0,
                dirty: HashSet::new(),
                unflushed: HashMap::new(),
                seq: 0,
                restarts_seen: self.restarts.load(Ordering::Acquire),
                misses: 0,
            }),
            away_events: AtomicU64::new(0),
        });
        spawn_heartbeat(Arc::downgrade(&r), self.cfg.heartbeat);
        Ok(r)
    }
}

fn call_err(e: CallErr) -> MirrorError {
    match e {
        CallErr::Net(m) | CallErr::Refused(m) => {
            MirrorError::Protocol(format!("peer unreachable: {m}"))
        }
        CallErr::Wire(w) => MirrorError::Peer(w),
    }
}

pub(crate) struct State {
    pub(crate) mode: Reachability,
    pub(crate) since: Option<Instant>,
    /// Changes sent and not answered yet (`mutate_encoded`); the replica reopens only once
    /// none is left, so each one's outcome is known or counted in `unsure`.
    inflight: u32,
    /// The newest session of a change that left without a definite answer (timed out, its
    /// connection lost, given up by its caller): it may still land on the peer, so the session
    /// the replica reopens with must be newer (the peer then answers only once it cannot).
    unsure: u64,
    pub(crate) dirty: HashSet<ObjectId>,
    /// Objects written since the peer's last completed flush, with the write's sequence.
    pub(crate) unflushed: HashMap<ObjectId, u64>,
    pub(crate) seq: u64,
    restarts_seen: u64,
    misses: u32,
}

impl State {
    fn go_away(&mut self) {
        if self.mode != Reachability::Away {
            self.mode = Reachability::Away;
            self.since = Some(Instant::now());
        }
        self.misses = 0;
        let lost: Vec<ObjectId> = self.unflushed.drain().map(|(o, _)| o).collect();
        self.dirty.extend(lost);
    }
}

/// Armed while a mutation's request may be on its way to the peer. Dropped armed (the caller
/// gave the mutation up: a guest's request cancelled, a client gone) after the request was
/// handed to the connection, the request may still be applied there at any time, after
/// whatever the caller does next to the chunk (a reconcile's copy, a newer write sent once the
/// chunk's lock is free). So the replica goes away with the objects dirty, as after a timeout:
/// nothing more is sent, and once its other changes in flight have answered it reopens under a
/// session newer than this one, which the peer answers only once no mutation of an older
/// session is running or can start (the server's `Hello`); the resync that follows copies the
/// objects from the surviving replica. Dropped before the request left, only the in-flight
/// count goes.
struct Abandoned<'a> {
    replica: &'a RemoteReplica,
    mark: &'a [ObjectId],
    session: u64,
    armed: bool,
    /// Set by the transport just before the request leaves: dropped before that (still
    /// connecting, or waiting for an in-flight slot), nothing can reach the peer.
    sent: AtomicBool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let r = self.replica;
        let mut st = r.st.lock();
        st.inflight -= 1;
        if self.sent.load(Ordering::Acquire) {
            tracing::warn!(node = r.link.node_id, disk = %r.disk.name, "a change sent to the peer was given up before its answer; resyncing the replica under a new session");
            r.missed(&mut st, self.mark, Some(self.session));
        }
    }
}

/// A replica on a disk of another node.
pub struct RemoteReplica {
    pub(crate) link: Arc<PeerLink>,
    pub(crate) disk: DiskDesc,
    pub(crate) objects: Vec<ObjectId>,
    pub(crate) space: Mutex<Space>,
    pub(crate) st: Mutex<State>,
    pub(crate) away_events: AtomicU64,
}

impl std::fmt::Debug for RemoteReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RemoteReplica({} on node {})",
            self.disk.name, self.link.node_id
        )
    }
}

pub(crate) fn gone(node: u64, what: &str) -> StoreError {
    StoreError::Io {
        context: format!("replica on node {node}"),
        source: blockdev::BlockError::new(blockdev::ErrorKind::Gone, what.to_string()),
    }
}

/// A peer's error reply as a store error. A refusal that is not about the peer's device
/// (`Fenced`: this node no longer owns the disk) must not become `StoreError::Io`: the engine
/// takes Io for a failed device, drops that replica and acknowledges on the other one alone —
/// exactly what a fence forbids. It stays a request error here, and the front ends answer it
/// with EIO (an NBD client or guest must see a failed write, never "invalid argument").
pub(crate) fn wire_to_store(node: u64, w: WireError) -> StoreError {
    match w {
        WireError::Store { kind, msg } => {
            let msg = format!("node {node}: {msg}");
            match kind {
                StoreKind::Io => StoreError::Io {
                    context: msg.clone(),
                    source: blockdev::BlockError::new(blockdev::ErrorKind::Io, msg),
                },
                StoreKind::Poisoned => StoreError::Poisoned(msg),
                StoreKind::Corrupt { obj, block, gen } => StoreError::Corrupt { obj, block, gen },
                StoreKind::NoSpace => StoreError::NoSpace(msg),
                StoreKind::NotBlank => StoreError::NotBlank(msg),
                StoreKind::NotOurs => StoreError::NotOurs(msg),
                StoreKind::InvalidArgument => StoreError::InvalidArgument(msg),
                StoreKind::BadMetadata => StoreError::BadMetadata(msg),
            }
        }
        other => StoreError::InvalidArgument(format!("node {node}: {other}")),
    }
}

impl RemoteReplica {
    pub fn desc(&self) -> &DiskDesc {
        &self.disk
    }

    /// Times this replica went away.
    pub fn away_events(&self) -> u64 {
        self.away_events.load(Ordering::Relaxed)
    }

    pub(crate) fn fence(&self, vdisk: u64) -> Fence {
        Fence {
            vdisk,
            epoch: self.link.epochs.get(vdisk),
            session: self.link.session(),
        }
    }

    pub(crate) fn note_restart(&self, st: &mut State) {
        let r = self.link.restarts.load(Ordering::Acquire);
        if r != st.restarts_seen {
            st.restarts_seen = r;
            // The peer restarted: whatever it had not flushed may be gone.
            let lost: Vec<ObjectId> = st.unflushed.drain().map(|(o, _)| o).collect();
            st.dirty.extend(lost);
            if st.mode == Reachability::Up && !st.dirty.is_empty() {
                st.mode = Reachability::Back;
            }
        }
    }

    /// A change of `mark` was not applied, or its outcome is unknown: the replica goes away
    /// with those objects dirty. `unsure`: its session, when it may still land on the peer.
    fn missed(&self, st: &mut State, mark: &[ObjectId], unsure: Option<u64>) {
        if let Some(s) = unsure {
            st.unsure = st.unsure.max(s);
        }
        self.went_away(st);
        st.dirty.extend(mark.iter().copied());
    }

    pub(crate) fn went_away(&self, st: &mut State) {
        if st.mode != Reachability::Away {
            self.away_events.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node = self.link.node_id, disk = %self.disk.name, "peer replica away; writes continue on the survivor");
        }
        st.go_away();
    }

    /// Send a mutation unless the replica is away or one of `check` is dirty (then record
    /// `mark` as dirty and succeed).
    pub(crate) async fn mutate(&self, check: &[ObjectId], mark: &[ObjectId], req: Req) -> R<()> {
        let session = req.fence().map_or(0, |f| f.session);
        let timeout = match req {
            Req::Import { .. } => self.link.cfg.bulk_timeout,
            _ => self.link.cfg.call_timeout,
        };
        let payload = self.link.encode(&req)?;
        let out = Outgoing {
            payload,
            session,
            timeout,
        };
        self.mutate_encoded(check, mark, out).await
    }

    /// `mutate` with the request already encoded.
    pub(crate) async fn mutate_encoded(
        &self,
        check: &[ObjectId],
        mark: &[ObjectId],
        out: Outgoing,
    ) -> R<()> {
        let alone = {
            let mut st = self.st.lock();
            if st.mode == Reachability::Away || check.iter().any(|o| st.dirty.contains(o)) {
                st.dirty.extend(mark.iter().copied());
                true
            } else {
                st.inflight += 1;
                false
            }
        };
        if alone {
            return self.without_holder().await;
        }
        let mut abandoned = Abandoned {
            replica: self,
            mark,
            session: out.session,
            armed: true,
            sent: AtomicBool::new(false),
        };
        let r = self
            .link
            .call_encoded(out.payload, out.timeout, &abandoned.sent)
            .await;
        abandoned.armed = false;
        {
            let mut st = self.st.lock();
            st.inflight -= 1;
            self.note_restart(&mut st);
            match r {
                Ok(_) => {
                    st.seq += 1;
                    let s = st.seq;
                    for o in mark {
                        st.unflushed.insert(*o, s);
                    }
                    return Ok(());
                }
                Err(CallErr::Net(_)) => {
                    let left = abandoned.sent.load(Ordering::Acquire);
                    self.missed(&mut st, mark, left.then_some(out.session));
                }
                Err(CallErr::Refused(_)) => self.missed(&mut st, mark, None),
                Err(CallErr::Wire(w)) => return Err(wire_to_store(self.link.node_id, w)),
            }
        }
        self.without_holder().await
    }

    /// A mutation was recorded as dirty instead of reaching the holder: it may count as done
    /// only if the cluster agrees this node writes without the holder (see `AlonePermit`).
    async fn without_holder(&self) -> R<()> {
        if self.link.epochs.may_write_without(self.link.node_id).await {
            return Ok(());
        }
        Err(StoreError::InvalidArgument(format!(
            "node {} is unreachable and the cluster did not confirm that this node may write \
             without it (no majority reachable, or this node's virtual disks were taken over \
             by another node); write refused",
            self.link.node_id
        )))
    }

    /// A read-only request; fails fast while away.
    pub(crate) async fn query(
        &self,
        obj: Option<ObjectId>,
        req: Req,
        timeout: Duration,
    ) -> R<Body> {
        {
            let st = self.st.lock();
            if st.mode == Reachability::Away {
                return Err(gone(self.link.node_id, "node unreachable"));
            }
            if obj.is_some_and(|o| st.dirty.contains(&o)) {
                return Err(gone(self.link.node_id, "replica stale until resynced"));
            }
        }
        let r = self.link.call(&req, timeout).await;
        let mut st = self.st.lock();
        self.note_restart(&mut st);
        match r {
            Ok(b) => Ok(b),
            Err(CallErr::Net(m) | CallErr::Refused(m)) => {
                self.went_away(&mut st);
                Err(gone(self.link.node_id, &m))
            }
            Err(CallErr::Wire(w)) => Err(wire_to_store(self.link.node_id, w)),
        }
    }

    pub(crate) fn bad_reply(&self, what: &str, b: Body) -> StoreError {
        StoreError::InvalidArgument(format!(
            "node {}: unexpected reply to {what}: {b:?}",
            self.link.node_id
        ))
    }

    /// One heartbeat: true while the replica should keep beating.
    async fn beat(&self) {
        let mode = self.st.lock().mode;
        let ping = Req::Ping {
            disk: self.disk.id.clone(),
        };
        match mode {
            Reachability::Away => {
                let unsure = {
                    let st = self.st.lock();
                    if st.inflight > 0 {
                        // Their outcomes come within the call timeout.
                        return;
                    }
                    st.unsure
                };
                if self.link.hello(Some(unsure)).await.is_err() {
                    return;
                }
                if let Ok(Body::Space(s)) = self.link.call(&ping, self.link.cfg.call_timeout).await
                {
                    *self.space.lock() = s;
                    let mut st = self.st.lock();
                    self.note_restart(&mut st);
                    if st.mode == Reachability::Away {
                        st.mode = Reachability::Back;
                        st.misses = 0;
                        tracing::info!(node = self.link.node_id, disk = %self.disk.name, dirty = st.dirty.len(), "peer replica back; resync pending");
                    }
                }
            }
            Reachability::Up | Reachability::Back => {
                let r = self.link.call(&ping, self.link.cfg.call_timeout).await;
                let mut st = self.st.lock();
                self.note_restart(&mut st);
                match r {
                    Ok(Body::Space(s)) => {
                        st.misses = 0;
                        *self.space.lock() = s;
                    }
                    _ => {
                        st.misses += 1;
                        if st.misses >= self.link.cfg.heartbeat_misses {
                            self.went_away(&mut st);
                        }
                    }
                }
            }
        }
    }
}

fn spawn_heartbeat(weak: Weak<RemoteReplica>, period: Duration) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let Some(r) = weak.upgrade() else { break };
            r.beat().await;
        }
    });
}
