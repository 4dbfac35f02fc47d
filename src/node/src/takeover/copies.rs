//! Whether one virtual disk may be handed over by a planned move (`super::manual`,
//! `super::vm_move`): decided per disk, from where each of its chunks is.
//!
//! The target adopts a moved disk from the copies held by every member but the old owner
//! (`super::gather`), never from the old owner's. So the move is refused, naming the disk,
//! when one of its chunks has no up-to-date copy on another member than this one, or has
//! fewer live copies than its mirroring asks (two, on two nodes). Chunks of other disks (a
//! rebuild or resync elsewhere in the pool) do not matter.
//!
//! What counts as an up-to-date copy on member H (the engine says per replica disk, not per
//! chunk, which copies a resync still has to rewrite): H lists the chunks it holds of this
//! node's disk, with the disk each is on (`Call::HeldChunks`, answered from H's own stores);
//! a copy counts when that disk is attached here, active, up and has no chunk left to resync,
//! and H's copies are not recorded as outdated in the cluster (this node wrote without H: until
//! the resync clears the record, any of H's copies may lack a write, also after a restart of
//! this node, which forgets which chunks were written alone). An outdated H that holds any
//! chunk of the disk refuses the move (the target takes the first copy it finds of a chunk);
//! one that holds none is no matter: the move names it in `unused_outdated` (asked again once
//! the disk is no longer written), and the cluster lets the move through only past those.
//!
//! Must never: let a move through when a chunk of the moved disk may exist only on this node
//! or only in an outdated copy.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use cluster::{ClusterNode, Role};
use control::ControlError;
use serde::{Deserialize, Serialize};

use super::manual::conflict;
use super::peer::{self, Call, STEP_TIMEOUT};
use crate::NodeInner;

/// Chunks per `HeldChunks` answer (about 12 bytes each in JSON: well under the call's bound).
pub(crate) const HELD_PAGE: usize = 8192;
/// Answers per listing: 2^30 chunks of 1 MiB, far above any disk's size.
const MAX_PAGES: usize = 1 << 17;

/// One page of a member's listing of the chunks it holds of the caller's virtual disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeldPage {
    /// Disk ids, referred to by index from `chunks`.
    pub(crate) disks: Vec<String>,
    /// (index in `disks`, chunk), sorted by chunk, every chunk at or past the asked one.
    pub(crate) chunks: Vec<(u32, u64)>,
    /// More chunks follow past the last one listed.
    pub(crate) more: bool,
}

/// The receiver's side of `Call::HeldChunks`: the chunks this node's stores hold of member
/// `home`'s virtual disk `vdisk` (engine id on `home`), from chunk `from_chunk` on.
pub(crate) fn held_page(
    inner: &NodeInner,
    home: u64,
    vdisk: u64,
    from_chunk: u64,
) -> Result<HeldPage, ControlError> {
    if vdisk > mirror::wire::MAX_WIRE_VDISK || home > mirror::wire::MAX_HOME_NODE {
        return Err(ControlError::invalid(format!(
            "no copy of virtual disk {vdisk} of member {home} can be held here (out of range)"
        )));
    }
    let source = mirror::hosted_id(home, vdisk);
    let mut all: Vec<(u64, String)> = Vec::new();
    for (disk, r) in inner.engine.local_replicas() {
        for o in r.objects() {
            if o.vdisk == source && o.chunk != engine::PRUNE_MARK_CHUNK && o.chunk >= from_chunk {
                all.push((o.chunk, disk.id.clone()));
            }
        }
    }
    Ok(paginate(all, HELD_PAGE))
}

/// The first page of `all` ((chunk, disk id), any order): at most `limit` entries, sorted by
/// chunk, never ending inside one chunk's copies (the next page starts past its last chunk).
fn paginate(mut all: Vec<(u64, String)>, limit: usize) -> HeldPage {
    all.sort_unstable();
    let more = all.len() > limit;
    all.truncate(limit);
    if more {
        if let Some(last) = all.last().map(|(c, _)| *c) {
            all.retain(|(c, _)| *c != last);
        }
    }
    let mut page = HeldPage {
        more,
        ..HeldPage::default()
    };
    let mut index: HashMap<String, u32> = HashMap::new();
    for (chunk, disk) in all {
        let i = match index.get(&disk) {
            Some(i) => *i,
            None => {
                let i = page.disks.len() as u32;
                index.insert(disk.clone(), i);
                page.disks.push(disk);
                i
            }
        };
        page.chunks.push((i, chunk));
    }
    page
}

