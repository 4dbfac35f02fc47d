//! The store's one error type. Every error says what was being done; device errors keep their
//! source. `kind()` lets callers react (repair on `Corrupt`, fail over on `Io`/`Poisoned`).

use crate::ObjectId;

/// What went wrong, for callers that must react differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The device returned an I/O error.
    Io,
    /// A device flush or metadata write failed earlier; the store refuses all further calls.
    Poisoned,
    /// A block's checksum did not match: the copy of this version here is bad.
    Corrupt { obj: ObjectId, block: u64, gen: u64 },
    /// The data area (or the metadata capacity) is full.
    NoSpace,
    /// `format` was asked to format a device that is not blank.
    NotBlank,
    /// `open` was asked to open a device that does not carry a Cairn store.
    NotOurs,
    /// A caller passed arguments outside the contract.
    InvalidArgument,
    /// Our own on-disk metadata is damaged beyond what the second copy can cover.
    BadMetadata,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: blockdev::BlockError,
    },
    #[error("store is poisoned ({0}); reopen the device to recover")]
    Poisoned(String),
    #[error("checksum mismatch in object {obj} block {block} generation {gen}")]
    Corrupt { obj: ObjectId, block: u64, gen: u64 },
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("device is not blank: {0}")]
    NotBlank(String),
    #[error("not a Cairn store: {0}")]
    NotOurs(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("damaged store metadata: {0}")]
    BadMetadata(String),
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Io { .. } => ErrorKind::Io,
            StoreError::Poisoned(_) => ErrorKind::Poisoned,
            StoreError::Corrupt { obj, block, gen } => ErrorKind::Corrupt {
                obj: *obj,
                block: *block,
                gen: *gen,
            },
            StoreError::NoSpace(_) => ErrorKind::NoSpace,
            StoreError::NotBlank(_) => ErrorKind::NotBlank,
            StoreError::NotOurs(_) => ErrorKind::NotOurs,
            StoreError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            StoreError::BadMetadata(_) => ErrorKind::BadMetadata,
        }
    }

    /// Wrap a device error; a poisoned device makes a poisoned store.
    pub(crate) fn dev(context: impl Into<String>, source: blockdev::BlockError) -> Self {
        let context = context.into();
        if source.kind == blockdev::ErrorKind::Poisoned {
            return StoreError::Poisoned(format!("{context}: {source}"));
        }
        StoreError::Io { context, source }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        StoreError::InvalidArgument(msg.into())
    }

    pub(crate) fn bad_meta(msg: impl Into<String>) -> Self {
        StoreError::BadMetadata(msg.into())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;
