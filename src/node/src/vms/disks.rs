//! Attaching and detaching a VM's disks. A detach from a running guest waits for the guest to
//! release the disk (up to its timeout) without holding the VM's slot: the VM is marked busy
//! instead, so views, the console and stop go on while other changes of that VM are refused
//! with a conflict. Never saves a definition that the VM does not match.

use std::sync::Arc;
use std::time::{Duration, Instant};

use control::ControlError;
use engine::Engine;

use super::{blocking, is_active, view, vmm_err, SlotRef, Vms, DETACH_TIMEOUT_MS};

/// How often a detach waiting for the guest looks whether the VM stopped meanwhile.
const DETACH_POLL: Duration = Duration::from_millis(50);

/// Clears a slot's busy mark when the change that set it ends, however it ends (an error, or
/// the request dropped halfway). Clearing runs on the blocking pool: a graceful stop may hold
/// the slot.
struct BusyMark(Option<SlotRef>);

impl BusyMark {
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for BusyMark {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            let clear = move || slot.lock().busy = None;
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(clear)),
                Err(_) => clear(),
            }
        }
    }
}

impl Vms {
    /// Attach `vdisk` as one more virtio-blk device: hot-added when the VM runs, at its next
    /// start otherwise. The definition is saved only when the device could be added, so a
    /// refused attach leaves both the running VM and the saved file as they were.
    pub(crate) async fn attach_disk(
        &self,
        engine: &Engine,
        name: &str,
        vdisk: &str,
    ) -> Result<control::VmView, ControlError> {
        let _g = self.save.lock().await;
        let slot = self.get(name)?;
        if let Some(other) = self.user_of(vdisk) {
            return Err(ControlError::conflict(if other == name {
                format!("{vdisk} is already attached to {name}")
            } else {
                format!("{vdisk} is already a disk of VM {other}")
            }));
        }
        let handle = engine.open_vdisk(vdisk).map_err(crate::convert::error)?;
        let disk = vmm::DiskConfig {
            id: vdisk.to_string(),
            backend: Arc::new(vmm::EngineDisk::new(
                handle,
                tokio::runtime::Handle::current(),
            )),
            queues: 1,
            queue_size: 256,
        };
        let others = self.other_slots(name);
        let (live, vd, file) = (slot.clone(), vdisk.to_string(), self.file.clone());
        blocking(move || {
            // Read the others' definitions before taking this slot (one lock at a time).
            let mut defs: Vec<super::VmDef> = others.iter().map(|o| o.lock().def.clone()).collect();
            let mut s = live.lock();
            s.check_idle()?;
            if s.def.disks.len() >= control::MAX_VM_DISKS {
                return Err(ControlError::conflict(format!(
                    "{} already has {} disks, the most a VM can have",
                    s.def.name,
                    control::MAX_VM_DISKS
                )));
            }
            let mut new_def = s.def.clone();
            new_def.disks.push(vd);
            if let Some(vm) = s.vm.as_mut() {
                if is_active(vm) {
                    vm.attach_disk(disk).map_err(vmm_err)?;
                }
            }
            defs.push(new_def.clone());
            super::persist_to(&file, &defs)?;
            s.def = new_def;
            Ok(view(&mut s))
        })
        .await
    }

    /// Detach `vdisk`: a running guest is asked to release it and has `timeout_ms` (default
    /// [`DETACH_TIMEOUT_MS`]) to answer, or it is removed anyway with `force`; a stopped VM just
    /// loses it from its definition. The definition is saved only once the disk is gone from
    /// the VM, so a refused or timed-out detach leaves both as they were. The wait holds no
    /// lock: the VM is marked busy (see the module doc).
    pub(crate) async fn detach_disk(
        &self,
        name: &str,
        vdisk: &str,
        force: bool,
        timeout_ms: Option<u64>,
    ) -> Result<control::VmView, ControlError> {
        let slot = self.get(name)?;
        let timeout = Duration::from_millis(timeout_ms.unwrap_or(DETACH_TIMEOUT_MS));
        // 1: claim the VM and ask a running guest to let go (short lock).
        let (live, id) = (slot.clone(), vdisk.to_string());
        let wait = blocking(move || {
            let mut s = live.lock();
            s.check_idle()?;
            if !s.def.disks.contains(&id) {
                return Err(ControlError::not_found(format!(
                    "{id} is not a disk of {}",
                    s.def.name
                )));
            }
            let wait = match s.vm.as_mut() {
                Some(vm) => {
                    if is_active(vm) {
                        Some(vm.begin_detach(&id, force).map_err(vmm_err)?)
                    } else {
                        None
                    }
                }
                None => None,
            };
            s.busy = Some(format!("detaching disk {id}"));
            Ok(wait)
        })
        .await?;
        let mark = BusyMark(Some(slot.clone()));
        // 2: wait for the guest without the lock, then take the disk off the VM. A stop in
        // between ends the wait early (a stopped guest will not answer).
        let live = slot.clone();
        blocking(move || {
            let Some(mut wait) = wait else {
                return Ok(());
            };
            let t0 = Instant::now();
            loop {
                let left = timeout.saturating_sub(t0.elapsed());
                if wait.wait(left.min(DETACH_POLL)) || left.is_zero() {
                    break;
                }
                let stopped = live
                    .try_lock()
                    .is_some_and(|mut s| !s.vm.as_mut().is_some_and(is_active));
                if stopped {
                    break;
                }
            }
            let mut s = live.lock();
            match s.vm.as_mut() {
                Some(vm) => vm.finish_detach(wait, force).map_err(vmm_err),
                None => Ok(()),
            }
        })
        .await?;
        // 3: save the definition without the disk, then make it current and release the VM.
        let _g = self.save.lock().await;
        let others = self.other_slots(name);
        let (live, id, file) = (slot.clone(), vdisk.to_string(), self.file.clone());
        let v = blocking(move || {
            let mut new_def = live.lock().def.clone();
            new_def.disks.retain(|d| *d != id);
            // Busy: nothing else changes this definition between the read above and here.
            super::persist_with(&file, &others, &new_def)?;
            let mut s = live.lock();
            s.def = new_def;
            s.busy = None;
            Ok(view(&mut s))
        })
        .await?;
        mark.done();
        Ok(v)
    }
}
