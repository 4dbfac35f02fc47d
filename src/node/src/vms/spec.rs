//! A VM's definition as it travels between nodes for high availability: exported as JSON into
//! the cluster state (`cluster::Command::PutVmSpec`) so the node that takes a dead node's disks
//! over can define and start the VM ([`Vms::import`]), and forgotten on the old owner when it
//! returns ([`Vms::forget`]). Also the note shown as `last_exit` when a restart failed.
//!
//! Must never: trust an imported definition without the checks `vm create` makes (it comes from
//! another node, through raft), or record anything in the cluster state (callers do that).

use std::sync::Arc;

use control::{ControlError, ErrorCode, Request, VmNicSpec, VmView};
use engine::Engine;

use super::{blocking, is_active, too_many_vms, view, Slot, VmDef, Vms, MAX_VMS};

/// What a VM claimed for a planned move is busy with (the start of it, when the move's outcome
/// is not known yet).
const MOVING: &str = "being moved to another node";

impl Vms {
    /// The definition of `name` as exported to the cluster (JSON).
    pub(crate) fn spec_of(&self, name: &str) -> Option<String> {
        let slot = self.slots.lock().get(name).cloned()?;
        let def = slot.lock().def.clone();
        serde_json::to_string(&def).ok()
    }

    /// Names and disks of every VM defined here.
    pub(crate) fn defined(&self) -> Vec<(String, Vec<String>)> {
        let slots: Vec<_> = self.slots.lock().values().cloned().collect();
        slots
            .iter()
            .map(|s| {
                let s = s.lock();
                (s.def.name.clone(), s.def.disks.clone())
            })
            .collect()
    }

    /// Define a VM from a definition another node exported. Checked like `vm create` (name,
    /// vCPUs, memory, command line, NICs, every disk present here), except the kernel file: a
    /// missing kernel is reported when the VM is started, so the VM still shows here with why.
    pub(crate) async fn import(&self, engine: &Engine, spec: &str) -> Result<VmView, ControlError> {
        let def: VmDef = serde_json::from_str(spec)
            .map_err(|e| ControlError::invalid(format!("VM definition is not readable: {e}")))?;
        check_spec(&def)?;
        let _g = self.save.lock().await;
        if self.slots.lock().contains_key(&def.name) {
            return Err(ControlError::new(
                ErrorCode::AlreadyExists,
                format!("a VM named {} already exists on this node", def.name),
            ));
        }
        if self.slots.lock().len() >= MAX_VMS {
            return Err(too_many_vms());
        }
        for d in &def.disks {
            engine.vdisk(d).map_err(crate::convert::error)?;
        }
        self.persist(&self.defs_with(Some(&def), None))?;
        let slot = Arc::new(parking_lot::Mutex::new(Slot::new(def.clone())));
        let v = view(&mut slot.lock());
        self.slots.lock().insert(def.name, slot);
        Ok(v)
    }

    /// Stop `name` at once if it runs (its disks now belong to another node) and drop its
    /// definition here. Returns whether a machine was running.
    pub(crate) async fn forget(&self, name: &str) -> Result<bool, ControlError> {
        let _g = self.save.lock().await;
        let slot = self.get(name)?;
        let held = slot.clone();
        let was_running = blocking(move || {
            let mut s = held.lock();
            let running = s.vm.as_mut().is_some_and(is_active);
            if let Some(vm) = s.vm.take() {
                // Kills the vCPUs and device threads; the guest gets no say.
                vm.delete();
            }
            s.busy = Some("moved to another node".into());
            Ok(running)
        })
        .await?;
        self.persist(&self.defs_with(None, Some(name)))?;
        self.slots.lock().remove(name);
        Ok(was_running)
    }

    /// Set (or clear) the note `vm show` gives as `last_exit` while `name` has no machine.
    pub(crate) fn set_note(&self, name: &str, note: Option<String>) {
        if let Some(slot) = self.slots.lock().get(name).cloned() {
            slot.lock().note = note;
        }
    }

    /// Whether `name`'s machine ended (the guest powered off, reset or failed) without a
    /// `vm stop`: it has a machine in the stopped state.
    pub(crate) fn has_exited(&self, name: &str) -> bool {
        let Some(slot) = self.slots.lock().get(name).cloned() else {
            return false;
        };
        let mut s = slot.lock();
        s.vm.as_mut()
            .is_some_and(|vm| vm.state() == vmm::VmState::Stopped)
    }

