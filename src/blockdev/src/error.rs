use std::fmt;

/// What went wrong, for callers that must react differently (poisoned vs. retryable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The device returned an I/O error (EIO and friends).
    Io,
    /// A previous flush failed; the device refuses all further I/O.
    Poisoned,
    /// Offset, length or buffer not aligned to `BLOCK_SIZE`.
    Misaligned,
    /// The range runs past the end of the device.
    OutOfRange,
    /// The device was closed or removed.
    Gone,
    /// Opening or probing the device failed.
    Open,
}

/// A storage error: kind + context + source.
#[derive(Debug, thiserror::Error)]
pub struct BlockError {
    pub kind: ErrorKind,
    pub context: String,
    #[source]
    pub source: Option<std::io::Error>,
}

impl BlockError {
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Self {
            kind,
            context: context.into(),
            source: None,
        }
    }

    pub fn io(kind: ErrorKind, context: impl Into<String>, source: std::io::Error) -> Self {
        Self {
            kind,
            context: context.into(),
            source: Some(source),
        }
    }
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.context)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

pub type Result<T> = std::result::Result<T, BlockError>;
