//! Adopting the virtual disks the cluster assigned to this node after a takeover, from the
//! copies held here and on every other holder, and dropping a held copy once another node
//! adopted it (see the parent module's docs, steps 1-3 and the holders' side).
//!
//! Must never: read a holder's copy before every holder's copy is fenced, adopt while a data
//! member that may hold chunks is unreachable (a partial disk), or drop a held copy before its
//! new owner recorded the adopted disk.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use cluster::{ClusterNode, Role};
use engine::VdiskRecord;
use mirror::{PeerLink, ReplicaServer};

use super::{Takeover, CALL_TIMEOUT, PROPOSE_TIMEOUT};
use crate::NodeInner;

/// Whether the copy of `home`'s `vdisk` held here is retired (fenced forever by a takeover).
fn retired_here(server: &ReplicaServer, home: u64, vdisk: u64) -> bool {
    server.epochs().current(mirror::hosted_id(home, vdisk)) == u64::MAX
}

/// The description of virtual disk `name` to adopt from: by another node than `me`; a live
/// one (its copy not retired here) before a retired one — after a second takeover the first
/// owner's retired description may still be here — then the newest.
fn description_of<'a>(
    described: &'a [(u64, Vec<VdiskRecord>)],
    server: &ReplicaServer,
    me: u64,
    name: &str,
) -> Option<(u64, &'a VdiskRecord)> {
    described
        .iter()
        .filter(|(home, _)| *home != me)
        .flat_map(|(home, list)| list.iter().map(move |r| (*home, r)))
        .filter(|(_, r)| r.name == name)
        .max_by_key(|(home, r)| (!retired_here(server, *home, r.id), r.gen))
}

/// The live description, by another member, of the same virtual disk as this node's local
/// copy `name`, when the cluster assigns `name` to this node: that member adopted the disk
/// (from a copy of this one: the same placement seed, kept by every adoption) and this node
/// has not adopted it back from that member yet (adopting fences the copy held here, and a
/// copy retired here is no live one). So the local copy is from before the disk left: moved
/// away and back, or taken back, before this node dropped it (`super::drop_stale`). Such a
/// copy is never served; [`replace_stale`] drops it once a holder confirms it was retired,
/// and the disk is adopted from the newer owner's copy as any other.
///
/// A disk of this name deleted on that member and created here anew has another seed (each
/// create draws one): not taken for it.
fn newer_elsewhere(
    inner: &NodeInner,
    m: &ClusterNode,
    described: &[(u64, Vec<VdiskRecord>)],
    server: &ReplicaServer,
    name: &str,
) -> Option<(u64, VdiskRecord)> {
    let me = m.id();
    let assigned_here = m.read(|s| {
        s.vdisks
            .values()
            .any(|v| v.name == name && cluster::vdisk_owner(&v.id) == Some(me))
    });
    if !assigned_here {
        return None;
    }
    let local = inner
        .engine
        .vdisk_records()
        .into_iter()
        .find(|r| r.name == name)?;
    described
        .iter()
        .filter(|(home, _)| *home != me)
        .flat_map(|(home, list)| list.iter().map(move |r| (*home, r)))
        .filter(|(home, r)| {
            r.name == name && r.seed == local.seed && !retired_here(server, *home, r.id)
        })
        .max_by_key(|(_, r)| r.gen)
        .map(|(home, r)| (home, r.clone()))
}

/// Why this node must not serve its local virtual disk `name` (an export, a VM, the answer to
/// a mover asking whether it serves it): a newer copy of it is on another member, not adopted
/// here yet ([`newer_elsewhere`]). None when nothing says so.
pub(crate) fn not_adopted_yet(inner: &NodeInner, name: &str) -> Option<String> {
    let server = inner.mirror.server()?;
    let m = inner.cluster.member().ok()?;
    let described = server.described();
    let (home, _) = newer_elsewhere(inner, &m, &described, &server, name)?;
    Some(format!(
        "virtual disk {name} came back to this node, but its current data is still member \
         {home}'s copy, not adopted here yet; this node's copy of it is from before it left \
         and is never served: try again once this node adopted it (`cairn vdisk list` on \
         {home} and here, the node log says why it waits)"
    ))
}

