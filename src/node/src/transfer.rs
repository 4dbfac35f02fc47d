//! Raw image import and export between host files and virtual disks.
//!
//! Import creates the disk sized to the image (rounded up to 4 KiB) and copies it in with large
//! I/O, skipping all-zero blocks so a thin disk stays thin; if anything fails midway the
//! half-imported disk is deleted. Export writes a new sparse raw file (never overwrites one) and
//! removes it again on failure. Neither ever writes to a pool disk file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use control::{ControlError, ErrorCode, TransferView, MAX_VDISK_SIZE_BYTES};
use engine::{Engine, VdiskHandle};

use crate::convert;

/// Bytes moved per step: large enough for sequential speed, small enough to bound memory.
const STEP_BYTES: usize = 4 << 20;
/// Largest single engine write (a run of non-zero blocks is split into pieces this big).
const PIECE_BYTES: usize = 1 << 20;
const BLOCK: usize = 4096;

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ControlError {
    let code = match e.kind() {
        std::io::ErrorKind::NotFound => ErrorCode::NotFound,
        std::io::ErrorKind::AlreadyExists => ErrorCode::AlreadyExists,
        std::io::ErrorKind::PermissionDenied => ErrorCode::Forbidden,
        _ => ErrorCode::Io,
    };
    ControlError::new(code, format!("{what} {}: {e}", path.display()))
}

/// Refuse container formats that are not raw images, with the conversion to use instead.
fn check_not_container(head: &[u8], path: &Path) -> Result<(), ControlError> {
    let kind = if head.starts_with(b"QFI\xfb") {
        Some("a qcow2 image")
    } else if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        Some("a VMDK image")
    } else if head.starts_with(b"vhdxfile") {
        Some("a VHDX image")
    } else if head.starts_with(b"<<< ")
        && head.len() >= 0x48
        && head[0x40..0x44] == [0x7f, 0x10, 0xda, 0xbe]
    {
        Some("a VDI image")
    } else if head.starts_with(b"conectix") {
        Some("a VHD image")
    } else {
        None
    };
    match kind {
        Some(kind) => Err(ControlError::invalid(format!(
            "{} is {kind}, not a raw disk image; convert it first: qemu-img convert -O raw {} OUT.raw",
            path.display(),
            path.display()
        ))),
        None => Ok(()),
    }
}

fn is_zero(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// Runs `[start, end)` (byte offsets within `buf`) of blocks that are not all zero.
fn nonzero_runs(buf: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start: Option<usize> = None;
    for (i, block) in buf.chunks(BLOCK).enumerate() {
        let off = i * BLOCK;
        match (is_zero(block), start) {
            (false, None) => start = Some(off),
            (true, Some(s)) => {
                runs.push((s, off));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push((s, buf.len()));
    }
    runs
}

/// Read up to `len` bytes at `offset`, zero-padding past end of file.
fn read_step(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf)
}

fn spawn_read(
    file: std::sync::Arc<File>,
    offset: u64,
    len: usize,
) -> tokio::task::JoinHandle<std::io::Result<Vec<u8>>> {
    tokio::task::spawn_blocking(move || read_step(&file, offset, len))
}

async fn join<T>(
    h: tokio::task::JoinHandle<std::io::Result<T>>,
    what: &str,
    path: &Path,
) -> Result<T, ControlError> {
    h.await
        .map_err(|e| ControlError::internal(format!("{what} task failed: {e}")))?
        .map_err(|e| io_err(what, path, e))
}

/// Check an image before anything is created: a non-empty regular file of a raw image that is
/// not one of the pool's own disks. Returns (file length, disk size).
pub(crate) fn check_import_source(
    file: &Path,
    pool_paths: &[PathBuf],
) -> Result<(u64, u64), ControlError> {
    let meta = std::fs::metadata(file).map_err(|e| io_err("image", file, e))?;
    if !meta.is_file() {
        // A well-formed path naming a directory or device: the host's state refuses it (as a
        // directory given as a pool disk), not the request's shape.
        return Err(ControlError::conflict(format!(
            "{} is not a regular file",
            file.display()
        )));
    }
    let len = meta.len();
    if len == 0 {
        return Err(ControlError::invalid(format!(
            "{} is empty",
            file.display()
        )));
    }
    let size = len.div_ceil(BLOCK as u64) * BLOCK as u64;
    if size > MAX_VDISK_SIZE_BYTES {
        return Err(ControlError::invalid(format!(
            "{} is too big to import ({} bytes)",
            file.display(),
            len
        )));
    }
    let canon = std::fs::canonicalize(file).map_err(|e| io_err("image", file, e))?;
    if pool_paths.iter().any(|p| p == &canon) {
        return Err(ControlError::invalid(format!(
            "{} is a disk of this pool, not a disk image",
            file.display()
        )));
    }
    let f = File::open(file).map_err(|e| io_err("open image", file, e))?;
    let head = read_step(&f, 0, 512).map_err(|e| io_err("read image", file, e))?;
    check_not_container(&head, file)?;
    Ok((len, size))
}

/// Imports in progress are marked by a file `DATA/importing/NAME`, so that a disk whose import
/// was cut short by a crash is deleted on the next start (`clean_interrupted_imports`); deletes
/// in progress likewise under `DATA/deleting` (`ClusterHost::reconcile_vdisks`). Durable when
/// it returns.
pub(crate) fn mark(marks: &Path, name: &str) -> Result<PathBuf, ControlError> {
    std::fs::create_dir_all(marks).map_err(|e| io_err("create", marks, e))?;
    let m = marks.join(name);
    let f = File::create(&m).map_err(|e| io_err("create", &m, e))?;
    f.sync_all().map_err(|e| io_err("sync", &m, e))?;
    File::open(marks)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("sync", marks, e))?;
    Ok(m)
}

/// Delete the disks of imports a crash interrupted (see `mark`).
pub(crate) async fn clean_interrupted_imports(engine: &Engine, marks: &Path) {
    for m in crate::disks::scan(marks) {
        let Some(name) = m.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        match engine.delete_vdisk(&name).await {
            Ok(()) => tracing::warn!(vdisk = %name, "deleted a disk whose import was interrupted"),
            Err(e) if e.kind() == engine::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(vdisk = %name, error = %e, "could not delete an interrupted import");
                continue;
            }
        }
        let _ = std::fs::remove_file(&m);
    }
}

