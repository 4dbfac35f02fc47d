//! The cluster crate's one error type.

/// Errors from cluster operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("corrupt on-disk state: {0}")]
    Corrupt(String),
    #[error("transport: {0}")]
    Transport(#[from] transport::Error),
    #[error("raft: {0}")]
    Raft(String),
    /// A write whose outcome is unknown: it may or may not have been committed (the leader
    /// stopped or the connection broke after the request was sent). Never retried blindly.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    #[error("no leader known")]
    NoLeader,
    #[error("rejected: {0}")]
    Rejected(String),
    #[error("invalid join token: {0}")]
    BadToken(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    pub(crate) fn io(what: &'static str, source: std::io::Error) -> Error {
        Error::Io { what, source }
    }
}
