//! The node crate's one error type: starting, stopping and serving a node. Errors of individual
//! requests are `control::ControlError`, not this.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another node is already running on {0} (its lock is held)")]
    AlreadyRunning(PathBuf),
    #[error("engine: {0}")]
    Engine(#[from] engine::EngineError),
    #[error("runtime: {0}")]
    Runtime(String),
}

impl NodeError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NodeError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, NodeError>;