/// Every (disk id, chunk) member `id` holds of this node's virtual disk `vdisk`.
async fn held_by(m: &ClusterNode, id: u64, vdisk: u64) -> Result<Vec<(String, u64)>, ControlError> {
    let mut out = Vec::new();
    let mut from_chunk = 0u64;
    for _ in 0..MAX_PAGES {
        let call = Call::HeldChunks { vdisk, from_chunk };
        let page = match peer::call(m, id, &call, STEP_TIMEOUT).await? {
            peer::Answer::Held(p) => p,
            other => {
                return Err(ControlError::internal(format!(
                    "member {id} answered a chunk listing with {other:?}"
                )))
            }
        };
        let mut last = None;
        for (i, chunk) in &page.chunks {
            let disk = page.disks.get(*i as usize).ok_or_else(|| {
                ControlError::internal(format!("member {id} listed a chunk on no disk"))
            })?;
            if *chunk < from_chunk || last.is_some_and(|l| *chunk < l) {
                return Err(ControlError::internal(format!(
                    "member {id} listed its chunks out of order"
                )));
            }
            last = Some(*chunk);
            out.push((disk.clone(), *chunk));
        }
        match (page.more, last) {
            (false, _) => return Ok(out),
            (true, Some(l)) if l < u64::MAX => from_chunk = l + 1,
            _ => {
                return Err(ControlError::internal(format!(
                    "member {id} listed more chunks without progress"
                )))
            }
        }
    }
    Err(ControlError::internal(format!(
        "member {id} listed more than {MAX_PAGES} pages of chunks"
    )))
}

/// What is known of one member's copy of the disk being moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) node: u64,
    /// (disk id, chunk) it holds.
    pub(crate) chunks: Vec<(String, u64)>,
    /// Its disks whose copies are up to date (attached here, active, up, nothing to resync).
    pub(crate) current_disks: HashSet<String>,
    /// Its disks attached here and live (active and reachable), current or not.
    pub(crate) live_disks: HashSet<String>,
    /// The cluster records its copies of this node's disks as outdated.
    pub(crate) outdated: bool,
}

/// The per-disk rule (see the module docs). `local`: chunks of the disk on this node's own
/// stores; `want`: live copies its mirroring asks for. Err: why the disk may not move.
pub(crate) fn check(
    name: &str,
    local: &BTreeSet<u64>,
    holders: &[Holder],
    want: usize,
) -> Result<(), String> {
    // chunk -> (nodes with a live copy, whether one other than this node is current)
    let mut chunks: BTreeMap<u64, (BTreeSet<u64>, bool)> = BTreeMap::new();
    for c in local {
        chunks.entry(*c).or_default().0.insert(u64::MAX);
    }
    for h in holders {
        for (disk, c) in &h.chunks {
            let e = chunks.entry(*c).or_default();
            if h.live_disks.contains(disk) {
                e.0.insert(h.node);
            }
            if !h.outdated && h.current_disks.contains(disk) {
                e.1 = true;
            }
        }
    }
    // The target takes the first copy of a chunk it finds: an outdated one must not be there
    // at all (the cluster refuses the move otherwise, see `unused_outdated`).
    let outdated: Vec<u64> = holders
        .iter()
        .filter(|h| h.outdated && !h.chunks.is_empty())
        .map(|h| h.node)
        .collect();
    if !outdated.is_empty() {
        return Err(format!(
            "virtual disk {name} is not up to date on the other members: the copies on members \
             {outdated:?} are outdated (this node wrote without them) until their resync ends, \
             and hold chunks of it that the target could adopt. Wait and try again (`cairn \
             cluster status` shows the resync)"
        ));
    }
    let stale: Vec<u64> = chunks
        .iter()
        .filter(|(_, (_, current))| !current)
        .map(|(c, _)| *c)
        .collect();
    if let Some(first) = stale.first() {
        return Err(format!(
            "virtual disk {name} is not up to date on the other members: {} of its chunks \
             (chunk {first} first) have no up-to-date copy but this node's, and the target \
             adopts from those copies; a resync or rebuild is still copying them. Wait and try \
             again (`cairn cluster status` shows the resync)",
            stale.len()
        ));
    }
    let thin: Vec<u64> = chunks
        .iter()
        .filter(|(_, (nodes, _))| nodes.len() < want)
        .map(|(c, _)| *c)
        .collect();
    if let Some(first) = thin.first() {
        return Err(format!(
            "virtual disk {name} is degraded: {} of its chunks (chunk {first} first) have fewer \
             than {want} live copies; wait for the rebuild (`cairn cluster status`)",
            thin.len()
        ));
    }
    Ok(())
}

