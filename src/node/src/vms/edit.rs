//! Changing a VM's definition (`vm_update`): rename, description, vCPUs, memory, command line,
//! disk order (the first disk boots) and NICs. Everything but the description needs the VM
//! stopped, since the machine is built from the definition at start. The new definition is
//! saved before it becomes current, so a failed save changes nothing. Never touches a running
//! machine.

use control::{ControlError, ErrorCode, VmNicSpec, VmView};

use super::{blocking, is_active, not_found, view, NicDef, VmDef, Vms};

/// The fields a `vm_update` may give; None keeps the current value.
#[derive(Debug, Default)]
pub(crate) struct VmChange {
    pub new_name: Option<String>,
    pub description: Option<String>,
    pub vcpus: Option<u8>,
    pub memory_mib: Option<u64>,
    pub cmdline: Option<String>,
    pub disks: Option<Vec<String>>,
    pub nics: Option<Vec<VmNicSpec>>,
}

/// A stable locally administered unicast MAC for NIC `index` of a VM: the same VM, creation
/// time and tap give the same address, so a redefined NIC keeps its address unless told.
fn derived_mac(def: &VmDef, tap: &str, index: usize) -> [u8; 6] {
    // FNV-1a: small, stable across versions and platforms (std's hasher is neither).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let seed = format!("{}/{}/{tap}/{index}", def.name, def.created_unix);
    for b in seed.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_le_bytes();
    // 0x02: locally administered, unicast.
    [0x02, b[0], b[1], b[2], b[3], b[4]]
}

/// The new NIC list: a NIC without a MAC keeps the one its tap had, or gets a derived one; a
/// NIC whose bridge is `none` ([`control::NO_BRIDGE`]) is kept without one, as a NIC that
/// named no bridge before nodes had a default bridge.
pub(super) fn new_nics(def: &VmDef, specs: &[VmNicSpec]) -> Result<Vec<NicDef>, ControlError> {
    let mut out: Vec<NicDef> = Vec::with_capacity(specs.len());
    for (i, n) in specs.iter().enumerate() {
        let mac = match &n.mac {
            Some(m) => control::format_mac(control::parse_mac(m)?),
            None => match def.nics.iter().find(|o| o.tap == n.tap) {
                Some(old) => old.mac.clone(),
                None => control::format_mac(derived_mac(def, &n.tap, i)),
            },
        };
        if out.iter().any(|o| o.mac == mac) {
            return Err(ControlError::conflict(format!(
                "MAC address {mac} is used by two NICs"
            )));
        }
        out.push(NicDef {
            tap: n.tap.clone(),
            mac,
            bridge: n.bridge_to_join().map(str::to_string),
            vlan: n.vlan,
        });
    }
    Ok(out)
}

/// Apply `c` to `def`; the names of the fields that need the VM stopped and really change.
fn apply(def: &VmDef, c: &VmChange) -> Result<(VmDef, Vec<&'static str>), ControlError> {
    let mut new = def.clone();
    let mut needs_stop = Vec::new();
    if let Some(n) = &c.new_name {
        if *n != def.name {
            new.name = n.clone();
            needs_stop.push("name");
        }
    }
    if let Some(d) = &c.description {
        new.description = d.clone();
    }
    if let Some(v) = c.vcpus {
        if v != def.vcpus {
            new.vcpus = v;
            needs_stop.push("vCPUs");
        }
    }
    if let Some(m) = c.memory_mib {
        if m != def.memory_mib {
            new.memory_mib = m;
            needs_stop.push("memory");
        }
    }
    if let Some(cl) = &c.cmdline {
        if *cl != def.cmdline {
            new.cmdline = cl.clone();
            needs_stop.push("command line");
        }
    }
    if let Some(disks) = &c.disks {
        let mut a = disks.clone();
        let mut b = def.disks.clone();
        a.sort();
        b.sort();
        if a != b {
            // Which disks the VM has is its state, not the request's form: a conflict.
            return Err(ControlError::conflict(format!(
                "disks must list the VM's disks ({}) in the new order; attach or detach a disk to change which it has",
                def.disks.join(", ")
            )));
        }
        if *disks != def.disks {
            new.disks = disks.clone();
            needs_stop.push("disk order");
        }
    }
    if let Some(specs) = &c.nics {
        let nics = new_nics(def, specs)?;
        if nics != def.nics {
            new.nics = nics;
            needs_stop.push("NICs");
        }
    }
    Ok((new, needs_stop))
}

