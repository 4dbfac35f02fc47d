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
/// NICs per VM (the VMM's bound).
pub const MAX_VM_NICS: usize = 8;
/// Longest VM description.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// Longest host tap device name (Linux IFNAMSIZ - 1).
pub const MAX_TAP_NAME_LEN: usize = 15;
/// Lowest and highest 802.1Q VLAN id a NIC may be on (0 means "priority tag only" and 4095 is
/// reserved, so neither names a network).
pub const MIN_VLAN_ID: u16 = 1;
pub const MAX_VLAN_ID: u16 = 4094;
/// A NIC's `bridge` that says "no bridge": its tap is only brought up, for a host-only network
/// or a tap wired by whoever made it, even on a node whose NICs join a default bridge when they
/// name none (the appliance's, `NodeConfig::vm_bridge` in the node). Never stored: the
/// definition then has no bridge, as a NIC that named none had before nodes had a default.
/// Reserved, so a Linux bridge of that name cannot be named (any other case spelling is refused
/// as a likely typo).
pub const NO_BRIDGE: &str = "none";
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
    nics: &[VmNicSpec],
) -> Result<(), ControlError> {
    validate_name("VM", name)?;
    validate_vcpus(vcpus)?;
    validate_memory(memory_mib)?;
    validate_disk_list(disks)?;
    validate_path("kernel", kernel)?;
    if let Some(c) = cmdline {
        validate_cmdline(c)?;
    }
    validate_nics(nics)
}

fn validate_vcpus(vcpus: u8) -> Result<(), ControlError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(ControlError::invalid(format!(
            "a VM needs 1 to {MAX_VCPUS} vCPUs, not {vcpus}"
        )));
    }
    Ok(())
}

fn validate_memory(memory_mib: u64) -> Result<(), ControlError> {
    if !(MIN_VM_MEMORY_MIB..=MAX_VM_MEMORY_MIB).contains(&memory_mib) {
        return Err(ControlError::invalid(format!(
            "VM memory must be {MIN_VM_MEMORY_MIB} MiB to {} GiB, not {memory_mib} MiB",
            MAX_VM_MEMORY_MIB >> 10
        )));
    }
    Ok(())
}

fn validate_cmdline(c: &str) -> Result<(), ControlError> {
    if c.len() > MAX_CMDLINE_LEN || c.bytes().any(|b| b == 0 || b == b'\n') {
        return Err(ControlError::invalid(format!(
            "kernel command line must be one line of at most {MAX_CMDLINE_LEN} bytes"
        )));
    }
    Ok(())
}