    /// Claim stopped VM `name` for a planned move to another node (`cairn vm move`): refused
    /// while it runs or is paused ("stop it first") or another change is under way; once
    /// claimed, starts and other changes are refused until [`Vms::unclaim`] or
    /// [`Vms::forget`], so it cannot start between the move's checks and its commit.
    pub(crate) async fn claim_for_move(&self, name: &str) -> Result<(), ControlError> {
        let slot = self.get(name)?;
        let who = name.to_string();
        blocking(move || {
            let mut s = slot.lock();
            s.check_idle()?;
            if let Some(vm) = s.vm.as_mut() {
                if is_active(vm) {
                    let state = if vm.state() == vmm::VmState::Paused {
                        "paused"
                    } else {
                        "running"
                    };
                    return Err(ControlError::conflict(format!(
                        "VM {who} is {state}: stop it first (cairn vm stop {who}); a planned move \
                         never moves a live guest"
                    )));
                }
            }
            s.busy = Some(MOVING.into());
            Ok(())
        })
        .await
    }

    /// Claims (or keeps claimed) VM `name` while a planned move of it to member `to` is not
    /// settled (`crate::takeover::settles`), also after a restart of this node: changes are
    /// refused, saying the move's outcome is not known yet, until [`Vms::unclaim`] or
    /// [`Vms::forget`]. A VM not defined here is left alone.
    pub(crate) fn claim_unsettled(&self, name: &str, to: u64, to_name: &str) {
        if let Some(slot) = self.slots.lock().get(name).cloned() {
            slot.lock().busy = Some(format!(
                "{MOVING} (member {to_name}, {to}): move outcome not known yet, this node settles it as \
                 soon as the cluster answers"
            ));
        }
    }

    /// Give up a claim of [`Vms::claim_for_move`] or [`Vms::claim_unsettled`] (the move did
    /// not happen).
    pub(crate) fn unclaim(&self, name: &str) {
        if let Some(slot) = self.slots.lock().get(name).cloned() {
            let mut s = slot.lock();
            if s.busy.as_deref().is_some_and(|b| b.starts_with(MOVING)) {
                s.busy = None;
            }
        }
    }

    /// Whether `name` has a running or paused machine.
    pub(crate) fn is_running(&self, name: &str) -> bool {
        let Some(slot) = self.slots.lock().get(name).cloned() else {
            return false;
        };
        let mut s = slot.lock();
        s.vm.as_mut().is_some_and(is_active)
    }
}

