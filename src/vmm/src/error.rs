//! The crate's one error type. Every fallible public function returns [`VmmError`].

use std::io;

/// Errors from building, booting and running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid VM configuration: {0}")]
    InvalidConfig(String),
    /// Guest memory could not be set up (overlap, mmap failure, out of range).
    #[error("guest memory: {0}")]
    Memory(String),
    /// A KVM ioctl failed.
    #[error("kvm: {what}: {source}")]
    Kvm {
        /// The operation that failed.
        what: &'static str,
        /// errno from the kernel.
        source: kvm_ioctls::Error,
    },
    /// Loading the kernel / guest image failed.
    #[error("boot: {0}")]
    Boot(String),
    /// A host I/O error (files, tap, eventfds, threads).
    #[error("io: {what}: {source}")]
    Io {
        /// The operation that failed.
        what: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// The requested lifecycle transition is not valid in the VM's current state.
    #[error("invalid state: VM is {state}, cannot {action}")]
    InvalidState {
        /// Current state.
        state: &'static str,
        /// Requested action.
        action: &'static str,
    },
    /// A disk backend failed.
    #[error("disk backend: {0}")]
    Backend(String),
    /// Installing a seccomp filter failed.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// A timed operation did not finish in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// No device with this id is attached to the VM.
    #[error("no device {0:?} is attached")]
    NoSuchDevice(String),
    /// The guest did not release a device it was asked to eject; the device stays attached.
    #[error(
        "the guest did not release {id:?} within {waited_ms} ms; it stays attached (detach with force to remove it anyway)"
    )]
    EjectTimeout {
        /// Device id.
        id: String,
        /// How long the VMM waited.
        waited_ms: u64,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, VmmError>;

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

pub(crate) fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}
