//! The transport's one error type.
use std::io;

/// Everything that can go wrong talking to a peer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("tls error: {0}")]
    Tls(String),
    #[error("certificate error: {0}")]
    Cert(String),
    #[error("peer sent a bad frame: {0}")]
    BadFrame(String),
    #[error("frame of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    FrameTooLarge { size_bytes: u64, limit_bytes: u64 },
    #[error("could not decode message: {0}")]
    Decode(String),
    #[error("could not encode message: {0}")]
    Encode(String),
    #[error("connect to {addr} failed: {reason}")]
    Connect { addr: String, reason: String },
    #[error("request timed out after {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("connection closed")]
    Closed,
    #[error("peer stream protocol violation: {0}")]
    Stream(String),
    #[error("remote handler failed: {0}")]
    Remote(String),
}
