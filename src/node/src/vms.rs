//! The node's virtual machines: their definitions (persisted in `DATA/vms.json`, replaced
//! atomically, so they survive restarts) and the running `vmm::Vm`s, whose virtio-blk disks call
//! the engine directly through `vmm::EngineDisk` — no file, loop device or NBD in between.
//!
//! Running state is not persisted: after a node restart every VM is `defined` until started.
//! This module never decides policy (the controller does) and never touches disk contents.
//! VMM calls block (building guest memory, waiting for a guest to stop), so they run on tokio's
//! blocking pool, never on a runtime worker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use control::{
    ConsoleChunk, ConsolePlace, ConsoleView, ControlError, ErrorCode, VmDeviceStatsView,
    VmStatsView, VmView, DEFAULT_CONSOLE_BYTES, DEFAULT_STOP_TIMEOUT_MS,
};
use engine::Engine;
use serde::{Deserialize, Serialize};

mod disks;
mod edit;
mod ram;
mod spec;
mod watch;

pub(crate) use edit::VmChange;

/// Most VMs one node defines. A definition that does not run costs only its record (a few
/// hundred bytes; at most ~9 KiB with the longest description, command line, kernel path and 16
/// disks, so ~36 MiB at the cap, and the definitions file rewritten per change); how many run
/// is bounded by RAM, not by this. 4,096 is 4x what a large hypervisor host runs at once.
pub const MAX_VMS: usize = 4096;
/// Largest kernel file accepted (a bzImage is ~10 MiB).
const MAX_KERNEL_BYTES: u64 = 256 << 20;

/// What `vm create` stores (and `vm update` changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct VmDef {
    name: String,
    #[serde(default)]
    description: String,
    vcpus: u8,
    memory_mib: u64,
    disks: Vec<String>,
    #[serde(default)]
    nics: Vec<NicDef>,
    kernel: String,
    cmdline: String,
    created_unix: u64,
}

/// A NIC: the host tap device it is wired to, the guest's MAC address, the bridge the tap
/// joins at start (none: the tap is only brought up) and the VLAN of its port there (none: the
/// bridge's default, untagged). Its id is `net<i>`. Part of the definition exported to the
/// cluster (`spec_of`): optional fields are left out when empty, so a definition without them
/// reads and writes exactly as before they existed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NicDef {
    tap: String,
    mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bridge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vlan: Option<u16>,
}

struct Slot {
    def: VmDef,
    vm: Option<vmm::Vm>,
    /// A change that waits (a disk detach waiting for the guest) and runs without holding
    /// this slot's lock: while set, other changes of this VM are refused with a conflict;
    /// views, the console and stop go on.
    busy: Option<String>,
    /// Why the VM has no machine although it should (a restart after a takeover failed):
    /// shown as `last_exit` until a machine exists.
    note: Option<String>,
}

impl Slot {
    fn new(def: VmDef) -> Slot {
        Slot {
            def,
            vm: None,
            busy: None,
            note: None,
        }
    }

    /// Refuse a change while another one is under way.
    fn check_idle(&self) -> Result<(), ControlError> {
        match &self.busy {
            Some(what) => Err(ControlError::conflict(format!(
                "{} is busy {what}; try again when that is done",
                self.def.name
            ))),
            None => Ok(()),
        }
    }
}

type SlotRef = Arc<parking_lot::Mutex<Slot>>;

/// All VMs of the node.
pub(crate) struct Vms {
    file: PathBuf,
    slots: parking_lot::Mutex<BTreeMap<String, SlotRef>>,
    /// Serializes create/delete so the saved file always matches the map.
    save: tokio::sync::Mutex<()>,
    /// Starts admitted by RAM (see `ram`).
    ram: Arc<ram::RamBudget>,
}

/// How long a running guest has to release a disk being detached, unless the request says.
pub const DETACH_TIMEOUT_MS: u64 = 10_000;

/// A VM whose machine exists and holds its disks: running or paused.
fn is_active(vm: &mut vmm::Vm) -> bool {
    matches!(vm.state(), vmm::VmState::Running | vmm::VmState::Paused)
}