pub(crate) async fn import(
    engine: &Engine,
    name: &str,
    file: &Path,
    pool_paths: &[PathBuf],
    marks: &Path,
) -> Result<TransferView, ControlError> {
    let started = Instant::now();
    let (len, size) = check_import_source(file, pool_paths)?;
    let src = std::sync::Arc::new(File::open(file).map_err(|e| io_err("open image", file, e))?);
    if engine.vdisk(name).is_ok() {
        return Err(ControlError::new(
            ErrorCode::AlreadyExists,
            format!("virtual disk {name} already exists"),
        ));
    }
    let marker = mark(marks, name)?;
    if let Err(e) = engine.create_vdisk(name, size).await {
        let _ = std::fs::remove_file(&marker);
        return Err(convert::error(e));
    }
    match copy_in(engine, name, &src, file, size).await {
        Ok(written_bytes) => {
            let _ = std::fs::remove_file(&marker);
            Ok(TransferView {
                vdisk: name.to_string(),
                file: file.display().to_string(),
                size_bytes: len,
                written_bytes,
                elapsed_ms: started.elapsed().as_millis() as u64,
            })
        }
        Err(e) => {
            // Leave nothing half-imported behind (if this fails too, the marker stays and the
            // next start deletes the disk).
            match engine.delete_vdisk(name).await {
                Ok(()) => {
                    let _ = std::fs::remove_file(&marker);
                }
                Err(del) => {
                    tracing::error!(vdisk = name, error = %del, "could not delete half-imported disk")
                }
            }
            Err(e)
        }
    }
}

async fn copy_in(
    engine: &Engine,
    name: &str,
    src: &std::sync::Arc<File>,
    path: &Path,
    size: u64,
) -> Result<u64, ControlError> {
    let handle = engine.open_vdisk(name).map_err(convert::error)?;
    let step_len = |off: u64| (size - off).min(STEP_BYTES as u64) as usize;
    let mut written = 0u64;
    let mut offset = 0u64;
    let mut next = Some(spawn_read(src.clone(), 0, step_len(0)));
    while let Some(pending) = next.take() {
        let buf = join(pending, "read image", path).await?;
        let after = offset + buf.len() as u64;
        if after < size {
            // Read the next step while this one is written.
            next = Some(spawn_read(src.clone(), after, step_len(after)));
        }
        let mut writes = Vec::new();
        for (s, e) in nonzero_runs(&buf) {
            let mut p = s;
            while p < e {
                let q = (p + PIECE_BYTES).min(e);
                writes.push(handle.write(offset + p as u64, &buf[p..q]));
                written += (q - p) as u64;
                p = q;
            }
        }
        futures::future::try_join_all(writes)
            .await
            .map_err(convert::error)?;
        offset = after;
    }
    handle.flush().await.map_err(convert::error)?;
    Ok(written)
}