impl Vms {
    /// Change a VM's definition (see the module doc). Answers the new view and, after a
    /// rename, the old name.
    pub(crate) async fn update(
        &self,
        name: &str,
        change: VmChange,
    ) -> Result<(VmView, Option<String>), ControlError> {
        let _g = self.save.lock().await;
        let slot = self.get(name)?;
        let new_name = change.new_name.clone().filter(|n| n != name);
        if let Some(n) = &new_name {
            if self.slots.lock().contains_key(n) {
                return Err(ControlError::new(
                    ErrorCode::AlreadyExists,
                    format!("a VM named {n} already exists"),
                ));
            }
        }
        let others = self.other_slots(name);
        let (live, file, who) = (slot.clone(), self.file.clone(), name.to_string());
        let v = blocking(move || {
            let mut defs: Vec<VmDef> = others.iter().map(|o| o.lock().def.clone()).collect();
            let mut s = live.lock();
            s.check_idle()?;
            let (new_def, needs_stop) = apply(&s.def, &change)?;
            let active = s.vm.as_mut().is_some_and(is_active);
            if active && !needs_stop.is_empty() {
                return Err(ControlError::conflict(format!(
                    "{who} is running; stop it before changing its {} (cairn vm stop {who})",
                    needs_stop.join(", ")
                )));
            }
            defs.push(new_def.clone());
            super::persist_to(&file, &defs)?;
            s.def = new_def;
            Ok(view(&mut s))
        })
        .await?;
        if let Some(n) = &new_name {
            // Same slot under the new key: a console that watches it follows the rename.
            let mut slots = self.slots.lock();
            let moved = slots.remove(name).ok_or_else(|| not_found(name))?;
            slots.insert(n.clone(), moved);
        }
        Ok((v, new_name.map(|_| name.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> VmDef {
        VmDef {
            name: "vm1".into(),
            description: String::new(),
            vcpus: 1,
            memory_mib: 128,
            disks: vec!["a".into(), "b".into()],
            nics: vec![NicDef {
                tap: "tap0".into(),
                mac: "02:00:00:00:00:01".into(),
                bridge: None,
                vlan: None,
            }],
            kernel: "/k".into(),
            cmdline: String::new(),
            created_unix: 7,
        }
    }

    #[test]
    fn what_needs_a_stop() {
        let d = def();
        let c = VmChange {
            description: Some("web".into()),
            vcpus: Some(1),
            ..Default::default()
        };
        let (n, stop) = apply(&d, &c).unwrap();
        assert_eq!(n.description, "web");
        assert!(stop.is_empty(), "{stop:?}");
        let c = VmChange {
            vcpus: Some(2),
            disks: Some(vec!["b".into(), "a".into()]),
            ..Default::default()
        };
        let (n, stop) = apply(&d, &c).unwrap();
        assert_eq!(stop, ["vCPUs", "disk order"]);
        assert_eq!(n.disks, ["b", "a"]);
        let c = VmChange {
            disks: Some(vec!["a".into(), "c".into()]),
            ..Default::default()
        };
        let e = apply(&d, &c).unwrap_err();
        assert!(e.message.contains("new order"), "{}", e.message);
    }

    #[test]
    fn nic_macs_kept_derived_and_unique() {
        let d = def();
        let specs = vec![
            VmNicSpec {
                tap: "tap0".into(),
                mac: None,
                bridge: None,
                vlan: None,
            },
            VmNicSpec {
                tap: "tap1".into(),
                mac: None,
                bridge: None,
                vlan: None,
            },
        ];
        let nics = new_nics(&d, &specs).unwrap();
        assert_eq!(nics[0].mac, "02:00:00:00:00:01", "kept for the same tap");
        let m = control::parse_mac(&nics[1].mac).unwrap();
        assert_eq!(m[0], 0x02, "locally administered unicast");
        assert_eq!(new_nics(&d, &specs).unwrap(), nics, "stable");
        let clash = vec![
            VmNicSpec {
                tap: "tap0".into(),
                mac: None,
                bridge: None,
                vlan: None,
            },
            VmNicSpec {
                tap: "tap9".into(),
                mac: Some("02:00:00:00:00:01".into()),
                bridge: None,
                vlan: None,
            },
        ];
        assert!(new_nics(&d, &clash).is_err());
    }

    #[test]
    fn a_nic_on_bridge_none_is_kept_without_a_bridge() {
        let d = def();
        let spec = |bridge: Option<&str>| VmNicSpec {
            tap: "tap0".into(),
            mac: None,
            bridge: bridge.map(Into::into),
            vlan: None,
        };
        let nics = new_nics(&d, &[spec(Some(control::NO_BRIDGE))]).unwrap();
        assert_eq!(nics, d.nics, "stored as a NIC without a bridge always was");
        // So an edit that says none for the VM's plain tap changes nothing (no stop needed).
        let c = VmChange {
            nics: Some(vec![spec(Some("none"))]),
            ..Default::default()
        };
        let (n, stop) = apply(&d, &c).unwrap();
        assert_eq!((n.nics, stop), (d.nics.clone(), Vec::<&str>::new()));
        let c = VmChange {
            nics: Some(vec![spec(Some("br0"))]),
            ..Default::default()
        };
        let (n, stop) = apply(&d, &c).unwrap();
        assert_eq!(n.nics[0].bridge.as_deref(), Some("br0"));
        assert_eq!(stop, ["NICs"]);
    }
}