fn vmm_err(e: vmm::VmmError) -> ControlError {
    match e {
        vmm::VmmError::InvalidState { .. } | vmm::VmmError::EjectTimeout { .. } => {
            ControlError::conflict(e.to_string())
        }
        vmm::VmmError::NoSuchDevice(_) => ControlError::not_found(e.to_string()),
        vmm::VmmError::InvalidConfig(_) | vmm::VmmError::Boot(_) => {
            ControlError::invalid(e.to_string())
        }
        _ => ControlError::internal(e.to_string()),
    }
}

/// A start carries no input: a kernel that does not boot or a definition the machine refuses
/// is the VM's stored state (409, "change the VM"), never bad input (400).
fn cannot_start(name: &str, e: vmm::VmmError) -> ControlError {
    match e {
        vmm::VmmError::InvalidConfig(_) | vmm::VmmError::Boot(_) => {
            ControlError::conflict(format!("{name} cannot start: {e}"))
        }
        e => vmm_err(e),
    }
}

fn not_found(name: &str) -> ControlError {
    ControlError::not_found(format!("no VM named {name}"))
}

fn exit_text(r: &vmm::ExitReason) -> String {
    match r {
        vmm::ExitReason::DebugExit(c) => format!("exit code {c}"),
        vmm::ExitReason::Reset(why) => format!("reset ({why})"),
        vmm::ExitReason::Shutdown => "powered off".into(),
        vmm::ExitReason::Stopped => "stopped".into(),
        vmm::ExitReason::Error(e) => format!("error: {e}"),
    }
}

fn dev_view(d: vmm::DeviceStats, id: String) -> VmDeviceStatsView {
    VmDeviceStatsView {
        id,
        read_ops: d.read_ops,
        read_bytes: d.read_bytes,
        write_ops: d.write_ops,
        write_bytes: d.write_bytes,
        flush_ops: d.flush_ops,
        discard_ops: d.discard_ops,
        errors: d.errors,
        mean_latency_ns: d.mean_latency_ns,
    }
}

fn view(slot: &mut Slot) -> VmView {
    let d = &slot.def;
    let (state, last_exit, stats) = match slot.vm.as_mut() {
        None => ("defined".to_string(), slot.note.clone(), None),
        Some(vm) => {
            let state = match vm.state() {
                vmm::VmState::Created => "defined",
                vmm::VmState::Running => "running",
                vmm::VmState::Paused => "paused",
                vmm::VmState::Stopped => "stopped",
            };
            let s = vm.stats();
            // Disk devices carry their virtual disk's name as id.
            let disks = s
                .disks
                .into_iter()
                .map(|ds| {
                    let id = ds.id.clone();
                    dev_view(ds, id)
                })
                .collect();
            let nics = s
                .nics
                .into_iter()
                .map(|n| {
                    let id = n.id.clone();
                    dev_view(n, id)
                })
                .collect();
            (
                state.to_string(),
                vm.exit_reason().as_ref().map(exit_text),
                Some(VmStatsView {
                    // vCPU and device threads (queue workers, I/O lanes) together.
                    cpu_time_ns: s.cpu_time_ns,
                    vcpu_exits: s.vcpu_exits,
                    memory_bytes: s.memory_bytes,
                    disks,
                    nics,
                }),
            )
        }
    };
    VmView {
        name: d.name.clone(),
        description: d.description.clone(),
        state,
        operation: slot.busy.clone(),
        vcpus: d.vcpus,
        memory_mib: d.memory_mib,
        disks: d.disks.clone(),
        nics: d
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| control::VmNicView {
                id: format!("net{i}"),
                tap: n.tap.clone(),
                mac: n.mac.clone(),
                bridge: n.bridge.clone(),
                vlan: n.vlan,
            })
            .collect(),
        kernel: d.kernel.clone(),
        cmdline: d.cmdline.clone(),
        created_unix: d.created_unix,
        last_exit,
        stats,
        node: None,
    }
}

/// Run a blocking VMM call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ControlError::internal(format!("VM task failed: {e}")))?
}

