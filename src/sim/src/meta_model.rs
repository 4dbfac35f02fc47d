//! The sequential specification the metadata history is checked against: the real
//! `ClusterState::apply` on the part of the state the workload touches (virtual disks and
//! snapshots), so the check is "the replicated state machine behaves like one copy of itself".
//!
//! Must never: judge outcomes by anything but `apply` itself (no second copy of its rules).
use std::collections::BTreeMap;

use cluster::linearize::Model;
use cluster::{ClusterState, Command, CommandResult, SnapshotDef, VdiskDef};

/// Size every simulated virtual disk gets (the model rebuilds `VdiskDef`s from it).
pub const VDISK_BYTES: u64 = 1 << 30;

/// Virtual disks (id -> parent snapshot) and snapshots (id -> vdisk). Names equal ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MetaState {
    pub vdisks: BTreeMap<String, Option<String>>,
    pub snaps: BTreeMap<String, String>,
}

impl MetaState {
    pub fn from_cluster(s: &ClusterState) -> MetaState {
        MetaState {
            vdisks: s
                .vdisks
                .values()
                .map(|v| (v.id.clone(), v.parent_snapshot.clone()))
                .collect(),
            snaps: s
                .snapshots
                .values()
                .map(|x| (x.id.clone(), x.vdisk.clone()))
                .collect(),
        }
    }

    fn to_cluster(&self) -> ClusterState {
        let mut s = ClusterState::default();
        for (id, parent) in &self.vdisks {
            s.vdisks.insert(id.clone(), vdisk(id, parent.clone()));
        }
        for (id, v) in &self.snaps {
            s.snapshots.insert(id.clone(), snapshot(id, v));
        }
        s
    }
}

pub fn vdisk(id: &str, parent: Option<String>) -> VdiskDef {
    VdiskDef {
        id: id.into(),
        name: id.into(),
        size_bytes: VDISK_BYTES,
        parent_snapshot: parent,
    }
}

pub fn snapshot(id: &str, vdisk: &str) -> SnapshotDef {
    SnapshotDef {
        id: id.into(),
        vdisk: vdisk.into(),
        name: id.into(),
    }
}

/// A client operation: a command through raft, or a linearizable read of the whole state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaOp {
    Cmd(Command),
    Read,
}

/// `Done(true)`: applied; `Done(false)`: rejected by the state machine; `Seen`: a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaOut {
    Done(bool),
    Seen(MetaState),
}

/// The model for `cluster::linearize::check`.
#[derive(Debug, Default)]
pub struct MetaModel;

impl Model for MetaModel {
    type State = MetaState;
    type Input = MetaOp;
    type Output = MetaOut;

    fn init(&self) -> MetaState {
        MetaState::default()
    }

    fn step(&self, s: &MetaState, input: &MetaOp, out: Option<&MetaOut>) -> Vec<MetaState> {
        match input {
            MetaOp::Read => match out {
                Some(MetaOut::Seen(seen)) if seen == s => vec![s.clone()],
                None => vec![s.clone()],
                _ => vec![],
            },
            MetaOp::Cmd(cmd) => {
                let mut cs = s.to_cluster();
                let applied = !matches!(cs.apply(cmd), CommandResult::Rejected(_));
                let after = MetaState::from_cluster(&cs);
                match out {
                    Some(MetaOut::Done(ok)) if *ok == applied => vec![after],
                    Some(_) => vec![],
                    // Unknown outcome: it took effect, or it never will.
                    None if after != *s => vec![after, s.clone()],
                    None => vec![after],
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster::linearize::{check, Op, Outcome};

    fn op(
        call: u64,
        ret: Option<u64>,
        input: MetaOp,
        output: Option<MetaOut>,
    ) -> Op<MetaOp, MetaOut> {
        Op {
            client: 0,
            call,
            ret,
            input,
            output,
        }
    }

    fn create(id: &str) -> MetaOp {
        MetaOp::Cmd(Command::CreateVdisk(vdisk(id, None)))
    }

    #[test]
    fn model_follows_apply_and_catches_a_lost_write() {
        let mut seen = MetaState::default();
        seen.vdisks.insert("a".into(), None);
        let good = vec![
            op(0, Some(1), create("a"), Some(MetaOut::Done(true))),
            op(2, Some(3), MetaOp::Read, Some(MetaOut::Seen(seen.clone()))),
            op(4, Some(5), create("a"), Some(MetaOut::Done(false))),
        ];
        assert_eq!(check(&MetaModel, &good, 10_000), Outcome::Linearizable);
        // The acknowledged create is missing from a later read: a lost write.
        let lost = vec![
            op(0, Some(1), create("a"), Some(MetaOut::Done(true))),
            op(
                2,
                Some(3),
                MetaOp::Read,
                Some(MetaOut::Seen(MetaState::default())),
            ),
        ];
        assert_eq!(check(&MetaModel, &lost, 10_000), Outcome::NotLinearizable);
        // A snapshot of a missing vdisk cannot succeed.
        let bad = vec![op(
            0,
            Some(1),
            MetaOp::Cmd(Command::CreateSnapshot(snapshot("s", "nope"))),
            Some(MetaOut::Done(true)),
        )];
        assert_eq!(check(&MetaModel, &bad, 10_000), Outcome::NotLinearizable);
        // An unknown create that a later read shows did happen.
        let unknown = vec![
            op(0, None, create("a"), None),
            op(2, Some(3), MetaOp::Read, Some(MetaOut::Seen(seen))),
        ];
        assert_eq!(check(&MetaModel, &unknown, 10_000), Outcome::Linearizable);
    }
}