/// Refuse (conflict) moving virtual disk `name` of this node unless every chunk of it has an
/// up-to-date copy on another member and its full mirroring (see the module docs). Every other
/// data member must be up (the caller checked): each is asked what it holds.
pub(crate) async fn disk_up_to_date(
    inner: &NodeInner,
    m: &ClusterNode,
    name: &str,
    what: &str,
) -> Result<(), ControlError> {
    let me = m.id();
    let vdisk = inner.engine.vdisk(name).map_err(crate::convert::error)?.id;
    let mut local = BTreeSet::new();
    for (_, r) in inner.engine.local_replicas() {
        for o in r.objects() {
            if o.vdisk == vdisk && o.chunk != engine::PRUNE_MARK_CHUNK {
                local.insert(o.chunk);
            }
        }
    }
    let (others, outdated): (Vec<u64>, HashSet<u64>) = m.read(|s| {
        let others = s
            .members
            .values()
            .filter(|x| x.role == Role::Data && x.id != me)
            .map(|x| x.id)
            .collect();
        let outdated = s
            .outdated
            .iter()
            .filter(|(o, _)| *o == me)
            .map(|(_, h)| *h)
            .collect();
        (others, outdated)
    });
    let remote = inner.engine.remote_disks();
    let mut holders = Vec::new();
    for id in &others {
        let chunks = held_by(m, *id, vdisk).await.map_err(|e| {
            ControlError::new(
                e.code,
                format!(
                    "cannot move {what}: member {id} could not say which chunks of virtual \
                     disk {name} it holds: {}",
                    e.message
                ),
            )
        })?;
        let mut h = Holder {
            node: *id,
            chunks,
            outdated: outdated.contains(id),
            ..Holder::default()
        };
        for d in remote.iter().filter(|d| d.node_id == *id) {
            let live = d.state == engine::DiskState::Active
                && d.reachability != engine::Reachability::Away;
            if live {
                h.live_disks.insert(d.id.clone());
            }
            if live && d.reachability == engine::Reachability::Up && d.dirty_chunks == 0 {
                h.current_disks.insert(d.id.clone());
            }
        }
        holders.push(h);
    }
    // Two live copies on two nodes once there are two data members (one node: no move).
    let want = (others.len() + 1).min(2);
    check(name, &local, &holders, want)
        .map_err(|why| conflict(format!("cannot move {what}: {why}")))
}

