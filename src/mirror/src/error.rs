//! The crate's one error type.

use crate::wire::WireError;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The server's durable state (epoch table) could not be read or written.
    #[error("replica server state: {0}")]
    State(String),
    #[error("transport: {0}")]
    Transport(#[from] transport::Error),
    /// The peer answered with an error.
    #[error("peer: {0}")]
    Peer(#[from] WireError),
    /// The peer answered something that does not fit the request.
    #[error("peer protocol: {0}")]
    Protocol(String),
    #[error("engine: {0}")]
    Engine(#[from] engine::EngineError),
}

pub type Result<T> = std::result::Result<T, MirrorError>;