/// Parse `aa:bb:cc:dd:ee:ff` (either case). A guest NIC needs a unicast, non-zero address.
pub fn parse_mac(mac: &str) -> Result<[u8; 6], ControlError> {
    let bad = || {
        ControlError::invalid(format!(
            "MAC address {mac:?} must look like 02:00:00:00:00:01 (six hex pairs)"
        ))
    };
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for b in &mut out {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if out[0] & 1 == 1 {
        return Err(ControlError::invalid(format!(
            "MAC address {mac} is a multicast address; a NIC needs a unicast one"
        )));
    }
    if out == [0; 6] {
        return Err(ControlError::invalid(
            "MAC address 00:00:00:00:00:00 is not usable",
        ));
    }
    Ok(out)
}

/// Format a MAC address the way [`parse_mac`] reads it (lower case).
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A Linux network interface name we accept for a tap or bridge: 1-15 letters, digits, '-',
/// '_' or '.', and not `.` or `..`.
fn is_ifname(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TAP_NAME_LEN
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && t != "."
        && t != ".."
}

fn validate_nics(nics: &[VmNicSpec]) -> Result<(), ControlError> {
    if nics.len() > MAX_VM_NICS {
        return Err(ControlError::invalid(format!(
            "a VM has at most {MAX_VM_NICS} NICs, not {}",
            nics.len()
        )));
    }
    let mut macs = Vec::with_capacity(nics.len());
    for (i, n) in nics.iter().enumerate() {
        let t = &n.tap;
        if !is_ifname(t) {
            return Err(ControlError::invalid(format!(
                "NIC {} tap device name {t:?} must be 1-{MAX_TAP_NAME_LEN} letters, digits, '-', '_' or '.'",
                i + 1
            )));
        }
        if let Some(b) = n.bridge.as_deref().filter(|b| *b != NO_BRIDGE) {
            if b.eq_ignore_ascii_case(NO_BRIDGE) {
                return Err(ControlError::invalid(format!(
                    "NIC {} bridge {b:?}: write {NO_BRIDGE} in lower case for no bridge",
                    i + 1
                )));
            }
            if !is_ifname(b) {
                return Err(ControlError::invalid(format!(
                    "NIC {} bridge name {b:?} must be 1-{MAX_TAP_NAME_LEN} letters, digits, '-', '_' or '.'",
                    i + 1
                )));
            }
            // Valid names that get in each other's way (the document cannot say "differs from
            // the tap"): a conflict, like a tap two NICs claim, not a malformed request.
            if b == t {
                return Err(ControlError::conflict(format!(
                    "NIC {} names {t} as both its tap device and its bridge",
                    i + 1
                )));
            }
        }
        if let Some(v) = n.vlan {
            validate_vlan(i, v)?;
            // The VLAN is a property of the tap's port on the bridge: without a bridge there is
            // no port to put on it, and a tap wired by hand would silently ignore it.
            if n.bridge.as_deref() == Some(NO_BRIDGE) {
                return Err(ControlError::invalid(format!(
                    "NIC {} is on VLAN {v} but its bridge is {NO_BRIDGE}: the VLAN is set on the tap's port of a bridge, so give a bridge or leave the VLAN out",
                    i + 1
                )));
            }
            if n.bridge.is_none() {
                return Err(ControlError::invalid(format!(
                    "NIC {} is on VLAN {v} but has no bridge: the VLAN is set on the tap's port of its bridge, so give the bridge too",
                    i + 1
                )));
            }
        }
        // Two NICs claiming one tap device (or MAC address) are in each other's way: a
        // conflict, like a disk another VM uses (the document cannot say "unique by field").
        if nics[..i].iter().any(|o| o.tap == *t) {
            return Err(ControlError::conflict(format!(
                "tap device {t} is used by two NICs"
            )));
        }
        if let Some(m) = &n.mac {
            let m = parse_mac(m)?;
            if macs.contains(&m) {
                return Err(ControlError::conflict(format!(
                    "MAC address {} is used by two NICs",
                    format_mac(m)
                )));
            }
            macs.push(m);
        }
    }
    Ok(())
}

/// A NIC's VLAN id (`i` counts from 0) must name a network: 1 to 4094.
fn validate_vlan(i: usize, vlan: u16) -> Result<(), ControlError> {
    if !(MIN_VLAN_ID..=MAX_VLAN_ID).contains(&vlan) {
        return Err(ControlError::invalid(format!(
            "NIC {} VLAN id {vlan} must be from {MIN_VLAN_ID} to {MAX_VLAN_ID} (0 and 4095 are reserved by 802.1Q)",
            i + 1
        )));
    }
    Ok(())
}

/// Check the shape of a `vm_update`. `disks`, when given, must list each disk once; that it is
/// a reordering of the VM's current disks is the node's check.
#[allow(clippy::too_many_arguments)]
pub(crate) fn validate_update(
    name: &str,
    new_name: Option<&str>,
    description: Option<&str>,
    vcpus: Option<u8>,
    memory_mib: Option<u64>,
    cmdline: Option<&str>,
    disks: Option<&[String]>,
    nics: Option<&[VmNicSpec]>,
) -> Result<(), ControlError> {
    validate_name("VM", name)?;
    if let Some(n) = new_name {
        validate_name("new VM", n)?;
    }
    if let Some(d) = description {
        // Characters, as the OpenAPI document counts them (at most 4 KiB of UTF-8).
        if d.chars().count() > MAX_DESCRIPTION_LEN || d.contains('\0') {
            return Err(ControlError::invalid(format!(
                "a VM description is at most {MAX_DESCRIPTION_LEN} characters of text"
            )));
        }
    }
    if let Some(v) = vcpus {
        validate_vcpus(v)?;
    }
    if let Some(m) = memory_mib {
        validate_memory(m)?;
    }
    if let Some(c) = cmdline {
        validate_cmdline(c)?;
    }
    if let Some(disks) = disks {
        validate_disk_list(disks)?;
    }
    if let Some(nics) = nics {
        validate_nics(nics)?;
    }
    let nothing = new_name.is_none()
        && description.is_none()
        && vcpus.is_none()
        && memory_mib.is_none()
        && cmdline.is_none()
        && disks.is_none()
        && nics.is_none();
    if nothing {
        return Err(ControlError::invalid(
            "nothing to change: give new_name, description, vcpus, memory_mib, cmdline, disks or nics",
        ));
    }
    Ok(())
}

fn validate_disk_list(disks: &[String]) -> Result<(), ControlError> {
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

/// A NIC as a request gives it: the host tap device it is wired to, its MAC address (the
/// node picks a stable locally administered one when it is left out), and the Linux bridge
/// (on the node, existing already) the tap joins when the VM starts. Left out, the node's
/// default bridge when it has one (the appliance's), else none; [`NO_BRIDGE`]: none, even
/// there. Without a bridge the tap is only brought up: whoever made it wires it. With a VLAN
/// (1-4094, needs a bridge) the tap's bridge port carries only that VLAN, untagged towards the
/// guest (Proxmox's `tag=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmNicSpec {
    pub tap: String,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

impl VmNicSpec {
    /// The bridge the tap joins as the definition keeps it: None for [`NO_BRIDGE`] (and for a
    /// NIC that names none, which the node has given its default bridge first, if it has one).
    pub fn bridge_to_join(&self) -> Option<&str> {
        self.bridge.as_deref().filter(|b| *b != NO_BRIDGE)
    }
}

/// A NIC of a VM: `net0`, `net1`, ... in order, the host tap device, the guest MAC address,
/// the bridge its tap joins at start (if any) and the VLAN of its port there (if any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNicView {
    pub id: String,
    pub tap: String,
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

/// A VM: its definition, state and (once it ran) statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmView {
    pub name: String,
    /// Free text for people (at most 1 KiB).
    #[serde(default)]
    pub description: String,
    /// `defined` (never started since the node started), `running`, `paused` or `stopped`.
    pub state: String,
    /// A change under way that waits (`detaching disk d1`); other changes are refused meanwhile.
    #[serde(default)]
    pub operation: Option<String>,
    pub vcpus: u8,
    pub memory_mib: u64,
    /// Virtual disks in attach order; the first is the boot disk (the guest's first virtio-blk
    /// device, `/dev/vda` in Linux).
    pub disks: Vec<String>,
    #[serde(default)]
    pub nics: Vec<VmNicView>,
    pub kernel: String,
    pub cmdline: String,
    pub created_unix: u64,
    /// Why the guest last stopped (`exit code 0`, `stopped`, ...).
    pub last_exit: Option<String>,
    pub stats: Option<VmStatsView>,
    /// The cluster member that holds it, when that is not the node answering (the API of any
    /// member lists every member's VMs, see `Via::Api`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Where a console reader is in one output stream: which log (each machine of a VM has its
/// own) and how many of its bytes the reader has seen. The default is "nothing seen yet".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsolePlace {
    pub log_id: u64,
    pub seen: u64,
}

/// New output of one console stream ([`crate::ConsolePort::output_since`]) and the reader's
/// place after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleChunk {
    pub bytes: Vec<u8>,
    pub place: ConsolePlace,
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
            nics: Vec::new(),
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
            nics: Vec::new(),
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
    fn vm_create_nics_are_checked_like_an_update() {
        let with = |list: Vec<(&str, Option<&str>)>| {
            let mut r = create(1, 128, "/k.elf");
            if let Request::VmCreate { nics, .. } = &mut r {
                *nics = list
                    .into_iter()
                    .map(|(t, b)| crate::VmNicSpec {
                        tap: t.into(),
                        mac: None,
                        bridge: b.map(Into::into),
                        vlan: None,
                    })
                    .collect();
            }
            r.validate()
        };
        with(vec![("tap0", Some("br0")), ("tap1", None)]).unwrap();
        let e = with(vec![("tap0", None), ("tap0", Some("br0"))]).unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::Conflict, "{}", e.message);
        for bad in ["", "br/0", "..", "a-much-too-long-bridge"] {
            let e = with(vec![("tap0", Some(bad))]).unwrap_err();
            assert_eq!(e.code, crate::ErrorCode::InvalidArgument, "{bad:?}");
            assert!(e.message.contains("bridge name"), "{}", e.message);
        }
        let e = with(vec![("tap0", Some("tap0"))]).unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::Conflict, "{}", e.message);
        assert!(e.message.contains("both"), "{}", e.message);
        // Old clients leave `nics` (and `bridge`) out.
        let r: Request = serde_json::from_value(serde_json::json!({"action": "vm_create",
            "name": "v", "vcpus": 1, "memory_mib": 64, "kernel": "/k"}))
        .unwrap();
        assert_eq!(r, create_named("v"));
    }

    #[test]
    fn nic_vlans_are_1_to_4094_on_a_bridge() {
        let with = |bridge: Option<&str>, vlan: Option<u16>| {
            let mut r = create(1, 128, "/k.elf");
            if let Request::VmCreate { nics, .. } = &mut r {
                nics.push(crate::VmNicSpec {
                    tap: "tap0".into(),
                    mac: None,
                    bridge: bridge.map(Into::into),
                    vlan,
                });
            }
            r.validate()
        };
        with(Some("br0"), Some(1)).unwrap();
        with(Some("br0"), Some(4094)).unwrap();
        with(Some("br0"), None).unwrap();
        for bad in [0, 4095, 4096, u16::MAX] {
            let e = with(Some("br0"), Some(bad)).unwrap_err();
            assert_eq!(e.code, crate::ErrorCode::InvalidArgument, "{bad}");
            assert!(
                e.message
                    .contains(&format!("VLAN id {bad} must be from 1 to 4094")),
                "{}",
                e.message
            );
        }
        let e = with(None, Some(10)).unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::InvalidArgument);
        assert!(e.message.contains("no bridge"), "{}", e.message);
        // On the wire: `vlan` is left out when there is none (what older clients and nodes
        // wrote), and read back when given.
        let n = crate::VmNicSpec {
            tap: "t".into(),
            mac: None,
            bridge: Some("br0".into()),
            vlan: None,
        };
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"tap": "t", "mac": null, "bridge": "br0"})
        );
        let old: crate::VmNicSpec =
            serde_json::from_value(serde_json::json!({"tap": "t", "bridge": "br0"})).unwrap();
        assert_eq!(old, n);
        let tagged: crate::VmNicSpec =
            serde_json::from_value(serde_json::json!({"tap": "t", "bridge": "br0", "vlan": 10}))
                .unwrap();
        assert_eq!(tagged.vlan, Some(10));
        // Not a number that fits: refused by the decoder, not wrapped.
        assert!(serde_json::from_value::<crate::VmNicSpec>(
            serde_json::json!({"tap": "t", "bridge": "br0", "vlan": 70000})
        )
        .is_err());
    }

    #[test]
    fn bridge_none_is_a_plain_tap_and_not_a_bridge_name() {
        let with = |tap: &str, bridge: Option<&str>, vlan: Option<u16>| {
            let mut r = create(1, 128, "/k.elf");
            if let Request::VmCreate { nics, .. } = &mut r {
                nics.push(crate::VmNicSpec {
                    tap: tap.into(),
                    mac: None,
                    bridge: bridge.map(Into::into),
                    vlan,
                });
            }
            r.validate()
        };
        with("tap0", Some(crate::NO_BRIDGE), None).unwrap();
        // Not a bridge name, so a tap called none is not "its own bridge".
        with("none", Some("none"), None).unwrap();
        for typo in ["None", "NONE", "nOnE"] {
            let e = with("tap0", Some(typo), None).unwrap_err();
            assert_eq!(e.code, crate::ErrorCode::InvalidArgument, "{typo}");
            assert!(e.message.contains("in lower case"), "{}", e.message);
        }
        let e = with("tap0", Some("none"), Some(10)).unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::InvalidArgument);
        assert!(
            e.message
                .contains("VLAN 10 but its bridge is none: the VLAN is set on the tap's port"),
            "{}",
            e.message
        );

        let nic = |bridge: Option<&str>| crate::VmNicSpec {
            tap: "t".into(),
            mac: None,
            bridge: bridge.map(Into::into),
            vlan: None,
        };
        assert_eq!(nic(Some("none")).bridge_to_join(), None);
        assert_eq!(nic(None).bridge_to_join(), None);
        assert_eq!(nic(Some("br0")).bridge_to_join(), Some("br0"));
        // On the wire it is the bridge field's value, read and written as given.
        let wire = serde_json::json!({"tap": "t", "mac": null, "bridge": "none"});
        let n: crate::VmNicSpec = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(n, nic(Some("none")));
        assert_eq!(serde_json::to_value(&n).unwrap(), wire);
    }

    fn create_named(name: &str) -> Request {
        Request::VmCreate {
            name: name.into(),
            vcpus: 1,
            memory_mib: 64,
            disks: Vec::new(),
            kernel: "/k".into(),
            cmdline: None,
            nics: Vec::new(),
        }
    }

    fn update() -> Request {
        Request::VmUpdate {
            name: "vm1".into(),
            new_name: None,
            description: None,
            vcpus: None,
            memory_mib: None,
            cmdline: None,
            disks: None,
            nics: None,
        }
    }

    #[test]
    fn vm_update_validation() {
        let with = |f: &dyn Fn(&mut Request)| {
            let mut r = update();
            f(&mut r);
            r.validate()
        };
        // Nothing to change is an error, not a silent success.
        let e = update().validate().unwrap_err();
        assert!(e.message.contains("nothing to change"), "{}", e.message);
        let set = |r: &mut Request, v: Option<u8>, m: Option<u64>| {
            if let Request::VmUpdate {
                vcpus, memory_mib, ..
            } = r
            {
                *vcpus = v;
                *memory_mib = m;
            }
        };
        with(&|r| set(r, Some(2), Some(256))).unwrap();
        assert!(with(&|r| set(r, Some(0), None)).is_err());
        assert!(with(&|r| set(r, Some(33), None)).is_err());
        assert!(with(&|r| set(r, None, Some(8))).is_err());
        let nics = |list: Vec<(&str, Option<&str>)>| {
            let mut r = update();
            if let Request::VmUpdate { nics, .. } = &mut r {
                *nics = Some(
                    list.into_iter()
                        .map(|(t, m)| crate::VmNicSpec {
                            tap: t.into(),
                            mac: m.map(Into::into),
                            bridge: None,
                            vlan: None,
                        })
                        .collect(),
                );
            }
            r.validate()
        };
        nics(vec![("tap0", Some("02:00:00:00:00:01")), ("tap1", None)]).unwrap();
        nics(vec![]).unwrap();
        assert!(nics(vec![("tap0", None), ("tap0", None)]).is_err());
        assert!(nics(vec![("a-very-long-tap-name", None)]).is_err());
        assert!(nics(vec![("tap/0", None)]).is_err());
        assert!(nics(vec![("..", None)]).is_err());
        assert!(nics(vec![("t0", Some("01:00:00:00:00:01"))]).is_err());
        assert!(nics(vec![("t0", Some("00:00:00:00:00:00"))]).is_err());
        assert!(nics(vec![("t0", Some("02:00:00:00:00"))]).is_err());
        assert!(nics(vec![("t0", Some("02:00:00:00:00:0g"))]).is_err());
        assert!(nics(vec![
            ("t0", Some("02:00:00:00:00:01")),
            ("t1", Some("02:00:00:00:00:01"))
        ])
        .is_err());
        let nine = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        assert!(nics(nine.iter().map(|t| (*t, None)).collect()).is_err());
        let twice = with(&|r| {
            if let Request::VmUpdate { disks, .. } = r {
                *disks = Some(vec!["d".into(), "d".into()]);
            }
        });
        assert!(twice.is_err());
        let bad_name = with(&|r| {
            if let Request::VmUpdate { new_name, .. } = r {
                *new_name = Some("-x".into());
            }
        });
        assert!(bad_name.is_err());
        let long = with(&|r| {
            if let Request::VmUpdate { description, .. } = r {
                *description = Some("x".repeat(crate::vm::MAX_DESCRIPTION_LEN + 1));
            }
        });
        assert!(long.is_err());
        assert_eq!(
            crate::format_mac(crate::parse_mac("02:AB:00:00:00:0f").unwrap()),
            "02:ab:00:00:00:0f"
        );
        let r: Request = serde_json::from_str(
            r#"{"action":"vm_update","name":"a","vcpus":2,"nics":[{"tap":"t0"}]}"#,
        )
        .unwrap();
        assert_eq!(r.action(), "vm_update");
        assert!(r.is_mutation());
        assert!(allowed(Role::Operator, &r));
        assert!(!allowed(Role::ReadOnly, &r));
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