/// Drops each local copy that [`newer_elsewhere`] finds stale once `retired(engine id)`
/// confirms that a holder fenced it forever (some member adopted from it, so it is not the
/// only current copy, and its replicas on that holder refuse this node's writes and deletes),
/// so that [`adopt_assigned`] adopts the disk from the newer copy. Without that confirmation
/// nothing is deleted (it stays unserved and is reported).
pub(super) async fn replace_stale<F, Fut>(
    inner: &NodeInner,
    m: &ClusterNode,
    server: &ReplicaServer,
    t: &mut Takeover,
    retired: F,
) where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let described = server.described();
    let me = m.id();
    // Names other members describe: in the steady state none is also a local disk's (names
    // are unique in the cluster), so nothing more is looked at.
    let theirs: HashSet<&str> = described
        .iter()
        .filter(|(home, _)| *home != me)
        .flat_map(|(_, list)| list.iter().map(|r| r.name.as_str()))
        .collect();
    for v in inner.engine.vdisks() {
        if !theirs.contains(v.name.as_str()) || crate::internal::is_internal_vdisk(&v.name) {
            continue;
        }
        let Some((home, rec)) = newer_elsewhere(inner, m, &described, server, &v.name) else {
            continue;
        };
        if !retired(v.id).await {
            t.once(format!(
                "virtual disk {} is assigned to this node again, but its local copy is from \
                 before it moved to member {home} and no holder has confirmed that copy \
                 retired yet: it is not served, and replaced by member {home}'s copy once one \
                 does",
                v.name
            ));
            continue;
        }
        let _g = inner.cluster.vdisk_lock.lock().await;
        if inner.engine.vdisk(&v.name).ok().map(|x| x.id) != Some(v.id) {
            continue;
        }
        for e in inner.exports.list() {
            if e.vdisk == v.name {
                let _ = inner.exports.stop(e.id).await;
            }
        }
        match inner.engine.delete_vdisk(&v.name).await {
            Ok(()) => {
                tracing::warn!(
                    vdisk = %v.name,
                    from = home,
                    gen = rec.gen,
                    "takeover: this virtual disk came back before this node dropped its copy \
                     from before it left; that stale copy is dropped and the disk is adopted \
                     from member {home}'s copy"
                );
                crate::events::record(
                    inner,
                    "warning",
                    "vdisk_stale_dropped",
                    &v.name,
                    format!(
                        "virtual disk {} came back from member {home} before this node dropped \
                         its copy from before the move: that stale copy was dropped, the \
                         current one is adopted",
                        v.name
                    ),
                );
            }
            Err(e) => {
                tracing::warn!(vdisk = %v.name, error = %e, "dropping a stale copy failed")
            }
        }
    }
}

/// Adopt every virtual disk the cluster assigns to this node that the engine lacks, or holds
/// only a stale copy of ([`replace_stale`]).
pub(super) async fn adopt_assigned(
    inner: &NodeInner,
    m: &Arc<ClusterNode>,
    server: &ReplicaServer,
    links: &[(u64, Arc<PeerLink>)],
    t: &mut Takeover,
) {
    let me = m.id();
    let retired = |id: u64| async move {
        for (_, link) in links {
            if super::retired_on(link, me, id).await == Some(true) {
                return true;
            }
        }
        false
    };
    replace_stale(inner, m, server, t, retired).await;
    let (assigned, data_members): (Vec<(String, String)>, Vec<u64>) = m.read(|s| {
        let assigned = s
            .vdisks
            .values()
            .filter(|v| cluster::vdisk_owner(&v.id) == Some(me))
            .map(|v| (v.id.clone(), v.name.clone()))
            .collect();
        let data = s
            .members
            .values()
            .filter(|x| x.role == Role::Data)
            .map(|x| x.id)
            .collect();
        (assigned, data)
    });
    let local: HashSet<String> = inner.engine.vdisks().into_iter().map(|v| v.name).collect();
    let missing: Vec<_> = assigned
        .into_iter()
        .filter(|(_, n)| !local.contains(n))
        .collect();
    // Served only once the old owner's isolation lease has surely run out (`crate::lease`).
    let missing = inner.lease.held_back(missing);
    if missing.is_empty() {
        return;
    }
    let described = server.described();
    for (id, name) in missing {
        let Some((home, rec)) = description_of(&described, server, me, &name) else {
            // A reservation in progress looks the same for a moment: only say so once.
            t.once(format!(
                "virtual disk {name} ({id}) is assigned to this node, but no copy held here \
                 describes it"
            ));
            continue;
        };
        // Every other data member may hold chunks of it: each must be linked.
        let others = data_members.iter().filter(|p| **p != home && **p != me);
        let holders: Result<Vec<(u64, Arc<PeerLink>)>, u64> = others
            .map(|p| {
                links
                    .iter()
                    .find(|(id, _)| id == p)
                    .map(|(id, l)| (*id, l.clone()))
                    .ok_or(*p)
            })
            .collect();
        let holders = match holders {
            Ok(h) => h,
            Err(peer) => {
                t.once(format!(
                    "takeover of virtual disk {name} waits: member {peer} may hold chunks of \
                     it and is not linked yet"
                ));
                continue;
            }
        };
        let _g = inner.cluster.vdisk_lock.lock().await;
        if inner.engine.vdisk(&name).is_ok() {
            continue;
        }
        match adopt_one(inner, server, home, rec, &holders).await {
            Ok(()) => {}
            Err(why) => t.once(format!("takeover of virtual disk {name} waits: {why}")),
        }
    }
}

