//! Who may do what: the single role policy every front end relies on.

use crate::request::Request;
use serde::{Deserialize, Serialize};

/// A role of a user or token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including physical disks and host files.
    Admin,
    /// Day-to-day virtual disk, snapshot and VM work; no physical disks, no host files.
    Operator,
    /// Queries only.
    ReadOnly,
}

/// Where a request came from (for the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Via {
    /// The local CLI over the node's unix socket (only its owner can connect).
    Cli,
    /// The HTTPS API. In a cluster it manages every member's virtual disks and VMs: a request
    /// about one another member holds is carried out there, and the lists name every member's
    /// (the node's `forward` module). The CLI on the socket manages its own node only.
    Api,
    /// Another node of the cluster (a request it took through its API and passed on here).
    Peer,
    /// A schedule or the node itself (disk directory watcher, boot).
    Internal,
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub user: String,
    pub role: Role,
    pub via: Via,
}

impl Actor {
    /// The owner of the node's unix socket (the socket is mode 0600).
    pub fn local_cli() -> Actor {
        Actor {
            user: "local".into(),
            role: Role::Admin,
            via: Via::Cli,
        }
    }
    /// The node acting on its own behalf (e.g. a disk file appearing in the disk directory).
    pub fn internal(what: &str) -> Actor {
        Actor {
            user: format!("node:{what}"),
            role: Role::Admin,
            via: Via::Internal,
        }
    }
}

/// Whether `role` may execute `req`. The one policy table; front ends never decide this.
///
/// - read-only: queries (including VM list, get and console), except those that read host
///   paths (probe);
/// - operator: also every virtual disk, snapshot, clone, NBD and VM action, and starting a scrub
///   (a VM's kernel file is read-only input, so VM work does not count as touching the host);
/// - admin: also physical disks (add, remove, probe) and anything naming a host file
///   (import, export), since a host path reaches outside the pool, and cluster membership
///   (token, join, remove).
pub fn allowed(role: Role, req: &Request) -> bool {
    let touches_host = matches!(
        req,
        Request::DiskAdd { .. }
            | Request::DiskRemove { .. }
            | Request::DiskProbe { .. }
            | Request::VdiskImport { .. }
            | Request::VdiskExport { .. }
            // Cluster membership decides whose disks hold the data: admin only too.
            | Request::ClusterToken { .. }
            | Request::ClusterJoin { .. }
            | Request::ClusterLocate { .. }
            | Request::ClusterRemove { .. }
    );
    match role {
        Role::Admin => true,
        Role::Operator => !touches_host,
        Role::ReadOnly => !touches_host && !req.is_mutation(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_matrix() {
        let list = Request::VdiskList;
        let create = Request::VdiskCreate {
            name: "a".into(),
            size_bytes: 4096,
        };
        let add = Request::DiskAdd { path: "/x".into() };
        let probe = Request::DiskProbe { path: "/x".into() };
        assert!(allowed(Role::ReadOnly, &list));
        assert!(!allowed(Role::ReadOnly, &create));
        assert!(!allowed(Role::ReadOnly, &probe));
        assert!(allowed(Role::Operator, &create));
        assert!(!allowed(Role::Operator, &add));
        assert!(allowed(Role::Admin, &add));
        assert!(allowed(Role::Admin, &probe));
    }
}
