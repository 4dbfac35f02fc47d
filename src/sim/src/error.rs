//! The simulation's one error type.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SimError {
    /// A message lost on the simulated wire (handed to openraft as a network error).
    #[error("sim network: {0}")]
    Net(String),
    /// The run could not be set up (temp dirs, runtime, stores).
    #[error("sim setup: {0}")]
    Setup(String),
    /// A checked property failed: this is a finding.
    #[error("check failed: {0}")]
    Check(String),
}

impl SimError {
    pub fn setup(what: &str, e: impl std::fmt::Display) -> SimError {
        SimError::Setup(format!("{what}: {e}"))
    }
}
