//! NBD exports of virtual disks and snapshots, for backup and import tools (never the VM data
//! path). Owns the list of running exports, one NBD server (one port) each; binds 127.0.0.1
//! unless the request names another address. Adapts an engine `VdiskHandle` to `nbd::NbdExport`.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use control::{ControlError, ErrorCode, NbdExportView};
use engine::{Engine, EngineError, ErrorKind, VdiskHandle};
use nbd::{BoxFuture, NbdExport, NbdHandle, NbdServer};
use parking_lot::Mutex;

use crate::convert;

/// Bound on concurrently running exports.
pub(crate) const MAX_EXPORTS: usize = 64;

/// An engine disk or snapshot as an NBD export.
pub struct VdiskExport {
    handle: VdiskHandle,
    read_only: bool,
    /// The node's isolation-lease gate (`crate::lease`), passed before every request.
    gate: Option<crate::lease::Gate>,
}

impl VdiskExport {
    pub fn new(handle: VdiskHandle, read_only: bool) -> Self {
        let read_only = read_only || handle.read_only();
        VdiskExport {
            handle,
            read_only,
            gate: None,
        }
    }

    /// Requests wait while `gate` is closed (and fail with EIO past its wait limit).
    pub(crate) fn gated(mut self, gate: crate::lease::Gate) -> Self {
        self.gate = Some(gate);
        self
    }

    async fn pass(&self) -> io::Result<()> {
        match &self.gate {
            Some(g) => g.pass().await,
            None => Ok(()),
        }
    }
}

/// A trim or write-zeroes range (NBD bounds them only by the export's size) cut into pieces
/// the engine takes in one call.
fn engine_pieces(offset: u64, len: u64) -> impl Iterator<Item = (u64, u64)> {
    let step = engine::MAX_IO_BYTES;
    (0..len.div_ceil(step)).map(move |i| (offset + i * step, (len - i * step).min(step)))
}

fn io_error(e: EngineError) -> io::Error {
    let errno = match e.kind() {
        ErrorKind::NoSpace => libc::ENOSPC,
        ErrorKind::ReadOnly => libc::EPERM,
        // The NBD layer has checked the request's range and size against the export already,
        // so an "invalid argument" from below is not the client's: it is a peer refusing the
        // change (a fenced write after a takeover) or a fault of the storage. EIO, so the
        // client treats it as the failed write it is.
        _ => libc::EIO,
    };
    tracing::warn!(error = %e, "nbd export: I/O failed");
    io::Error::from_raw_os_error(errno)
}

impl NbdExport for VdiskExport {
    fn size_bytes(&self) -> u64 {
        self.handle.size_bytes()
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            self.pass().await?;
            self.handle.read(offset, buf).await.map_err(io_error)
        })
    }

    /// Replies go out from the engine's verified read buffers (no copy into one of ours).
    fn read_owned(&self, offset: u64, len: u32) -> BoxFuture<'_, io::Result<Vec<nbd::Bytes>>> {
        Box::pin(async move {
            self.pass().await?;
            let data = self
                .handle
                .read_owned(offset, u64::from(len))
                .await
                .map_err(io_error)?;
            Ok(data
                .into_parts()
                .into_iter()
                .map(nbd::Bytes::from_owner)
                .collect())
        })
    }

    fn write<'a>(&'a self, offset: u64, data: &'a [u8]) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            self.pass().await?;
            self.handle.write(offset, data).await.map_err(io_error)
        })
    }

    fn flush(&self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            self.pass().await?;
            self.handle.flush().await.map_err(io_error)
        })
    }

    fn trim(&self, offset: u64, len: u64) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            self.pass().await?;
            for (o, l) in engine_pieces(offset, len) {
                self.handle.discard(o, l).await.map_err(io_error)?;
            }
            Ok(())
        })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        _may_trim: bool,
    ) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            self.pass().await?;
            for (o, l) in engine_pieces(offset, len) {
                self.handle.write_zeroes(o, l).await.map_err(io_error)?;
            }
            Ok(())
        })
    }
}

struct Running {
    view: NbdExportView,
    server: NbdHandle,
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

