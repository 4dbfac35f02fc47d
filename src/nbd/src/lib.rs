//! NBD server (fixed newstyle) exporting a virtual disk or snapshot for backup and import tools.
//!
//! Owns the wire protocol and connections: handshake (NBD_OPT_EXPORT_NAME, INFO, GO, LIST,
//! ABORT; everything else is answered NBD_REP_ERR_UNSUP), and transmission with simple replies
//! (READ, WRITE with FUA, FLUSH, TRIM, WRITE_ZEROES, DISC), several clients at once and pipelined
//! requests answered out of order. What is exported is behind the `NbdExport` trait (byte
//! offsets, any alignment).
//!
//! It is never in the VM data path, binds loopback by default, and answers every malformed input
//! with an error or a closed connection, never a panic; every size a client sends is bounded.
#![forbid(unsafe_code)]

mod device;
mod export;
mod handshake;
pub mod proto;
mod server;
mod transmission;

pub use device::DeviceExport;
#[cfg(any(test, feature = "test-util"))]
pub use export::RamExport;
pub use export::{nbd_errno, BoxFuture, Bytes, NbdExport};
pub use server::{Exports, NbdHandle, NbdServer, DEFAULT_ADDR, MAX_CONNECTIONS, MAX_NAME_BYTES};

/// Largest READ or WRITE payload accepted (advertised as the maximum block size).
pub const MAX_REQUEST_BYTES: u32 = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("nbd i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("nbd protocol violation by the client: {0}")]
    Protocol(String),
    #[error("an export named {0:?} already exists")]
    ExportExists(String),
    #[error("invalid export name {0}")]
    InvalidName(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}
