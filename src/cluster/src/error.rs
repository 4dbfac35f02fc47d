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
