//! The replica server: serves this node's pool disks to peers that mirror their virtual disks
//! onto them, over mutual TLS (`transport`), with fencing.
//!
//! Objects of other nodes' virtual disks live in our stores under `wire::hosted_id` (the
//! `FOREIGN_VDISK_BIT`, the writing peer's node id from its certificate, its virtual disk id),
//! so they never mix with this node's own nor with another peer's, and a peer only ever reaches
//! its own copies — except a *retired* copy (epoch maximum after a takeover: nobody can change
//! it any more), which any member may list and export to gather a taken-over virtual disk
//! (`Req::HeldObjects`, `Req::HeldExport`; see `held`). Epochs are kept per hosted id too. The server never writes a store's metadata slot and never
//! closes a store (the local engine owns both). A request that fails validation, names an
//! unknown disk, carries an old epoch or an old session gets a typed error reply.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use blockdev::AlignedBuf;
use engine::{Engine, Replica, FOREIGN_VDISK_BIT};
use parking_lot::{Mutex, RwLock};
use store::{BlockVersions, ObjectId, StoreError, VersionData};
use transport::{Handler, NodeId, NodeIdentity, RemoteError, ServerConfig, ServerHandle, StreamRx};

use crate::error::Result;
use crate::fence::EpochTable;
use crate::wire::*;

/// A served disk: what peers are told about it, and its replica.
type Served = (DiskDesc, Arc<dyn Replica>);

/// Serves local disks to peers. Create with [`ReplicaServer::new`], add disks, then `start`.
pub struct ReplicaServer {
    instance: u64,
    node_id: u64,
    disks: RwLock<HashMap<String, Served>>,
    epochs: EpochTable,
    described: crate::described::Described,
    /// Each peer node's sessions.
    sessions: Mutex<HashMap<NodeId, Arc<PeerSession>>>,
    /// Plug the served disks while a connection starts a burst of requests (see
    /// [`ReplicaServer::set_batching`]).
    batching: std::sync::atomic::AtomicBool,
}

/// How long a `Hello` waits for the older sessions' mutations still running here (a hung
/// device keeps one running for good): past it, the new session is refused for now (the floor
/// stays raised) and the peer asks again. Below the peer's call timeout, so the refusal
/// arrives.
const OPEN_WAIT: std::time::Duration = std::time::Duration::from_millis(1000);

/// A peer node's sessions: the highest it opened (`Req::Hello`), and its mutations running
/// here, counted by session. A `Hello` raises the floor first (later requests of older
/// sessions are refused from then on), then answers only once none of the older sessions'
/// mutations is still running: the peer may then resync what it left dirty without a late
/// write of an old session landing after the copy (a write it gave up, or one that timed out).
/// Mutations of the new session never wait for that.
#[derive(Default)]
struct PeerSession {
    st: Mutex<SessionState>,
    ended: tokio::sync::Notify,
}

#[derive(Default)]
struct SessionState {
    floor: u64,
    /// Mutations running, by session.
    running: std::collections::BTreeMap<u64, usize>,
}

/// A mutation admitted under a session: counted as running while this lives.
struct Running {
    peer: Arc<PeerSession>,
    session: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut st = self.peer.st.lock();
        if let Some(n) = st.running.get_mut(&self.session) {
            *n -= 1;
            if *n == 0 {
                st.running.remove(&self.session);
                drop(st);
                self.peer.ended.notify_waiters();
            }
        }
    }
}

impl PeerSession {
    /// Admits a mutation fenced with `f` (refused if its session is older than the floor).
    fn admit(self: Arc<Self>, f: &Fence) -> std::result::Result<Running, WireError> {
        {
            let mut st = self.st.lock();
            if f.session < st.floor {
                return Err(WireError::StaleSession {
                    sent: f.session,
                    current: st.floor,
                });
            }
            *st.running.entry(f.session).or_insert(0) += 1;
        }
        Ok(Running {
            peer: self,
            session: f.session,
        })
    }

