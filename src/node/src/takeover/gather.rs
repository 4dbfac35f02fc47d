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

/// Adopt every virtual disk the cluster assigns to this node that the engine lacks.
pub(super) async fn adopt_assigned(
    inner: &NodeInner,
    m: &Arc<ClusterNode>,
    server: &ReplicaServer,
    links: &[(u64, Arc<PeerLink>)],
    t: &mut Takeover,
) {
    let me = m.id();
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