impl Vms {
    /// Load the definitions saved in `data_dir` (a missing file means none). Running VMs
    /// may hold `ram_limit_mib` of memory together (None: the host's RAM less a reserve).
    pub(crate) fn load(data_dir: &Path, ram_limit_mib: Option<u64>) -> crate::Result<Vms> {
        let file = data_dir.join("vms.json");
        let defs: Vec<VmDef> = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                crate::NodeError::Config(format!("{} is not a VM list: {e}", file.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(crate::NodeError::io("read VM definitions", &file, e)),
        };
        let slots = defs
            .into_iter()
            .map(|def| {
                let name = def.name.clone();
                (name, Arc::new(parking_lot::Mutex::new(Slot::new(def))))
            })
            .collect();
        Ok(Vms {
            file,
            slots: parking_lot::Mutex::new(slots),
            save: Default::default(),
            ram: Arc::new(ram::RamBudget::new(ram::RamLimit::new(ram_limit_mib))),
        })
    }

    fn get(&self, name: &str) -> Result<SlotRef, ControlError> {
        self.slots
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    /// Write every definition to a temporary file, sync it, and rename it over `vms.json`.
    fn persist(&self, defs: &[VmDef]) -> Result<(), ControlError> {
        persist_to(&self.file, defs)
    }

    fn defs_with(&self, extra: Option<&VmDef>, without: Option<&str>) -> Vec<VmDef> {
        let slots: Vec<SlotRef> = self.slots.lock().values().cloned().collect();
        let mut defs: Vec<VmDef> = slots
            .iter()
            .map(|s| s.lock().def.clone())
            .filter(|d| Some(d.name.as_str()) != without)
            .collect();
        defs.extend(extra.cloned());
        defs
    }

    /// Every slot but `name`'s, to read their definitions on the blocking pool (a graceful stop
    /// holds its slot) before saving a change of `name`. The caller holds `self.save`.
    fn other_slots(&self, name: &str) -> Vec<SlotRef> {
        self.slots
            .lock()
            .iter()
            .filter(|(k, _)| k.as_str() != name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Name of a VM whose definition uses `vdisk` (running or not).
    pub(crate) fn user_of(&self, vdisk: &str) -> Option<String> {
        let slots: Vec<SlotRef> = self.slots.lock().values().cloned().collect();
        slots.iter().find_map(|s| {
            let s = s.lock();
            s.def
                .disks
                .iter()
                .any(|d| d == vdisk)
                .then(|| s.def.name.clone())
        })
    }

    /// Name of a running or paused VM using `vdisk`.
    pub(crate) fn active_user_of(&self, vdisk: &str) -> Option<String> {
        let slots: Vec<SlotRef> = self.slots.lock().values().cloned().collect();
        slots.iter().find_map(|s| {
            let mut s = s.lock();
            let active = s.vm.as_mut().is_some_and(is_active);
            (active && s.def.disks.iter().any(|d| d == vdisk)).then(|| s.def.name.clone())
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn create(
        &self,
        engine: &Engine,
        name: &str,
        vcpus: u8,
        memory_mib: u64,
        disks: &[String],
        kernel: &str,
        cmdline: Option<&str>,
        nics: &[control::VmNicSpec],
    ) -> Result<VmView, ControlError> {
        let _g = self.save.lock().await;
        if self.slots.lock().contains_key(name) {
            return Err(ControlError::new(
                ErrorCode::AlreadyExists,
                format!("a VM named {name} already exists"),
            ));
        }
        if self.slots.lock().len() >= MAX_VMS {
            return Err(too_many_vms());
        }
        for d in disks {
            engine.vdisk(d).map_err(crate::convert::error)?;
        }
        check_kernel(Path::new(kernel))?;
        let mut def = VmDef {
            name: name.to_string(),
            description: String::new(),
            vcpus,
            memory_mib,
            disks: disks.to_vec(),
            nics: Vec::new(),
            kernel: kernel.to_string(),
            cmdline: cmdline.unwrap_or_default().to_string(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        // MACs left out are derived from the name and creation time, as `vm_update` does.
        def.nics = edit::new_nics(&def, nics)?;
        self.persist(&self.defs_with(Some(&def), None))?;
        let slot = Arc::new(parking_lot::Mutex::new(Slot::new(def)));
        let v = view(&mut slot.lock());
        self.slots.lock().insert(name.to_string(), slot);
        Ok(v)
    }

    /// Views wait for a VM's slot, which a graceful stop holds for up to its timeout, so they
    /// run on the blocking pool rather than stall a runtime worker.
    pub(crate) async fn list(&self) -> Result<Vec<VmView>, ControlError> {
        let slots: Vec<SlotRef> = self.slots.lock().values().cloned().collect();
        blocking(move || Ok(slots.iter().map(|s| view(&mut s.lock())).collect())).await
    }

    pub(crate) async fn get_view(&self, name: &str) -> Result<VmView, ControlError> {
        let slot = self.get(name)?;
        blocking(move || Ok(view(&mut slot.lock()))).await
    }

    /// Build a fresh machine on the VM's engine disks and run it.
    pub(crate) async fn start(&self, engine: &Engine, name: &str) -> Result<VmView, ControlError> {
        let slot = self.get(name)?;
        let def = slot.lock().def.clone();
        let rt = tokio::runtime::Handle::current();
        let all = self.slots.lock().clone();
        let ram = self.ram.clone();
        let mut disks = Vec::with_capacity(def.disks.len());
        for d in &def.disks {
            let handle = engine.open_vdisk(d).map_err(crate::convert::error)?;
            disks.push(vmm::DiskConfig {
                // The guest sees the virtual disk's name as the disk serial (first 20 bytes).
                id: d.clone(),
                backend: Arc::new(vmm::EngineDisk::new(handle, rt.clone())),
                queues: 1,
                queue_size: 256,
            });
        }
        blocking(move || {
            let mut s = slot.lock();
            s.check_idle()?;
            if let Some(vm) = s.vm.as_mut() {
                if is_active(vm) {
                    return Err(ControlError::conflict(format!(
                        "{} is already running",
                        s.def.name
                    )));
                }
            }
            // The disks were opened from the definition read before taking the lock; an edit
            // or attach in between would start a machine the definition no longer describes.
            if s.def != def {
                return Err(ControlError::conflict(format!(
                    "{} was changed while it was being started; start it again",
                    def.name
                )));
            }
            // A stopped VM is rebuilt from its definition (disks may have grown meanwhile).
            s.vm = None;
            let mut cfg = vmm::VmConfig::new(
                &def.name,
                vmm::BootConfig {
                    kernel: PathBuf::from(&def.kernel),
                    initrd: None,
                    cmdline: def.cmdline.clone(),
                },
            );
            cfg.vcpus = def.vcpus;
            cfg.memory_bytes = def.memory_mib << 20;
            cfg.disks = disks;
            cfg.nets = nets_of(&def)?;
            let vm = ram.start(&def.name, def.memory_mib, &all, || {
                let mut vm = vmm::Vm::create(cfg).map_err(|e| cannot_start(&def.name, e))?;
                // The taps exist now (the VMM opened them): join the bridges, bring them up.
                for n in &def.nics {
                    if let Err(e) = vmm::virtio::tap::wire(&n.tap, n.bridge.as_deref(), n.vlan) {
                        vm.delete();
                        return Err(cannot_start(&def.name, e));
                    }
                }
                vm.start().map_err(|e| cannot_start(&def.name, e))?;
                Ok(vm)
            })?;
            s.vm = Some(vm);
            s.note = None;
            Ok(view(&mut s))
        })
        .await
    }

    pub(crate) async fn stop(
        &self,
        name: &str,
        force: bool,
        timeout_ms: Option<u64>,
    ) -> Result<VmView, ControlError> {
        let slot = self.get(name)?;
        let name = name.to_string();
        let timeout = if force {
            Duration::ZERO
        } else {
            Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_STOP_TIMEOUT_MS))
        };
        blocking(move || {
            let mut s = slot.lock();
            let vm =
                s.vm.as_mut()
                    .ok_or_else(|| ControlError::conflict(format!("{name} is not running")))?;
            vm.stop(timeout).map_err(vmm_err)?;
            Ok(view(&mut s))
        })
        .await
    }

    pub(crate) async fn pause(&self, name: &str, pause: bool) -> Result<VmView, ControlError> {
        let slot = self.get(name)?;
        let name = name.to_string();
        blocking(move || {
            let mut s = slot.lock();
            // A paused guest cannot answer a pending detach: refuse until it is settled.
            s.check_idle()?;
            let vm =
                s.vm.as_mut()
                    .ok_or_else(|| ControlError::conflict(format!("{name} is not running")))?;
            if pause { vm.pause() } else { vm.resume() }.map_err(vmm_err)?;
            Ok(view(&mut s))
        })
        .await
    }

    /// Forget a VM that is not running. Its virtual disks are kept.
    pub(crate) async fn delete(&self, name: &str) -> Result<(), ControlError> {
        let _g = self.save.lock().await;
        let slot = self.get(name)?;
        let check = slot.clone();
        let who = name.to_string();
        blocking(move || {
            let mut s = check.lock();
            s.check_idle()?;
            if let Some(vm) = s.vm.as_mut() {
                if is_active(vm) {
                    return Err(ControlError::conflict(format!(
                        "{who} is running; stop it first: cairn vm stop {who}"
                    )));
                }
            }
            // Claimed, so a start cannot slip in between this check and the removal.
            s.busy = Some("being deleted".into());
            Ok(())
        })
        .await?;
        if let Err(e) = self.persist(&self.defs_with(None, Some(name))) {
            slot.lock().busy = None;
            return Err(e);
        }
        let removed = self.slots.lock().remove(name);
        if let Some(slot) = removed {
            if let Some(vm) = slot.lock().vm.take() {
                drop(tokio::task::spawn_blocking(move || vm.delete()));
            }
        }
        Ok(())
    }

    pub(crate) fn console(
        &self,
        name: &str,
        max_bytes: Option<u64>,
    ) -> Result<ConsoleView, ControlError> {
        let slot = self.get(name)?;
        let s = slot.lock();
        let max = usize::try_from(max_bytes.unwrap_or(DEFAULT_CONSOLE_BYTES)).unwrap_or(usize::MAX);
        // The serial console, plus the debug port test guests report on: the newest `max`
        // bytes of each (copying only those, not the whole logs), then of both together.
        let (mut out, mut total) = (Vec::new(), 0u64);
        if let Some(vm) = s.vm.as_ref() {
            for c in [vm.console_since(0, 0, max), vm.debug_since(0, 0, max)]
                .into_iter()
                .flatten()
            {
                out.extend_from_slice(&c.bytes);
                total = total.saturating_add(c.total);
            }
        }
        let tail = &out[out.len().saturating_sub(max)..];
        Ok(ConsoleView {
            name: name.to_string(),
            output: String::from_utf8_lossy(tail).into_owned(),
            total_bytes: total,
        })
    }

    /// A live console handle for the web console. It holds the VM's slot, so it follows the VM
    /// across restarts; after a delete it reads nothing and accepts no input.
    pub(crate) fn console_port(
        &self,
        name: &str,
        can_type: bool,
    ) -> Result<ConsolePort, ControlError> {
        Ok(ConsolePort {
            slot: self.get(name)?,
            can_type,
        })
    }

    /// Stop every VM at once (node shutdown; the engine is shut down next).
    pub(crate) async fn stop_all(&self) {
        let slots: Vec<SlotRef> = self.slots.lock().values().cloned().collect();
        let _ = tokio::task::spawn_blocking(move || {
            for s in slots {
                if let Some(vm) = s.lock().vm.take() {
                    vm.delete();
                }
            }
        })
        .await;
    }
}

/// See [`Vms::console_port`].
pub(crate) struct ConsolePort {
    slot: SlotRef,
    can_type: bool,
}

impl control::ConsolePort for ConsolePort {
    fn output(&self) -> Result<Vec<Vec<u8>>, ControlError> {
        let s = self.slot.lock();
        Ok(match s.vm.as_ref() {
            Some(vm) => vec![vm.console_output(), vm.debug_output()],
            None => vec![Vec::new(), Vec::new()],
        })
    }

    fn input(&self, bytes: &[u8]) -> Result<usize, ControlError> {
        if !self.can_type {
            return Err(ControlError::new(
                ErrorCode::Forbidden,
                "this role may watch the console but not type",
            ));
        }
        Ok(self
            .slot
            .lock()
            .vm
            .as_ref()
            .map_or(0, |vm| vm.console_input(bytes)))
    }

    fn can_type(&self) -> bool {
        self.can_type
    }

    fn watch(&self) -> Option<Box<dyn control::ConsoleWatch>> {
        Some(Box::new(watch::OutputWatch::new(self.slot.clone())))
    }

    fn output_since(
        &self,
        seen: &[ConsolePlace],
        max_bytes: usize,
    ) -> Option<Result<Vec<ConsoleChunk>, ControlError>> {
        let at = |i: usize| seen.get(i).copied().unwrap_or_default();
        let s = self.slot.lock();
        let chunk = |i: usize, c: Option<vmm::LogChunk>| match c {
            Some(c) => ConsoleChunk {
                bytes: c.bytes,
                place: ConsolePlace {
                    log_id: c.log_id,
                    seen: c.total,
                },
            },
            // No machine (never started): nothing new, and the place stays.
            None => ConsoleChunk {
                bytes: Vec::new(),
                place: at(i),
            },
        };
        let vm = s.vm.as_ref();
        let (p0, p1) = (at(0), at(1));
        Some(Ok(vec![
            chunk(
                0,
                vm.and_then(|v| v.console_since(p0.log_id, p0.seen, max_bytes)),
            ),
            chunk(
                1,
                vm.and_then(|v| v.debug_since(p1.log_id, p1.seen, max_bytes)),
            ),
        ]))
    }
}

/// Write `defs` to a temporary file next to `file`, sync it, and rename it over `file`.
/// The node's VM count bound reached: a request the node's state refuses (409), not bad input.
fn too_many_vms() -> ControlError {
    ControlError::conflict(format!(
        "this node already defines {MAX_VMS} VMs (its limit); delete one first"
    ))
}

fn persist_to(file: &Path, defs: &[VmDef]) -> Result<(), ControlError> {
    serde_json::to_vec_pretty(defs)
        .map_err(std::io::Error::other)
        .and_then(|bytes| crate::statefile::replace(file, &bytes))
        .map_err(|e| {
            ControlError::new(ErrorCode::Io, format!("could not save VM definitions: {e}"))
        })
}

/// Save `others`' definitions (locked one at a time, never the caller's own slot) plus `def`.
fn persist_with(file: &Path, others: &[SlotRef], def: &VmDef) -> Result<(), ControlError> {
    let mut defs: Vec<VmDef> = others.iter().map(|s| s.lock().def.clone()).collect();
    defs.push(def.clone());
    persist_to(file, &defs)
}

/// The VMM's NICs for a definition, `net0`, `net1`, ... in order.
fn nets_of(def: &VmDef) -> Result<Vec<vmm::NetConfig>, ControlError> {
    def.nics
        .iter()
        .enumerate()
        .map(|(i, n)| {
            Ok(vmm::NetConfig {
                id: format!("net{i}"),
                tap: n.tap.clone(),
                mac: control::parse_mac(&n.mac)?,
            })
        })
        .collect()
}

fn check_kernel(path: &Path) -> Result<(), ControlError> {
    let md = std::fs::metadata(path)
        .map_err(|e| ControlError::invalid(format!("kernel {}: {e}", path.display())))?;
    if !md.is_file() {
        return Err(ControlError::invalid(format!(
            "kernel {} is not a regular file",
            path.display()
        )));
    }
    if md.len() == 0 || md.len() > MAX_KERNEL_BYTES {
        return Err(ControlError::invalid(format!(
            "kernel {} is {} bytes; expected 1 byte to {} MiB",
            path.display(),
            md.len(),
            MAX_KERNEL_BYTES >> 20
        )));
    }
    Ok(())
}