    /// Opens `session` (raises the floor to it unless higher already) and waits, at most
    /// `wait`, until no mutation of an older session runs.
    async fn open(
        &self,
        session: u64,
        wait: std::time::Duration,
    ) -> std::result::Result<(), WireError> {
        {
            let mut st = self.st.lock();
            st.floor = st.floor.max(session);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            // Registered before the look, so an end right after it still wakes this.
            ended.as_mut().enable();
            let older = self
                .st
                .lock()
                .running
                .range(..session)
                .map(|(_, n)| *n)
                .sum::<usize>();
            if older == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return Err(WireError::Server(format!(
                    "{older} change(s) of this node's older sessions still running here (a slow \
                     or hung device); the new session opens once they end"
                )));
            }
        }
    }
}

impl std::fmt::Debug for ReplicaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplicaServer(node {})", self.node_id)
    }
}

pub(crate) fn to_local(home: NodeId, o: ObjectId) -> ObjectId {
    ObjectId {
        vdisk: hosted_id(home, o.vdisk),
        chunk: o.chunk,
    }
}

pub(crate) fn from_local(o: ObjectId) -> ObjectId {
    ObjectId {
        vdisk: o.vdisk & MAX_WIRE_VDISK,
        chunk: o.chunk,
    }
}

/// Whether a local object is a copy `home` wrote.
fn of_home(home: NodeId, o: &ObjectId) -> bool {
    o.vdisk & FOREIGN_VDISK_BIT != 0 && hosted_home(o.vdisk) == Some(home)
}

/// Objects in `engine`'s stores that are copies of other nodes' virtual disks.
pub fn hosted_objects(engine: &Engine) -> u64 {
    engine
        .local_replicas()
        .iter()
        .map(|(_, r)| {
            r.objects()
                .iter()
                .filter(|o| o.vdisk & FOREIGN_VDISK_BIT != 0 && o.chunk != engine::PRUNE_MARK_CHUNK)
                .count() as u64
        })
        .sum()
}

fn store_err(e: StoreError) -> WireError {
    use store::ErrorKind as K;
    let kind = match e.kind() {
        K::Io => StoreKind::Io,
        K::Poisoned => StoreKind::Poisoned,
        K::Corrupt { obj, block, gen } => StoreKind::Corrupt {
            obj: from_local(obj),
            block,
            gen,
        },
        K::NoSpace => StoreKind::NoSpace,
        K::NotBlank => StoreKind::NotBlank,
        K::NotOurs => StoreKind::NotOurs,
        K::InvalidArgument => StoreKind::InvalidArgument,
        K::BadMetadata => StoreKind::BadMetadata,
    };
    WireError::Store {
        kind,
        msg: e.to_string(),
    }
}

impl ReplicaServer {
    /// `state_dir` holds the durable epoch table (keep it on the node's data disk).
    pub fn new(node_id: u64, state_dir: &Path) -> Result<Arc<ReplicaServer>> {
        Ok(Arc::new(ReplicaServer {
            instance: rand::random::<u64>() | 1,
            node_id,
            disks: RwLock::new(HashMap::new()),
            epochs: EpochTable::open(state_dir)?,
            described: crate::described::Described::open(state_dir)?,
            sessions: Mutex::new(HashMap::new()),
            batching: std::sync::atomic::AtomicBool::new(true),
        }))
    }

    /// Serve one disk (replaces an earlier entry with the same id).
    pub fn serve_disk(&self, desc: DiskDesc, replica: Arc<dyn Replica>) {
        self.disks.write().insert(desc.id.clone(), (desc, replica));
    }

    /// Serve every disk of this node's engine (call again after disks are added).
    pub fn serve_engine(&self, engine: &Engine) {
        for (info, replica) in engine.local_replicas() {
            self.serve_disk(
                DiskDesc {
                    id: info.id,
                    name: info.name,
                    node_id: self.node_id,
                    size_bytes: info.size_bytes,
                },
                replica,
            );
        }
    }

