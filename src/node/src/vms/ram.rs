//! RAM admission for VM starts: the memory of the VMs running on this node may not exceed what
//! the node gives VMs — its RAM (`MemTotal`) minus a reserve for the host (the engine, the
//! API, the kernel's page cache): 1/8 of the RAM, at least 512 MiB. Guest memory is reserved
//! in full by the VMM, so overcommitting it would end in the kernel's OOM killer choosing a
//! guest or the node itself. A start that would not fit is a conflict (409) naming what runs.
//!
//! What it must never do: block on a VM's lock (a graceful stop holds one for up to its
//! timeout) — a VM whose lock is busy is counted with the memory it last started with, so a
//! doubt refuses a start rather than overcommits; nor let two starts pass the check together
//! (starts check and build their machine one at a time).

use std::collections::BTreeMap;

use control::ControlError;

use super::{is_active, SlotRef};

/// Smallest RAM reserve kept for the host.
pub const MIN_HOST_RESERVE_MIB: u64 = 512;

/// How much memory running VMs may hold together, and where the figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RamLimit {
    pub limit_mib: u64,
    /// The node's RAM and the host's reserve; None when the limit was configured.
    pub host: Option<(u64, u64)>,
}

impl RamLimit {
    /// A configured limit (`NodeConfig::vm_ram_limit_mib`), else the host's RAM minus the
    /// reserve. Without a readable /proc/meminfo nothing is limited (and a warning says so).
    pub(crate) fn new(configured_mib: Option<u64>) -> RamLimit {
        if let Some(limit_mib) = configured_mib {
            return RamLimit {
                limit_mib,
                host: None,
            };
        }
        match std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| mem_total_mib(&t))
        {
            Some(total) => {
                let reserve = (total / 8).max(MIN_HOST_RESERVE_MIB);
                RamLimit {
                    limit_mib: total.saturating_sub(reserve),
                    host: Some((total, reserve)),
                }
            }
            None => {
                tracing::warn!("/proc/meminfo has no MemTotal: VM starts are not limited by RAM");
                RamLimit {
                    limit_mib: u64::MAX,
                    host: None,
                }
            }
        }
    }

    fn describe(&self) -> String {
        match self.host {
            Some((total, reserve)) => format!(
                "{} MiB this node gives VMs ({total} MiB of RAM less {reserve} MiB kept for the host)",
                self.limit_mib
            ),
            None => format!("{} MiB this node gives VMs", self.limit_mib),
        }
    }
}

/// `MemTotal:  24684400 kB` -> MiB.
fn mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// The memory of running VMs, by name, and the lock that makes starts take turns.
pub(crate) struct RamBudget {
    limit: RamLimit,
    running: parking_lot::Mutex<BTreeMap<String, u64>>,
    starting: parking_lot::Mutex<()>,
}

impl RamBudget {
    pub(crate) fn new(limit: RamLimit) -> RamBudget {
        RamBudget {
            limit,
            running: Default::default(),
            starting: Default::default(),
        }
    }

    /// Run `start` (which builds and starts `name`'s machine) if `memory_mib` fits beside the
    /// VMs that run now; `slots` are all the node's VMs. The caller holds `name`'s lock.
    pub(crate) fn start<T>(
        &self,
        name: &str,
        memory_mib: u64,
        slots: &BTreeMap<String, SlotRef>,
        start: impl FnOnce() -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        let _turn = self.starting.lock();
        let used: u64 = {
            let mut running = self.running.lock();
            running.retain(|other, mib| {
                if other == name {
                    return false;
                }
                let Some(slot) = slots.get(other) else {
                    return false; // deleted or renamed, so not running
                };
                match slot.try_lock() {
                    Some(mut s) => {
                        *mib = s.def.memory_mib;
                        s.vm.as_mut().is_some_and(is_active)
                    }
                    None => true,
                }
            });
            running.values().sum()
        };
        if used.saturating_add(memory_mib) > self.limit.limit_mib {
            let running = self.running.lock();
            let names: Vec<String> = running
                .iter()
                .take(8)
                .map(|(n, m)| format!("{n} ({m} MiB)"))
                .collect();
            let more = if running.len() > 8 { ", ..." } else { "" };
            return Err(ControlError::conflict(format!(
                "cannot start {name}: it needs {memory_mib} MiB, and running VMs hold {used} MiB \
                 of the {}{}; stop a VM or give {name} less memory",
                self.limit.describe(),
                if names.is_empty() {
                    String::new()
                } else {
                    format!(" (running: {}{more})", names.join(", "))
                },
            )));
        }
        let out = start()?;
        self.running.lock().insert(name.to_string(), memory_mib);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_reserve() {
        let t = "MemTotal:       24684400 kB\nMemFree:        1 kB\n";
        assert_eq!(mem_total_mib(t), Some(24105));
        assert_eq!(mem_total_mib("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_mib("MemTotal: lots kB\n"), None);
        let l = RamLimit::new(Some(100));
        assert_eq!(l.limit_mib, 100);
        assert!(l.describe().starts_with("100 MiB"));
    }

    #[test]
    fn a_start_that_does_not_fit_is_refused_and_runs_nothing() {
        let b = RamBudget::new(RamLimit::new(Some(100)));
        let slots = BTreeMap::new();
        let mut ran = false;
        let e = b
            .start("big", 101, &slots, || {
                ran = true;
                Ok(())
            })
            .unwrap_err();
        assert_eq!(e.code, control::ErrorCode::Conflict);
        assert!(e.message.contains("needs 101 MiB"), "{}", e.message);
        assert!(!ran);
        b.start("fits", 100, &slots, || Ok(())).unwrap();
    }
}
