//! Virtual machine requests: their bounds and checks, and the typed views the node answers with.
//!
//! Only shape is checked here (names, counts, sizes, absolute paths); whether a virtual disk or
//! kernel file exists is the node's business. Never does I/O.

use crate::error::ControlError;
use crate::parse::{validate_name, validate_path};
use serde::{Deserialize, Serialize};

/// vCPUs per VM (the VMM's bound).
pub const MAX_VCPUS: u8 = 32;
/// Smallest guest RAM accepted.
pub const MIN_VM_MEMORY_MIB: u64 = 16;
/// Largest guest RAM accepted (the VMM's bound is 256 GiB).
pub const MAX_VM_MEMORY_MIB: u64 = 256 << 10;
/// Disks per VM (the VMM's bound).
pub const MAX_VM_DISKS: usize = 16;
/// Longest kernel command line.
pub const MAX_CMDLINE_LEN: usize = 2048;
/// Console bytes returned when the request does not say.
pub const DEFAULT_CONSOLE_BYTES: u64 = 64 << 10;
/// Most console bytes one request returns.
pub const MAX_CONSOLE_BYTES: u64 = 1 << 20;
/// Graceful stop timeout when the request does not say.
pub const DEFAULT_STOP_TIMEOUT_MS: u64 = 10_000;
/// Longest graceful stop timeout.
pub const MAX_STOP_TIMEOUT_MS: u64 = 10 * 60_000;

pub(crate) fn validate_create(
    name: &str,
    vcpus: u8,
    memory_mib: u64,
    disks: &[String],
    kernel: &str,
    cmdline: Option<&str>,
) -> Result<(), ControlError> {
    validate_name("VM", name)?;
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(ControlError::invalid(format!(
            "a VM needs 1 to {MAX_VCPUS} vCPUs, not {vcpus}"
        )));
    }
    if !(MIN_VM_MEMORY_MIB..=MAX_VM_MEMORY_MIB).contains(&memory_mib) {
        return Err(ControlError::invalid(format!(
            "VM memory must be {MIN_VM_MEMORY_MIB} MiB to {} GiB, not {memory_mib} MiB",
            MAX_VM_MEMORY_MIB >> 10
        )));
    }
    if disks.len() > MAX_VM_DISKS {
        return Err(ControlError::invalid(format!(
            "a VM has at most {MAX_VM_DISKS} disks, not {}",
            disks.len()
        )));
    }
    for (i, d) in disks.iter().enumerate() {
        validate_name("virtual disk", d)?;
        if disks[..i].contains(d) {
            return Err(ControlError::invalid(format!(
                "virtual disk {d} is listed twice"
            )));
        }
    }
    validate_path("kernel", kernel)?;
    if let Some(c) = cmdline {
        if c.len() > MAX_CMDLINE_LEN || c.bytes().any(|b| b == 0 || b == b'\n') {
            return Err(ControlError::invalid(format!(
                "kernel command line must be one line of at most {MAX_CMDLINE_LEN} bytes"
            )));
        }
    }
    Ok(())
}

pub(crate) fn validate_stop(name: &str, timeout_ms: Option<u64>) -> Result<(), ControlError> {
    validate_name("VM", name)?;
    match timeout_ms {
        Some(t) if t > MAX_STOP_TIMEOUT_MS => Err(ControlError::invalid(format!(
            "stop timeout is at most {MAX_STOP_TIMEOUT_MS} ms"
        ))),
        _ => Ok(()),
    }
}

pub(crate) fn validate_console(name: &str, max_bytes: Option<u64>) -> Result<(), ControlError> {
    validate_name("VM", name)?;
    match max_bytes {
        Some(0) => Err(ControlError::invalid(
            "console byte count must be at least 1",
        )),
        Some(n) if n > MAX_CONSOLE_BYTES => Err(ControlError::invalid(format!(
            "console byte count is at most {MAX_CONSOLE_BYTES}"
        ))),
        _ => Ok(()),
    }
}