/// Fence every holder's copy of `home`'s disk `rec`, gather it here and record it (see the
/// module docs). Err says why it waits (tried again next tick).
async fn adopt_one(
    inner: &NodeInner,
    server: &ReplicaServer,
    home: u64,
    rec: &VdiskRecord,
    holders: &[(u64, Arc<PeerLink>)],
) -> Result<(), String> {
    let name = &rec.name;
    let started = Instant::now();
    // Fence first, everywhere: from here on the old owner can never change any copy.
    server
        .retire(home, rec.id)
        .await
        .map_err(|e| format!("fencing the copy held here failed: {e}"))?;
    for (peer, link) in holders {
        match tokio::time::timeout(CALL_TIMEOUT, link.raise_for(home, rec.id, u64::MAX)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("fencing the copy on member {peer} failed: {e}")),
            Err(_) => return Err(format!("member {peer} did not answer the fence in time")),
        }
    }
    // Which chunks the other holders keep (they answer only for a retired copy).
    let mut elsewhere: BTreeMap<u64, Vec<(Arc<PeerLink>, String)>> = BTreeMap::new();
    for (peer, link) in holders {
        let listed = tokio::time::timeout(PROPOSE_TIMEOUT, link.held_objects(home, rec.id))
            .await
            .map_err(|_| format!("member {peer} did not list its copy in time"))?
            .map_err(|e| format!("member {peer} did not list its copy: {e}"))?;
        for (disk, chunk) in listed {
            elsewhere
                .entry(chunk)
                .or_default()
                .push((link.clone(), disk));
        }
    }
    let source = mirror::hosted_id(home, rec.id);
    let held = inner.engine.held_chunks(source);
    let remote: Vec<u64> = elsewhere.keys().copied().collect();
    let vdisk = rec.id;
    let fetched = std::sync::atomic::AtomicU64::new(0);
    let fetch = |chunk: u64| {
        let from = elsewhere.get(&chunk).cloned().unwrap_or_default();
        let fetched = &fetched;
        async move {
            let mut why = String::from("no holder lists it");
            for (link, disk) in from {
                match link.export_held(&disk, home, vdisk, chunk).await {
                    Ok(v) => {
                        fetched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return Ok(v);
                    }
                    Err(e) => why = format!("member {}: {e}", link.node_id()),
                }
            }
            Err(why)
        }
    };
    let v = inner
        .engine
        .adopt_vdisk_gathered(rec, source, &remote, fetch)
        .await
        .map_err(|e| format!("adopting the copies failed: {e}"))?;
    if let Err(e) = server.forget_described(home, rec.id).await {
        tracing::warn!(vdisk = %name, error = %e, "takeover: forgetting the description");
    }
    let fetched = fetched.into_inner();
    tracing::warn!(
        from = home,
        size = v.size_bytes,
        took_ms = started.elapsed().as_millis() as u64,
        "takeover: virtual disk {name} adopted from the held copies ({held} chunks held here, \
         {fetched} gathered from {} other holders); served by this node now",
        holders.len()
    );
    crate::events::record(
        inner,
        "warning",
        "vdisk_adopt",
        name,
        format!(
            "virtual disk {name} taken over from member {home}: adopted from the held copies \
             ({held} chunks held here, {fetched} gathered from {} other holders)",
            holders.len()
        ),
    );
    Ok(())
}