/// The checks `vm create` and `vm update` make, on a definition from elsewhere.
fn check_spec(def: &VmDef) -> Result<(), ControlError> {
    Request::VmCreate {
        name: def.name.clone(),
        vcpus: def.vcpus,
        memory_mib: def.memory_mib,
        disks: def.disks.clone(),
        kernel: def.kernel.clone(),
        cmdline: Some(def.cmdline.clone()),
        nics: Vec::new(),
    }
    .validate()?;
    Request::VmUpdate {
        name: def.name.clone(),
        new_name: None,
        description: Some(def.description.clone()),
        vcpus: None,
        memory_mib: None,
        cmdline: None,
        disks: None,
        nics: Some(
            def.nics
                .iter()
                .map(|n| VmNicSpec {
                    tap: n.tap.clone(),
                    mac: Some(n.mac.clone()),
                    bridge: n.bridge.clone(),
                    vlan: n.vlan,
                })
                .collect(),
        ),
    }
    .validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> VmDef {
        VmDef {
            name: "web".into(),
            description: "d".into(),
            vcpus: 1,
            memory_mib: 64,
            disks: vec!["d1".into()],
            nics: vec![super::super::NicDef {
                bridge: None,
                vlan: None,
                tap: "tap0".into(),
                mac: "52:54:00:12:34:56".into(),
            }],
            kernel: "/k".into(),
            cmdline: "console=ttyS0".into(),
            created_unix: 1,
        }
    }

    #[test]
    fn imported_definitions_are_checked_like_created_ones() {
        assert!(check_spec(&def()).is_ok());
        let mut d = def();
        d.vcpus = 0;
        assert!(check_spec(&d).is_err());
        let mut d = def();
        d.name = "bad name/".into();
        assert!(check_spec(&d).is_err());
        let mut d = def();
        d.nics[0].mac = "01:00:00:00:00:01".into();
        assert!(check_spec(&d).unwrap_err().message.contains("multicast"));
        let mut d = def();
        d.memory_mib = u64::MAX;
        assert!(check_spec(&d).is_err());
    }

    /// A definition as nodes before NIC VLANs exported it (no `vlan` key) still reads, as a
    /// NIC without a VLAN, and writes back byte for byte: replicas that exported it and nodes
    /// that import it agree on the bytes. One with a VLAN keeps it, checked like `vm create`.
    #[test]
    fn definitions_from_before_nic_vlans_read_and_write_unchanged() {
        let old = r#"{"name":"web","description":"","vcpus":1,"memory_mib":64,"disks":["d1"],"nics":[{"tap":"tap0","mac":"52:54:00:12:34:56","bridge":"br0"},{"tap":"tap1","mac":"52:54:00:12:34:57"}],"kernel":"/k","cmdline":"console=ttyS0","created_unix":1}"#;
        let def: VmDef = serde_json::from_str(old).unwrap();
        assert_eq!(def.nics[0].bridge.as_deref(), Some("br0"));
        assert_eq!((def.nics[0].vlan, def.nics[1].vlan), (None, None));
        check_spec(&def).unwrap();
        assert_eq!(serde_json::to_string(&def).unwrap(), old);

        let tagged = old.replacen(r#""bridge":"br0""#, r#""bridge":"br0","vlan":10"#, 1);
        let def: VmDef = serde_json::from_str(&tagged).unwrap();
        assert_eq!(def.nics[0].vlan, Some(10));
        check_spec(&def).unwrap();
        assert_eq!(serde_json::to_string(&def).unwrap(), tagged);
        for bad in [r#""vlan":0"#, r#""vlan":4095"#] {
            let def: VmDef =
                serde_json::from_str(&tagged.replacen(r#""vlan":10"#, bad, 1)).unwrap();
            let e = check_spec(&def).unwrap_err();
            assert!(
                e.message.contains("must be from 1 to 4094"),
                "{}",
                e.message
            );
        }
        // A VLAN on the NIC without a bridge cannot be applied: refused, not dropped.
        let mut def: VmDef = serde_json::from_str(&tagged).unwrap();
        def.nics[0].bridge = None;
        assert!(check_spec(&def).unwrap_err().message.contains("no bridge"));
    }

    /// An engine over two sparse file disks in `dir`.
    async fn engine(dir: &std::path::Path) -> Engine {
        let e = Engine::open(engine::EngineConfig {
            node_id: 1,
            node_name: "t".into(),
        })
        .await
        .unwrap();
        for i in 0..2 {
            let p = dir.join(format!("d{i}"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(256 << 20)
                .unwrap();
            e.add_disk(crate::disks::open_device(&p).unwrap())
                .await
                .unwrap();
        }
        e
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn import_and_forget_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let vms = Vms::load(dir.path(), None).unwrap();
        let engine = engine(dir.path()).await;
        engine.create_vdisk("d1", 1 << 20).await.unwrap();
        let spec = serde_json::to_string(&def()).unwrap();
        let v = vms.import(&engine, &spec).await.unwrap();
        assert_eq!(v.state, "defined");
        assert_eq!(vms.spec_of("web").as_deref(), Some(spec.as_str()));
        // Saved: a reload sees it.
        assert_eq!(Vms::load(dir.path(), None).unwrap().defined().len(), 1);
        // Twice: refused, nothing changed.
        let e = vms.import(&engine, &spec).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::AlreadyExists);
        // Garbage and a missing disk: refused.
        assert!(vms.import(&engine, "{").await.is_err());
        let mut other = def();
        other.name = "db".into();
        other.disks = vec!["ghost".into()];
        let e = vms
            .import(&engine, &serde_json::to_string(&other).unwrap())
            .await
            .unwrap_err();
        assert!(e.message.contains("ghost"), "{}", e.message);
        vms.set_note("web", Some("why".into()));
        assert_eq!(
            vms.get_view("web").await.unwrap().last_exit.as_deref(),
            Some("why")
        );
        assert!(!vms.forget("web").await.unwrap());
        assert!(vms.defined().is_empty());
        assert!(Vms::load(dir.path(), None).unwrap().defined().is_empty());
        engine.shutdown().await.unwrap();
    }
}