pub(crate) async fn export(
    handle: VdiskHandle,
    name: &str,
    file: &Path,
    disks_dir: &Path,
    gate: &crate::lease::Gate,
) -> Result<TransferView, ControlError> {
    let started = Instant::now();
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("/"));
    let parent =
        std::fs::canonicalize(parent).map_err(|e| io_err("export directory", parent, e))?;
    if let Ok(dd) = std::fs::canonicalize(disks_dir) {
        if parent.starts_with(&dd) {
            return Err(ControlError::invalid(format!(
                "{} is inside the pool's disk directory; a file there would join the pool",
                file.display()
            )));
        }
    }
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .map_err(|e| io_err("create export file", file, e))?;
    let size = handle.size_bytes();
    let result = copy_out(&handle, out, file, size, gate).await;
    match result {
        Ok(written_bytes) => Ok(TransferView {
            vdisk: name.to_string(),
            file: file.display().to_string(),
            size_bytes: size,
            written_bytes,
            elapsed_ms: started.elapsed().as_millis() as u64,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(file);
            Err(e)
        }
    }
}

async fn copy_out(
    handle: &VdiskHandle,
    out: File,
    path: &Path,
    size: u64,
    gate: &crate::lease::Gate,
) -> Result<u64, ControlError> {
    out.set_len(size)
        .map_err(|e| io_err("size export file", path, e))?;
    let out = std::sync::Arc::new(out);
    let mut written = 0u64;
    let mut offset = 0u64;
    let mut pending: Option<tokio::task::JoinHandle<std::io::Result<()>>> = None;
    while offset < size {
        let len = (size - offset).min(STEP_BYTES as u64) as usize;
        let mut buf = vec![0u8; len];
        // Never a possibly stale copy: this node's isolation lease must be valid.
        gate.pass()
            .await
            .map_err(|_| crate::lease::closed_error())?;
        handle
            .read(offset, &mut buf)
            .await
            .map_err(convert::error)?;
        if let Some(p) = pending.take() {
            join(p, "write export file", path).await?;
        }
        let runs = nonzero_runs(&buf);
        written += runs.iter().map(|(s, e)| (e - s) as u64).sum::<u64>();
        let out2 = out.clone();
        let base = offset;
        // Write this step while the next one is read.
        pending = Some(tokio::task::spawn_blocking(move || {
            for (s, e) in runs {
                out2.write_all_at(&buf[s..e], base + s as u64)?;
            }
            Ok(())
        }));
        offset += len as u64;
    }
    if let Some(p) = pending.take() {
        join(p, "write export file", path).await?;
    }
    let out2 = out.clone();
    join(
        tokio::task::spawn_blocking(move || out2.sync_all()),
        "sync export file",
        path,
    )
    .await?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blocks_are_skipped() {
        let mut buf = vec![0u8; 5 * BLOCK];
        buf[BLOCK] = 1;
        buf[2 * BLOCK + 7] = 1;
        buf[5 * BLOCK - 1] = 1;
        assert_eq!(
            nonzero_runs(&buf),
            vec![(BLOCK, 3 * BLOCK), (4 * BLOCK, 5 * BLOCK)]
        );
        assert!(nonzero_runs(&vec![0u8; 3 * BLOCK]).is_empty());
    }

    #[test]
    fn sources_are_checked_before_anything_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("empty"), b"").unwrap();
        std::fs::write(p("q.qcow2"), b"QFI\xfb\0\0\0\x03rest").unwrap();
        std::fs::write(p("ok.raw"), vec![1u8; 5000]).unwrap();
        let code = |f: &str| check_import_source(&p(f), &[]).unwrap_err().code;
        assert_eq!(code("empty"), ErrorCode::InvalidArgument);
        assert_eq!(code("missing"), ErrorCode::NotFound);
        assert_eq!(code("q.qcow2"), ErrorCode::InvalidArgument);
        assert!(check_import_source(&p("q.qcow2"), &[])
            .unwrap_err()
            .message
            .contains("qcow2"));
        assert_eq!(
            check_import_source(dir.path(), &[]).unwrap_err().code,
            ErrorCode::Conflict
        );
        assert_eq!(
            check_import_source(&p("ok.raw"), &[]).unwrap(),
            (5000, 8192)
        );
        let canon = std::fs::canonicalize(p("ok.raw")).unwrap();
        assert_eq!(
            check_import_source(&p("ok.raw"), &[canon])
                .unwrap_err()
                .code,
            ErrorCode::InvalidArgument
        );
    }
}
