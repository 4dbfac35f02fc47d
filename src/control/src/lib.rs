//! The one control surface of a Cairn node.
//!
//! Every storage action and query — from the CLI over the node's unix socket, from the HTTPS API,
//! later from a peer node or a schedule — is a [`Request`] executed by one [`Controller`]
//! (the node). Front ends only parse input into a `Request`, name the [`Actor`], and render the
//! typed [`Reply`] or [`ControlError`]. Who may do what is decided in one place, [`allowed`].
//!
//! This crate is deliberately light (serde, thiserror): it never does I/O, never talks to the
//! engine, and never decides anything a front end could disagree with — validation of names and
//! sizes lives here so the CLI and the API reject the same input with the same words.
#![forbid(unsafe_code)]

mod cluster;
mod error;
mod parse;
mod policy;
mod reply;
mod request;
mod vm;

pub use cluster::{
    AdoptionView, ClusterDataView, ClusterMemberView, ClusterTokenView, ClusterView,
    DrainProgressView, DrainView, LeaseView, MemberIoView, MemberStatsView, NodeEvent, RebuildView,
    RemoteReplicaView, DEFAULT_TOKEN_TTL_SECS, MAX_TOKEN_TTL_SECS,
};
pub use error::{ControlError, ErrorCode, EXIT_OK, EXIT_UNREACHABLE};
pub use parse::{
    format_size, parse_size, parse_socket_addr, validate_name, MAX_NAME_LEN, MAX_VDISK_SIZE_BYTES,
};
pub use policy::{allowed, Actor, Role, Via};
pub use reply::{
    DiskProbeView, DiskView, NbdExportView, PoolView, Range, Reply, SnapshotView, StatsView,
    TransferView, VdiskView,
};
pub use request::Request;
pub use vm::{
    format_mac, parse_mac, ConsoleChunk, ConsolePlace, ConsoleView, VmDeviceStatsView, VmNicSpec,
    VmNicView, VmStatsView, VmView, DEFAULT_CONSOLE_BYTES, DEFAULT_STOP_TIMEOUT_MS,
    MAX_CONSOLE_BYTES, MAX_VCPUS, MAX_VLAN_ID, MAX_VM_DISKS, MAX_VM_MEMORY_MIB, MAX_VM_NICS,
    MIN_VLAN_ID, MIN_VM_MEMORY_MIB, NO_BRIDGE,
};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed future so `Controller` is object safe (`Arc<dyn Controller>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The result of executing one request.
pub type ControlResult = Result<Reply, ControlError>;

/// The one place every request is executed. Implemented by the node; front ends hold an
/// `Arc<dyn Controller>` and never reach around it.
///
/// Implementations check [`allowed`] and [`Request::validate`] themselves, so a front end that
/// forgets cannot bypass them; front ends may check earlier to fail fast.
pub trait Controller: Send + Sync + 'static {
    fn execute(&self, actor: Actor, req: Request) -> BoxFuture<'_, ControlResult>;

    /// A number that changes after every request that changed something through this
    /// controller ([`Request::is_mutation`]), counted once the change is visible. Front ends may
    /// keep list answers while it stays the same, but only briefly: counters (`used_bytes`, VM
    /// statistics, a guest powering itself off) move without a request. Default `None`: changes
    /// are not tracked and nothing may be cached.
    fn generation(&self) -> Option<u64> {
        None
    }

    /// Whether the node's API lists (virtual disks, VMs) name other members' items too (a
    /// cluster with another data member): a front end that wants only this node's own asks
    /// with another [`Via`] then. Default: no.
    fn spans_members(&self) -> bool {
        false
    }

    /// What the node did by itself since the last call (takeovers, HA restarts), oldest first,
    /// for the front end's event list and audit log. Each is returned once. Default: nothing.
    fn take_node_events(&self) -> Vec<NodeEvent> {
        Vec::new()
    }

    /// Attach to a VM's serial console for an interactive session (the web console). Outside
    /// [`Request`] because keystrokes are raw bytes, not audited one by one. The implementation
    /// checks the role: anyone allowed `vm_console` may watch; typing needs the right to start
    /// the VM. Default: not supported.
    fn console_port(&self, actor: Actor, name: &str) -> Result<Arc<dyn ConsolePort>, ControlError> {
        let _ = (actor, name);
        Err(ControlError::invalid(
            "interactive consoles are not supported by this node",
        ))
    }
}

/// A live handle on one VM's console. Calls may block briefly (the VM's lock), so async callers
/// run them on a blocking thread.
pub trait ConsolePort: Send + Sync {
    /// The console logs as they are now, one per output stream (serial, then the debug port),
    /// each bounded by the VMM with the oldest bytes dropped. Empty before the VM first runs.
    fn output(&self) -> Result<Vec<Vec<u8>>, ControlError>;
    /// Queue input on the serial port; returns the bytes accepted (0 when the VM is not running).
    fn input(&self, bytes: &[u8]) -> Result<usize, ControlError>;
    /// Whether this attachment may type (else `input` is refused).
    fn can_type(&self) -> bool;

    /// A waiter told when the guest writes, so a viewer need not poll [`ConsolePort::output`].
    /// Default: none (the caller polls).
    fn watch(&self) -> Option<Box<dyn ConsoleWatch>> {
        None
    }

    /// What each output stream (serial, then the debug port) gained since the reader's places
    /// `seen` (from the last answer; none at first), at most the newest `max_bytes` per stream,
    /// copying only that rather than whole logs. Default `None`: not supported, and the
    /// caller compares [`ConsolePort::output`] copies instead.
    fn output_since(
        &self,
        seen: &[ConsolePlace],
        max_bytes: usize,
    ) -> Option<Result<Vec<ConsoleChunk>, ControlError>> {
        let _ = (seen, max_bytes);
        None
    }
}

/// See [`ConsolePort::watch`].
pub trait ConsoleWatch: Send {
    /// Resolves when the console may have new output since the last call: on guest writes,
    /// when the VM's machine is replaced (a restart), and after a few seconds anyway, so a
    /// missed wake-up delays output but never loses it. Cancel safe.
    fn changed(&mut self) -> BoxFuture<'_, ()>;
}