    /// Whether requests that arrive together are started under one plug of each served disk
    /// (on by default: one submission and one doorbell per burst). Off, each request goes to
    /// its device on its own, as before batching existed (for A/B measurements).
    pub fn set_batching(&self, on: bool) {
        self.batching
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stop serving a disk.
    pub fn unserve_disk(&self, id: &str) {
        self.disks.write().remove(id);
    }

    pub fn disks(&self) -> Vec<DiskDesc> {
        let mut v: Vec<DiskDesc> = self.disks.read().values().map(|(d, _)| d.clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub fn epochs(&self) -> &EpochTable {
        &self.epochs
    }

    /// What each peer (by node id) last described of its virtual disks (`Req::Describe`).
    pub fn described(&self) -> Vec<(u64, Vec<engine::VdiskRecord>)> {
        self.described.all()
    }

    /// Retire the copy `home` keeps here for its `vdisk` (a takeover): its epoch goes to the
    /// maximum, so no writer (the old owner, even restarted with a newer epoch) can ever change
    /// it again. Once this returns, no write of the old owner is still running on it.
    pub async fn retire(&self, home: u64, vdisk: u64) -> Result<()> {
        self.epochs
            .raise(hosted_id(home, vdisk), u64::MAX)
            .await
            .map_err(crate::error::MirrorError::Peer)
    }

    /// Forget `home`'s description of `vdisk` (after its copy was taken over).
    pub async fn forget_described(&self, home: u64, vdisk: u64) -> Result<()> {
        self.described.forget(home, vdisk).await
    }

    /// Listen on `addr` (mutual TLS with this node's cluster identity).
    pub async fn start(
        self: &Arc<Self>,
        addr: SocketAddr,
        identity: &NodeIdentity,
    ) -> Result<ServerHandle> {
        let cfg = ServerConfig {
            max_frame_bytes: MAX_MSG_BYTES,
            ..ServerConfig::default()
        };
        let tls = transport::server_tls_config(identity)?;
        let h =
            transport::Server::bind(addr, tls, cfg, Arc::new(ServerHandler(self.clone()))).await?;
        Ok(h)
    }

    fn disk(&self, id: &str) -> std::result::Result<Arc<dyn Replica>, WireError> {
        self.disks
            .read()
            .get(id)
            .map(|(_, r)| r.clone())
            .ok_or_else(|| WireError::NoDisk(id.to_string()))
    }

    fn session(&self, peer: NodeId) -> Arc<PeerSession> {
        self.sessions.lock().entry(peer).or_default().clone()
    }

    async fn serve(&self, peer: Option<NodeId>, req: Req) -> std::result::Result<Body, WireError> {
        req.validate()?;
        let peer = peer.ok_or_else(|| WireError::BadRequest("anonymous peer".into()))?;
        if peer > MAX_HOME_NODE {
            return Err(WireError::BadRequest(format!(
                "node id {peer} out of range for a replica writer"
            )));
        }
        let _admitted = match req.fence() {
            Some(f) => {
                // The session first: a stale request raises no epoch.
                let s = self.session(peer).admit(&f)?;
                let e = self
                    .epochs
                    .admit(hosted_id(peer, f.vdisk), f.epoch)
                    .await
                    .map_err(|e| wire_vdisk(e, f.vdisk))?;
                Some((s, e))
            }
            None => None,
        };
        let se = store_err;
        let to_local = |o| to_local(peer, o);
        match req {
            Req::Hello { session } => {
                self.session(peer).open(session, OPEN_WAIT).await?;
                Ok(Body::Hello {
                    disks: self.disks(),
                })
            }
            Req::Describe { vdisks } => {
                self.described
                    .set(peer, vdisks)
                    .await
                    .map_err(|e| WireError::Server(format!("recording descriptions: {e}")))?;
                Ok(Body::Unit)
            }
            Req::Raise { home, vdisk, epoch } => {
                self.epochs
                    .raise(hosted_id(home, vdisk), epoch)
                    .await
                    .map_err(|e| wire_vdisk(e, vdisk))?;
                Ok(Body::Unit)
            }
            Req::Ping { disk } => Ok(Body::Space(self.disk(&disk)?.space())),
            Req::Objects { disk } => Ok(Body::Objects(
                self.disk(&disk)?
                    .objects()
                    .into_iter()
                    .filter(|o| of_home(peer, o))
                    .map(from_local)
                    .collect(),
            )),
            Req::Write {
                disk,
                obj,
                block,
                data,
                crcs,
                gen,
                pin,
                ..
            } => {
                // TLS protects the bytes in flight; this catches a sender that checksummed
                // something else than it sent.
                let sent = data.as_slice().chunks(4096).map(blockdev::crc32c);
                if !sent.eq(crcs.iter().copied()) {
                    return Err(WireError::BadRequest(
                        "block checksums do not match the data".into(),
                    ));
                }
                let r = self.disk(&disk)?;
                // Whole blocks (validated): the decoded buffer is exactly the data.
                let buf = data.into_buf().into_write();
                r.write_with_crcs(to_local(obj), block, buf, crcs.0, gen, pin)
                    .await
                    .map_err(se)?;
                Ok(Body::Unit)
            }
            Req::Read {
                disk,
                obj,
                block,
                nblocks,
                at_gen,
            } => {
                let b = self
                    .disk(&disk)?
                    .read(to_local(obj), block, nblocks, at_gen)
                    .await
                    .map_err(se)?;
                let n = nblocks as usize * 4096;
                let data = b.get(..n).ok_or_else(|| {
                    WireError::Server(format!("store returned {} bytes for {n}", b.len()))
                })?;
                Ok(Body::Data(Bytes(data.to_vec())))
            }
            Req::Discard {
                disk,
                obj,
                block,
                nblocks,
                gen,
                pin,
                ..
            } => {
                self.disk(&disk)?
                    .discard(to_local(obj), block, nblocks, gen, pin)
                    .await
                    .map_err(se)?;
                Ok(Body::Unit)
            }
            Req::Flush { disk } => {
                self.disk(&disk)?.flush().await.map_err(se)?;
                Ok(Body::Unit)
            }
            Req::Clone {
                disk,
                src,
                at_gen,
                dst,
                dst_gen,
                ..
            } => {
                self.disk(&disk)?
                    .clone_object(to_local(src), at_gen, to_local(dst), dst_gen)
                    .await
                    .map_err(se)?;
                Ok(Body::Unit)
            }
            Req::Rollback {
                disk,
                obj,
                snap_gen,
                gen,
                pin,
                ..
            } => {
                self.disk(&disk)?
                    .rollback_object(to_local(obj), snap_gen, gen, pin)
                    .await
                    .map_err(se)?;
                Ok(Body::Unit)
            }
            Req::Delete { disk, obj, .. } => {
                self.disk(&disk)?
                    .delete_object(to_local(obj))
                    .await
                    .map_err(se)?;
                Ok(Body::Unit)
            }
            Req::Prune {
                disk,
                fence,
                snap_gens,
                ..
            } => {
                let mut gens = snap_gens;
                gens.sort_unstable();
                self.disk(&disk)?
                    .prune(hosted_id(peer, fence.vdisk), gens)
                    .await
                    .map_err(se)?;
                Ok(Body::Unit)
            }
            Req::Export { disk, obj } => {
                let v = self
                    .disk(&disk)?
                    .export_object(to_local(obj))
                    .await
                    .map_err(se)?;
                Ok(Body::Versions(to_wire(v)))
            }
            Req::Import {
                disk,
                obj,
                versions,
                ..
            } => {
                self.disk(&disk)?
                    .import_object(to_local(obj), from_wire(versions))
                    .await
                    .map_err(se)?;
                Ok(Body::Unit)
            }
            Req::Repair {
                disk,
                obj,
                block,
                gen,
                data,
                ..
            } => {
                let buf = AlignedBuf::from_slice(&data.0).into_write();
                self.disk(&disk)?
                    .repair(to_local(obj), block, gen, buf)
                    .await
                    .map_err(se)?;
                Ok(Body::Unit)
            }
            Req::Scrub { disk } => {
                let rep = self.disk(&disk)?.scrub().await.map_err(se)?;
                Ok(Body::Scrub {
                    checked_blocks: rep.checked_blocks,
                    corrupt: rep
                        .corrupt
                        .into_iter()
                        .filter(|(o, _, _)| of_home(peer, o))
                        .map(|(o, b, g)| (from_local(o), b, g))
                        .collect(),
                })
            }
            Req::Changed {
                disk,
                obj,
                from_gen,
                to_gen,
            } => Ok(Body::Blocks(self.disk(&disk)?.changed_blocks(
                to_local(obj),
                from_gen,
                to_gen,
            ))),
            Req::VersionRecords { disk, obj } => {
                let d = self.disk(&disk)?;
                // A replica that cannot list (not one of this server's own stores) says so: an
                // empty list would read as a chunk with no versions, a difference.
                let records = d
                    .version_records(to_local(obj))
                    .await
                    .map_err(se)?
                    .ok_or_else(|| {
                        WireError::BadRequest(format!("disk {disk} cannot list versions"))
                    })?;
                Ok(Body::Records(
                    records
                        .into_iter()
                        .map(|r| (r.block, r.gen, r.crc))
                        .collect(),
                ))
            }
            Req::HeldObjects {
                home,
                vdisk,
                from_chunk,
            } => {
                self.check_retired(home, vdisk)?;
                let (chunks, more) = self.held_objects(hosted_id(home, vdisk), from_chunk);
                Ok(Body::Held { chunks, more })
            }
            Req::HeldExport {
                disk,
                home,
                vdisk,
                chunk,
                from_block,
            } => {
                self.check_retired(home, vdisk)?;
                let obj = ObjectId {
                    vdisk: hosted_id(home, vdisk),
                    chunk,
                };
                let v = self.disk(&disk)?.export_object(obj).await.map_err(se)?;
                let (blocks, next_block) = crate::held::page(v, from_block);
                Ok(Body::HeldPart { blocks, next_block })
            }
        }
    }

    /// Held copies are handed to other nodes only once retired: nothing can change them then.
    fn check_retired(&self, home: u64, vdisk: u64) -> std::result::Result<(), WireError> {
        if self.epochs.current(hosted_id(home, vdisk)) == u64::MAX {
            Ok(())
        } else {
            Err(WireError::NotRetired { home, vdisk })
        }
    }

    /// (disk, chunk) of the objects stored under `hosted` on every served disk, sorted by
    /// chunk, from `from_chunk` on, cut at a chunk boundary near [`MAX_HELD_LIST`].
    fn held_objects(&self, hosted: u64, from_chunk: u64) -> (Vec<(String, u64)>, bool) {
        let disks: Vec<(String, Arc<dyn Replica>)> = self
            .disks
            .read()
            .iter()
            .map(|(id, (_, r))| (id.clone(), r.clone()))
            .collect();
        let mut out: Vec<(String, u64)> = Vec::new();
        for (id, r) in disks {
            out.extend(
                r.objects()
                    .into_iter()
                    .filter(|o| {
                        o.vdisk == hosted
                            && o.chunk != engine::PRUNE_MARK_CHUNK
                            && o.chunk >= from_chunk
                    })
                    .map(|o| (id.clone(), o.chunk)),
            );
        }
        out.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        if out.len() <= MAX_HELD_LIST {
            return (out, false);
        }
        // The rest starts at the chunk of the first entry left out; never split a chunk's
        // holders over two answers.
        let cut_chunk = out[MAX_HELD_LIST].1;
        if cut_chunk == out[0].1 {
            // One chunk on more disks than the bound (never in practice): send that chunk.
            out.retain(|(_, c)| *c == cut_chunk);
        } else {
            out.retain(|(_, c)| *c < cut_chunk);
        }
        (out, true)
    }
}

/// An epoch error names the epoch table's key; the peer knows the disk by its own id.
fn wire_vdisk(e: WireError, vdisk: u64) -> WireError {
    match e {
        WireError::Fenced { sent, current, .. } => WireError::Fenced {
            vdisk,
            sent,
            current,
        },
        other => other,
    }
}

pub(crate) fn to_wire(v: Vec<BlockVersions>) -> Vec<WireBlock> {
    v.into_iter()
        .map(|b| WireBlock {
            block: b.block,
            versions: b
                .versions
                .into_iter()
                .map(|x| WireVersion {
                    gen: x.gen,
                    data: x.data.map(|d| Bytes(d[..].to_vec())),
                })
                .collect(),
        })
        .collect()
}

pub(crate) fn from_wire(v: Vec<WireBlock>) -> Vec<BlockVersions> {
    // Every block is gathered into one buffer and handed out as windows of it, so the import
    // writes each allocated run with one request (a buffer per block cost one write each). A
    // version whose data is not one block keeps a buffer of its own (the import refuses it).
    const BS: usize = 4096;
    let whole = |d: &Option<crate::wire::Bytes>| d.as_ref().is_some_and(|d| d.0.len() == BS);
    let n = v
        .iter()
        .flat_map(|b| b.versions.iter())
        .filter(|x| whole(&x.data))
        .count();
    let mut blocks = if n == 0 {
        Vec::new()
    } else {
        let mut buf = AlignedBuf::for_overwrite(n * BS);
        let mut at = 0;
        for d in v.iter().flat_map(|b| b.versions.iter()).map(|x| &x.data) {
            if let Some(d) = d.as_ref().filter(|d| d.0.len() == BS) {
                buf[at..at + BS].copy_from_slice(&d.0);
                at += BS;
            }
        }
        store::BlockData::blocks_of(buf)
    }
    .into_iter();
    v.into_iter()
        .map(|b| BlockVersions {
            block: b.block,
            versions: b
                .versions
                .into_iter()
                // Checksummed here, once: the peer's export checked its data against its map
                // and TLS carried it; the import takes this crc as it is.
                .map(|x| match x.data {
                    Some(d) if d.0.len() == BS => match blocks.next() {
                        Some(blk) => VersionData::of_block(x.gen, blk),
                        None => VersionData::new(x.gen, Some(AlignedBuf::from_slice(&d.0))),
                    },
                    d => VersionData::new(x.gen, d.map(|d| AlignedBuf::from_slice(&d.0))),
                })
                .collect(),
        })
        .collect()
}

struct ServerHandler(Arc<ReplicaServer>);

impl Handler for ServerHandler {
    type Request = Req;
    type Response = Resp;
    async fn handle(
        &self,
        peer: Option<NodeId>,
        req: Req,
        _body: Option<StreamRx>,
    ) -> std::result::Result<Resp, RemoteError> {
        let result = self.0.serve(peer, req).await;
        Ok(Resp {
            instance: self.0.instance,
            result,
        })
    }

    /// Requests that arrived together (a peer's burst of writes, several per socket read)
    /// reach each served disk in one submission: its device is plugged while the connection
    /// starts them (see `transport::Handler::batch`).
    fn batch(&self) -> Option<transport::Batch> {
        if !self.0.batching.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let plugs: Vec<blockdev::Plug> = self
            .0
            .disks
            .read()
            .values()
            .filter_map(|(_, r)| r.local_store()?.plug())
            .collect();
        (!plugs.is_empty()).then(|| Box::new(plugs) as transport::Batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(session: u64) -> Fence {
        Fence {
            vdisk: 1,
            epoch: 1,
            session,
        }
    }

    /// A new session opens only once the older sessions' mutations have ended, refuses
    /// those still to come, never holds the new session's mutations back, and gives up after
    /// its wait (a hung device) with the floor raised all the same.
    #[tokio::test]
    async fn a_new_session_waits_for_the_old_ones_mutations_and_refuses_the_rest() {
        let wait = std::time::Duration::from_secs(5);
        let s = Arc::new(PeerSession::default());
        s.open(5, wait).await.unwrap();
        let running = s.clone().admit(&fence(5)).unwrap();
        tokio::time::timeout(wait, s.open(5, wait))
            .await
            .expect("the same session opens at once")
            .unwrap();
        let s2 = s.clone();
        let opening = tokio::spawn(async move { s2.open(6, wait).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!opening.is_finished(), "opened under a running mutation");
        assert!(matches!(
            s.clone().admit(&fence(5)).map(drop),
            Err(WireError::StaleSession {
                sent: 5,
                current: 6
            })
        ));
        drop(
            s.clone()
                .admit(&fence(6))
                .expect("the new session is admitted meanwhile"),
        );
        drop(running);
        tokio::time::timeout(wait, opening)
            .await
            .expect("opens once the old mutation ended")
            .unwrap()
            .unwrap();

        let hung = s.clone().admit(&fence(6)).unwrap();
        let short = std::time::Duration::from_millis(50);
        assert!(matches!(s.open(7, short).await, Err(WireError::Server(_))));
        assert!(
            s.clone().admit(&fence(6)).is_err(),
            "the floor is raised all the same"
        );
        drop(hung);
        s.open(7, short).await.unwrap();
    }
}