/// Drop copies held here of virtual disks another node adopted: retired here, and described
/// to this node by the member the cluster now assigns the disk to (it describes only disks its
/// engine recorded, so the adopted disk is durable there). The adopter drops its own.
pub(super) async fn drop_adopted(inner: &NodeInner, m: &Arc<ClusterNode>, server: &ReplicaServer) {
    let me = m.id();
    let described = server.described();
    for (home, list) in &described {
        if *home == me {
            continue;
        }
        for rec in list {
            if !retired_here(server, *home, rec.id) {
                continue;
            }
            let owner = m.read(|s| {
                s.vdisks
                    .values()
                    .find(|d| d.name == rec.name)
                    .and_then(|d| cluster::vdisk_owner(&d.id))
            });
            let Some(owner) = owner.filter(|o| o != home) else {
                continue;
            };
            let recorded = if owner == me {
                inner.engine.vdisk(&rec.name).is_ok()
            } else {
                described
                    .iter()
                    .any(|(h, l)| *h == owner && l.iter().any(|r| r.name == rec.name))
            };
            if !recorded {
                continue;
            }
            let source = mirror::hosted_id(*home, rec.id);
            match inner.engine.drop_held(source).await {
                Ok(n) => {
                    if let Err(e) = server.forget_described(*home, rec.id).await {
                        tracing::warn!(vdisk = %rec.name, error = %e, "takeover: forgetting the description");
                        continue;
                    }
                    tracing::warn!(
                        from = home,
                        chunks = n,
                        "takeover: the copy of virtual disk {} held here was adopted by member \
                         {owner}; dropped",
                        rec.name
                    );
                }
                Err(e) => {
                    tracing::warn!(vdisk = %rec.name, error = %e, "takeover: dropping an adopted copy failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::takeover::settles::tests::{op, start_node};

    /// What peers describe (member id, its disk records), as the mirror keeps it in `state`.
    fn describe(state: &std::path::Path, described: &[(u64, Vec<VdiskRecord>)]) {
        std::fs::write(
            state.join("described.json"),
            serde_json::to_vec(described).unwrap(),
        )
        .unwrap();
    }

    /// A disk moved away (to member 999, which adopted it from this node's mirror) and back
    /// before this node dropped its copy from before the move: that copy is never served
    /// (export, snapshot, a mover's "serving?") while 999's copy is the current one, is not
    /// dropped before a holder confirms it was retired, and then is replaced by the current
    /// copy (adopted from what is held here: nothing, as 999 wrote zeros over it all). Before,
    /// adoption skipped the disk (a copy of that name was here) and served the stale data.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_disk_moved_away_and_back_is_never_served_from_its_stale_copy() {
        use control::{ErrorCode, Request};
        let dir = tempfile::tempdir().unwrap();
        let n = start_node(dir.path(), true).await;
        let ctl = n.controller();
        let create = Request::VdiskCreate {
            name: "d".into(),
            size_bytes: 64 << 20,
        };
        ctl.execute(op(), create).await.unwrap();
        let m = n.inner.cluster.member().unwrap();
        let me = m.id();
        for i in 0.. {
            let here = m.read(|s| s.vdisks.contains_key(&format!("{me}/d")));
            if here {
                break;
            }
            assert!(i < 1000, "the cluster never recorded d on this node");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let engine = &n.inner.engine;
        let stale_data = vec![0x5a; 4096];
        {
            let h = engine.open_vdisk("d").unwrap();
            h.write(0, &stale_data).await.unwrap();
            h.flush().await.unwrap();
        }
        let stale = engine
            .vdisk_records()
            .into_iter()
            .find(|r| r.name == "d")
            .unwrap();
        // What 999 describes: the same disk (its seed), under its own engine id, newer.
        let current = VdiskRecord {
            id: 5,
            gen: stale.gen + 1,
            ..stale.clone()
        };
        let state = dir.path().join("mirror-state");
        std::fs::create_dir_all(&state).unwrap();
        let described = vec![(999u64, vec![current])];
        describe(&state, &described);
        let server = ReplicaServer::new(me, &state).unwrap();
        n.inner.mirror.set_server(server.clone());

        // Never served, nor changed.
        let export = Request::NbdStart {
            vdisk: "d".into(),
            snapshot: None,
            listen: Some("127.0.0.1:0".into()),
            read_only: true,
        };
        let snap = Request::SnapshotCreate {
            vdisk: "d".into(),
            name: "s".into(),
        };
        let to_file = Request::VdiskExport {
            name: "d".into(),
            snapshot: None,
            file: dir.path().join("d.img").display().to_string(),
        };
        // An export to a file is an admin's.
        let admin = control::Actor {
            role: control::Role::Admin,
            ..op()
        };
        for r in [export.clone(), snap, to_file] {
            let e = ctl.execute(admin.clone(), r.clone()).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::Unavailable, "{r:?}: {e:?}");
            assert!(e.message.contains("member 999's copy"), "{r:?}: {e:?}");
        }
        assert!(n.inner.exports.list().is_empty());
        assert_eq!(crate::takeover::peer::serving(&n.inner, "d"), None);
        assert!(engine.snapshots("d").unwrap().is_empty());
        assert!(
            !dir.path().join("d.img").exists(),
            "the stale copy was exported to a file"
        );

        // Not dropped without a holder's word that the copy was retired.
        let mut t = crate::takeover::Takeover::default();
        replace_stale(&n.inner, &m, &server, &mut t, |_| async { false }).await;
        assert_eq!(engine.vdisk("d").unwrap().id, stale.id);

        // Confirmed: dropped, then adopted from the current copy.
        let id = stale.id;
        replace_stale(&n.inner, &m, &server, &mut t, |x| async move { x == id }).await;
        assert!(engine.vdisk("d").is_err(), "the stale copy is still here");
        n.inner.lease.release(&format!("{me}/d"));
        adopt_assigned(&n.inner, &m, &server, &[], &mut t).await;
        let now = engine.vdisk("d").unwrap();
        assert_ne!(now.id, stale.id);
        let mut got = vec![0u8; 4096];
        engine
            .open_vdisk("d")
            .unwrap()
            .read(0, &mut got)
            .await
            .unwrap();
        assert_eq!(got, vec![0u8; 4096], "the stale data is served");
        assert_eq!(not_adopted_yet(&n.inner, "d"), None);
        assert!(crate::takeover::peer::serving(&n.inner, "d").is_some());
        ctl.execute(op(), export).await.unwrap();
        n.shutdown().await.unwrap();
    }

    /// A node restarted with such a stale copy refuses it from its first request: what peers
    /// described is read from the mirror's state at start, not only once the mirror runs (here
    /// never: the node is alone). Before, `not_adopted_yet` found nothing until the mirror's
    /// first tick, so the export served the stale copy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_node_refuses_its_stale_copy_before_its_mirror_runs() {
        use control::{ErrorCode, Request};
        let dir = tempfile::tempdir().unwrap();
        let n = start_node(dir.path(), true).await;
        let create = Request::VdiskCreate {
            name: "d".into(),
            size_bytes: 64 << 20,
        };
        n.controller().execute(op(), create).await.unwrap();
        let m = n.inner.cluster.member().unwrap();
        let me = m.id();
        for i in 0.. {
            if m.read(|s| s.vdisks.contains_key(&format!("{me}/d"))) {
                break;
            }
            assert!(i < 1000, "the cluster never recorded d on this node");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let stale = n
            .inner
            .engine
            .vdisk_records()
            .into_iter()
            .find(|r| r.name == "d")
            .unwrap();
        let state = crate::mirrorhost::state_dir(&n.inner, m.cluster_id());
        drop(m);
        n.shutdown().await.unwrap();
        // Member 999 adopted d (the same disk: its seed) and holds the current copy.
        let current = VdiskRecord {
            id: 5,
            gen: stale.gen + 1,
            ..stale
        };
        std::fs::create_dir_all(&state).unwrap();
        let described = vec![(999u64, vec![current])];
        describe(&state, &described);

        let n = start_node(dir.path(), true).await;
        let export = Request::NbdStart {
            vdisk: "d".into(),
            snapshot: None,
            listen: Some("127.0.0.1:0".into()),
            read_only: true,
        };
        let e = n.controller().execute(op(), export).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
        assert!(e.message.contains("member 999's copy"), "{e:?}");
        assert!(n.inner.exports.list().is_empty());
        assert_eq!(crate::takeover::peer::serving(&n.inner, "d"), None);
        n.shutdown().await.unwrap();
    }
}