    /// A running export of `vdisk`: of snapshot `snapshot` if given, else of the disk or any of
    /// its snapshots.
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

    // The request's four fields plus the node's context (engine, bind address, lease gate).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start(
        &self,
        engine: &Engine,
        vdisk: &str,
        snapshot: Option<&str>,
        listen: Option<&str>,
        read_only: bool,
        bind_ip: IpAddr,
        gate: crate::lease::Gate,
    ) -> Result<NbdExportView, ControlError> {
        if self.running.lock().len() >= MAX_EXPORTS {
            return Err(ControlError::new(
                ErrorCode::Busy,
                format!("at most {MAX_EXPORTS} NBD exports can run at once"),
            ));
        }
        let handle = match snapshot {
            Some(s) => engine.open_snapshot(vdisk, s),
            None => engine.open_vdisk(vdisk),
        }
        .map_err(convert::error)?;
        let addr: SocketAddr = match listen {
            Some(l) => l.parse().map_err(|_| {
                ControlError::invalid(format!("listen address {l:?} is not ip:port"))
            })?,
            None => SocketAddr::new(bind_ip, 0),
        };
        let server = NbdServer::bind(addr).await.map_err(|e| {
            ControlError::new(ErrorCode::Conflict, format!("NBD export on {addr}: {e}"))
        })?;
        let export_name = match snapshot {
            Some(s) => format!("{vdisk}@{s}"),
            None => vdisk.to_string(),
        };
        let export = Arc::new(VdiskExport::new(handle, read_only).gated(gate));
        let ro = export.read_only();
        server
            .add_export(&export_name, export)
            .map_err(|e| ControlError::internal(format!("NBD export: {e}")))?;
        let server = server
            .spawn()
            .map_err(|e| ControlError::internal(format!("NBD export: {e}")))?;
        let id = {
            let mut n = self.next_id.lock();
            *n += 1;
            *n
        };
        let view = NbdExportView {
            id,
            vdisk: vdisk.to_string(),
            snapshot: snapshot.map(str::to_string),
            listen: server.local_addr().to_string(),
            export_name,
            read_only: ro,
        };
        tracing::info!(id, vdisk, listen = %view.listen, "NBD export started");
        self.running.lock().insert(
            id,
            Running {
                view: view.clone(),
                server,
            },
        );
        Ok(view)
    }

    pub(crate) async fn stop(&self, id: u64) -> Result<(), ControlError> {
        let r = self
            .running
            .lock()
            .remove(&id)
            .ok_or_else(|| ControlError::not_found(format!("no NBD export with id {id}")))?;
        r.server.stop().await;
        tracing::info!(id, "NBD export stopped");
        Ok(())
    }

    pub(crate) async fn stop_all(&self) {
        let all: Vec<Running> = std::mem::take(&mut *self.running.lock())
            .into_values()
            .collect();
        for r in all {
            r.server.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fenced_write_reaches_the_client_as_eio_not_einval() {
        // What the engine returns when the peer holding the other replica refuses a write
        // because the disk was taken over (mirror's `Fenced`, a non-device refusal).
        let fenced = EngineError::InvalidArgument(
            "chunk 3: invalid argument: node 2: fenced: virtual disk 7 epoch 4 < 18446744073709551615"
                .into(),
        );
        assert_eq!(io_error(fenced).raw_os_error(), Some(libc::EIO));
        let full = EngineError::NoSpace("pool".into());
        assert_eq!(io_error(full).raw_os_error(), Some(libc::ENOSPC));
        let ro = EngineError::ReadOnly("snapshot".into());
        assert_eq!(io_error(ro).raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn long_trims_are_cut_into_engine_sized_pieces() {
        let step = engine::MAX_IO_BYTES;
        let p: Vec<_> = engine_pieces(4096, 2 * step + 8192).collect();
        assert_eq!(
            p,
            vec![(4096, step), (4096 + step, step), (4096 + 2 * step, 8192)]
        );
        assert_eq!(engine_pieces(0, 0).count(), 0);
        assert_eq!(engine_pieces(0, step).collect::<Vec<_>>(), vec![(0, step)]);
    }
}
