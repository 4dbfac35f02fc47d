//! NBD exports of virtual disks and snapshots, for backup and import tools (never the VM data
//! path). Owns the list of running exports; binds 127.0.0.1 unless told otherwise.

use std::collections::BTreeMap;
use std::net::IpAddr;

use control::{ControlError, ErrorCode, NbdExportView};
use engine::Engine;
use parking_lot::Mutex;

/// Bound on concurrently running exports.
pub(crate) const MAX_EXPORTS: usize = 64;

struct Running {
    view: NbdExportView,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Default)]
pub(crate) struct Exports {
    running: Mutex<BTreeMap<u64, Running>>,
    next_id: Mutex<u64>,
}

impl Exports {
    pub(crate) fn list(&self) -> Vec<NbdExportView> {
        self.running
            .lock()
            .values()
            .map(|r| r.view.clone())
            .collect()
    }

    /// The export serving `vdisk` (and `snapshot`, or any snapshot of it when None... only the
    /// live disk when None).
    pub(crate) fn find(&self, vdisk: &str, snapshot: Option<&str>) -> Option<NbdExportView> {
        self.running
            .lock()
            .values()
            .find(|r| {
                r.view.vdisk == vdisk
                    && (snapshot.is_none() || r.view.snapshot.as_deref() == snapshot)
            })
            .map(|r| r.view.clone())
    }

    pub(crate) async fn start(
        &self,
        engine: &Engine,
        vdisk: &str,
        snapshot: Option<&str>,
        listen: Option<&str>,
        read_only: bool,
        bind_ip: IpAddr,
    ) -> Result<NbdExportView, ControlError> {
        let _ = (
            engine,
            vdisk,
            snapshot,
            listen,
            read_only,
            bind_ip,
            &self.next_id,
        );
        if self.running.lock().len() >= MAX_EXPORTS {
            return Err(ControlError::new(
                ErrorCode::Busy,
                format!("at most {MAX_EXPORTS} NBD exports can run at once"),
            ));
        }
        Err(ControlError::new(
            ErrorCode::Unavailable,
            "this build has no NBD server yet",
        ))
    }

    pub(crate) fn stop(&self, id: u64) -> Result<(), ControlError> {
        let mut r = self
            .running
            .lock()
            .remove(&id)
            .ok_or_else(|| ControlError::not_found(format!("no NBD export with id {id}")))?;
        if let Some(tx) = r.stop.take() {
            let _ = tx.send(());
        }
        Ok(())
    }

    pub(crate) fn stop_all(&self) {
        let ids: Vec<u64> = self.running.lock().keys().copied().collect();
        for id in ids {
            let _ = self.stop(id);
        }
    }
}
