//! Cluster consensus: openraft over our durable log store and the cluster state machine,
//! membership (create, join with a token, remove, witness), and the raft network over the
//! `transport` crate.
//!
//! Owns the small, strongly consistent cluster state. Must never: carry bulk data through raft,
//! or acknowledge a change before a quorum has it durably.
#![forbid(unsafe_code)]

mod app;
pub mod bench;
pub mod dedup;
mod error;
pub mod format;
mod handler;
pub mod health;
pub mod linearize;
pub mod log_store;
mod log_writer;
pub mod medium;
pub mod membership;
pub mod network;
mod node;
mod readdress;
pub mod sm_store;
pub mod state;
pub mod types;

pub use app::{AppHandler, MAX_APP_BYTES};
pub use error::Error;
pub use health::{ClusterStatus, MemberStatus, NodeHealth};
pub use log_store::{LogStore, RecoveryReport};
pub use medium::{
    has_identity, FileMedia, FileMedium, Medium, MemMedia, MemMedium, Part, RaftMedia,
};
pub use membership::JoinToken;
pub use node::{ClusterNode, NodeConfig, RaftTimings};
pub use sm_store::{StateMachineStore, StateReader};
pub use state::*;
pub use types::*;
