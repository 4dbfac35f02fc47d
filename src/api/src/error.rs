//! The api crate's one error type. Request-level failures become `ControlError`s (the wire form
//! every front end shares); `ApiError` is for the server itself: starting, state files, TLS.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is damaged: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("TLS setup: {0}")]
    Tls(String),
}

impl ApiError {
    pub(crate) fn io(what: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        ApiError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;
