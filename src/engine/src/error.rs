//! The engine's one error type. Every error says what was being done; callers branch on
//! `kind()` (exit codes, HTTP statuses), never on message text.

/// What went wrong, coarse enough for callers to map to exit codes and HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    NoSpace,
    ForeignData,
    ReadOnly,
    Io,
    Corrupt,
    Busy,
    Degraded,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("disk carries data that is not ours ({0}); it was not touched")]
    ForeignData(String),
    #[error("read-only: {0}")]
    ReadOnly(String),
    #[error("I/O error: {context}")]
    Io {
        context: String,
        #[source]
        source: Option<store::StoreError>,
    },
    #[error("data corrupt on every replica: {0}")]
    Corrupt(String),
    #[error("busy: {0}")]
    Busy(String),
    #[error("no live replica: {0}")]
    Degraded(String),
}

impl EngineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::NotFound(_) => ErrorKind::NotFound,
            EngineError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            EngineError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            EngineError::NoSpace(_) => ErrorKind::NoSpace,
            EngineError::ForeignData(_) => ErrorKind::ForeignData,
            EngineError::ReadOnly(_) => ErrorKind::ReadOnly,
            EngineError::Io { .. } => ErrorKind::Io,
            EngineError::Corrupt(_) => ErrorKind::Corrupt,
            EngineError::Busy(_) => ErrorKind::Busy,
            EngineError::Degraded(_) => ErrorKind::Degraded,
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        EngineError::InvalidArgument(msg.into())
    }

    pub(crate) fn not_found(msg: impl Into<String>) -> Self {
        EngineError::NotFound(msg.into())
    }

    /// Wrap a store error with what we were doing, keeping its class.
    pub(crate) fn store(context: impl Into<String>, e: store::StoreError) -> Self {
        use store::ErrorKind as K;
        let context = context.into();
        match e.kind() {
            K::NoSpace => EngineError::NoSpace(format!("{context}: {e}")),
            K::Corrupt { .. } => EngineError::Corrupt(format!("{context}: {e}")),
            K::InvalidArgument => EngineError::InvalidArgument(format!("{context}: {e}")),
            K::NotOurs | K::NotBlank => EngineError::ForeignData(format!("{context}: {e}")),
            _ => EngineError::Io {
                context,
                source: Some(e),
            },
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> Self {
        EngineError::Io {
            context: context.into(),
            source: None,
        }
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;