/// Counters of one VM disk or NIC (monotonic since the VM last started).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDeviceStatsView {
    /// The virtual disk name (disks) or NIC id.
    pub id: String,
    pub read_ops: u64,
    pub read_bytes: u64,
    pub write_ops: u64,
    pub write_bytes: u64,
    pub flush_ops: u64,
    pub discard_ops: u64,
    pub errors: u64,
    pub mean_latency_ns: u64,
}

/// Live statistics of a VM that has run since the node started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatsView {
    /// CPU time of the vCPU threads.
    pub cpu_time_ns: u64,
    pub vcpu_exits: u64,
    pub memory_bytes: u64,
    pub disks: Vec<VmDeviceStatsView>,
    pub nics: Vec<VmDeviceStatsView>,
}

/// A VM: its definition, state and (once it ran) statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmView {
    pub name: String,
    /// `defined` (never started since the node started), `running`, `paused` or `stopped`.
    pub state: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub disks: Vec<String>,
    pub kernel: String,
    pub cmdline: String,
    pub created_unix: u64,
    /// Why the guest last stopped (`exit code 0`, `stopped`, ...).
    pub last_exit: Option<String>,
    pub stats: Option<VmStatsView>,
}

/// The tail of a VM's serial console (lossy UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleView {
    pub name: String,
    pub output: String,
    /// Console bytes the guest wrote in total (the output may be a tail of them).
    pub total_bytes: u64,
}

#[cfg(test)]
mod tests {
    use crate::{allowed, Request, Role};

    fn create(vcpus: u8, mem: u64, kernel: &str) -> Request {
        Request::VmCreate {
            name: "vm1".into(),
            vcpus,
            memory_mib: mem,
            disks: vec!["d1".into()],
            kernel: kernel.into(),
            cmdline: None,
        }
    }

    #[test]
    fn vm_validation() {
        create(1, 128, "/k.elf").validate().unwrap();
        assert!(create(0, 128, "/k.elf").validate().is_err());
        assert!(create(33, 128, "/k.elf").validate().is_err());
        assert!(create(1, 1 << 30, "/k.elf").validate().is_err());
        assert!(create(1, 1, "/k.elf").validate().is_err());
        assert!(create(1, 128, "k.elf").validate().is_err());
        let twice = Request::VmCreate {
            name: "vm1".into(),
            vcpus: 1,
            memory_mib: 128,
            disks: vec!["d".into(), "d".into()],
            kernel: "/k".into(),
            cmdline: None,
        };
        assert!(twice.validate().is_err());
        let stop = Request::VmStop {
            name: "vm1".into(),
            force: false,
            timeout_ms: Some(u64::MAX),
        };
        assert!(stop.validate().is_err());
        let con = Request::VmConsole {
            name: "vm1".into(),
            max_bytes: Some(0),
        };
        assert!(con.validate().is_err());
    }

    #[test]
    fn vm_roles_and_wire_form() {
        let c = create(1, 128, "/k.elf");
        let get = Request::VmGet { name: "a".into() };
        let con = Request::VmConsole {
            name: "a".into(),
            max_bytes: None,
        };
        let start = Request::VmStart { name: "a".into() };
        assert!(allowed(Role::Operator, &c));
        assert!(allowed(Role::Operator, &start));
        assert!(!allowed(Role::ReadOnly, &c));
        assert!(!allowed(Role::ReadOnly, &start));
        assert!(allowed(Role::ReadOnly, &Request::VmList));
        assert!(allowed(Role::ReadOnly, &get));
        assert!(allowed(Role::ReadOnly, &con));
        let r: Request =
            serde_json::from_str(r#"{"action":"vm_stop","name":"a","force":true}"#).unwrap();
        assert_eq!(r.action(), "vm_stop");
        assert!(r.is_mutation());
    }
}