/// The members recorded outdated for this node that hold no chunk of any of its virtual disks
/// `vdisks` (engine ids), for `Command::MoveVdisk` / `Command::MoveVm` (`unused_outdated`):
/// only those may be outdated when the move commits. Asked after the caller stopped writing the
/// disks (none can receive a chunk written without it from then on). A member that does not
/// answer, or holds a chunk, is left out: the cluster then refuses the move, changing nothing.
pub(crate) async fn unused_outdated(m: &ClusterNode, vdisks: &[u64]) -> Vec<u64> {
    let me = m.id();
    let outdated: Vec<u64> = m.read(|s| {
        s.outdated
            .iter()
            .filter(|(o, h)| *o == me && *h != me)
            .map(|(_, h)| *h)
            .collect()
    });
    let mut unused = Vec::new();
    for id in outdated {
        let mut holds = false;
        for vdisk in vdisks {
            let call = Call::HeldChunks {
                vdisk: *vdisk,
                from_chunk: 0,
            };
            holds = match peer::call(m, id, &call, STEP_TIMEOUT).await {
                Ok(peer::Answer::Held(p)) => !p.chunks.is_empty() || p.more,
                _ => true,
            };
            if holds {
                break;
            }
        }
        if !holds {
            unused.push(id);
        }
    }
    unused
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(node: u64, chunks: &[(&str, u64)], current: &[&str], live: &[&str]) -> Holder {
        Holder {
            node,
            chunks: chunks.iter().map(|(d, c)| (d.to_string(), *c)).collect(),
            current_disks: current.iter().map(|d| d.to_string()).collect(),
            live_disks: live.iter().map(|d| d.to_string()).collect(),
            outdated: false,
        }
    }

    fn set(c: &[u64]) -> BTreeSet<u64> {
        c.iter().copied().collect()
    }

    #[test]
    fn a_disk_whose_every_chunk_is_current_on_the_target_moves() {
        let b = holder(
            2,
            &[("b1", 0), ("b2", 1), ("b1", 2)],
            &["b1", "b2"],
            &["b1", "b2"],
        );
        assert_eq!(check("t", &set(&[0, 1, 2]), &[b], 2), Ok(()));
        // An empty disk has nothing to lose.
        assert_eq!(
            check("e", &set(&[]), &[holder(2, &[], &[], &[])], 2),
            Ok(())
        );
    }

    #[test]
    fn a_chunk_held_only_here_or_only_in_a_copy_being_resynced_refuses_naming_the_disk() {
        // Chunk 2 is on this node only (not mirrored onto the target yet).
        let b = holder(2, &[("b1", 0), ("b2", 1)], &["b1", "b2"], &["b1", "b2"]);
        let e = check("t", &set(&[0, 1, 2]), &[b], 2).unwrap_err();
        assert!(e.contains("virtual disk t is not up to date"), "{e}");
        assert!(e.contains("1 of its chunks (chunk 2 first)"), "{e}");
        // Chunk 1 sits on a target disk that still has chunks to resync.
        let b = holder(2, &[("b1", 0), ("b2", 1)], &["b1"], &["b1", "b2"]);
        let e = check("t", &set(&[0, 1]), &[b], 2).unwrap_err();
        assert!(e.contains("(chunk 1 first)"), "{e}");
        assert!(e.contains("resync or rebuild"), "{e}");
    }

    #[test]
    fn an_outdated_holder_of_a_chunk_refuses_and_one_holding_none_is_no_matter() {
        let mut b = holder(2, &[("b1", 0)], &["b1"], &["b1"]);
        b.outdated = true;
        let e = check("t", &set(&[0]), &[b], 2).unwrap_err();
        assert!(e.contains("members [2] are outdated"), "{e}");
        // Even with a current copy on a third member: the target might take the outdated one.
        let mut b = holder(2, &[("b1", 0)], &["b1"], &["b1"]);
        b.outdated = true;
        let c = holder(3, &[("c1", 0)], &["c1"], &["c1"]);
        let e = check("t", &set(&[0]), &[b, c], 2).unwrap_err();
        assert!(e.contains("could adopt"), "{e}");
        // Outdated, but none of this disk's chunks are there: judged on the others alone.
        let mut b = holder(2, &[], &[], &["b1"]);
        b.outdated = true;
        let c = holder(3, &[("c1", 0)], &["c1"], &["c1"]);
        assert_eq!(check("t", &set(&[0]), &[b, c], 2), Ok(()));
    }

    #[test]
    fn only_the_moved_disk_is_judged_so_a_degraded_neighbour_does_not_block_it() {
        // What the target holds of disk t: everything, current. Disk u's chunks (degraded,
        // resyncing) never enter t's listing: the listing is per disk.
        let b = holder(2, &[("b1", 0), ("b1", 1)], &["b1"], &["b1", "b2"]);
        assert_eq!(check("t", &set(&[0, 1]), &[b], 2), Ok(()));
    }

    #[test]
    fn a_chunk_with_one_live_copy_is_degraded() {
        // Three data nodes: chunk 5 is on b and c (none here); c's disk is away, so b's copy
        // is current but the only live one.
        let b = holder(2, &[("b1", 5), ("b1", 6)], &["b1"], &["b1"]);
        let c = holder(3, &[("c1", 5)], &[], &[]);
        let e = check("t", &set(&[6]), &[b, c], 2).unwrap_err();
        assert!(e.contains("virtual disk t is degraded"), "{e}");
        assert!(e.contains("1 of its chunks (chunk 5 first)"), "{e}");
        // With c's disk back and current, both copies count.
        let b = holder(2, &[("b1", 5), ("b1", 6)], &["b1"], &["b1"]);
        let c = holder(3, &[("c1", 5)], &["c1"], &["c1"]);
        assert_eq!(check("t", &set(&[6]), &[b, c], 2), Ok(()));
    }

    #[test]
    fn listing_pages_end_between_chunks_and_cost_a_few_bytes_a_chunk() {
        let all = |v: &[(u64, &str)]| v.iter().map(|(c, d)| (*c, d.to_string())).collect();
        // Chunk 2 has copies on two disks: the page stops before it rather than split it.
        let p = paginate(all(&[(2, "y"), (1, "x"), (2, "x"), (3, "x")]), 3);
        assert_eq!(p.chunks, vec![(0, 1)]);
        assert_eq!(p.disks, vec!["x".to_string()]);
        assert!(p.more);
        let p = paginate(all(&[(2, "y"), (2, "x"), (3, "x")]), 3);
        assert_eq!(p.chunks, vec![(0, 2), (1, 2), (0, 3)]);
        assert_eq!(p.disks, vec!["x".to_string(), "y".to_string()]);
        assert!(!p.more);
        let j = serde_json::to_vec(&p).unwrap();
        assert_eq!(serde_json::from_slice::<HeldPage>(&j).unwrap(), p);
        assert!(j.len() < 64, "{}", String::from_utf8_lossy(&j));
    }
}
