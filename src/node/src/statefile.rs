//! Small state files in the node's data folder (owed HA restarts, pending move settles, VM
//! definitions): read whole with a size bound, replaced atomically so a crash leaves either the
//! old file or the new one, never a torn one.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Reads `file` whole. Ok(None): there is no such file. Err: it cannot be read, or it is longer
/// than `max` bytes (read no further: a damaged or foreign file cannot make the node allocate
/// without bound).
pub(crate) fn read_bounded(file: &Path, max: u64) -> Result<Option<Vec<u8>>, String> {
    let f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut b = Vec::new();
    f.take(max.saturating_add(1))
        .read_to_end(&mut b)
        .map_err(|e| e.to_string())?;
    if b.len() as u64 > max {
        return Err(format!("longer than {max} bytes"));
    }
    Ok(Some(b))
}

/// Replaces `file` with `bytes`: a temporary file beside it (`<name>.tmp`), synced, renamed
/// over it, then the directory synced. On an error the temporary file is removed and the old
/// file, if any, is left as it was.
pub(crate) fn replace(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp: PathBuf = file.with_file_name(name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_none_and_a_long_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("state.json");
        assert_eq!(read_bounded(&f, 10), Ok(None));
        replace(&f, b"0123456789").unwrap();
        assert_eq!(read_bounded(&f, 10), Ok(Some(b"0123456789".to_vec())));
        assert_eq!(read_bounded(&f, 9), Err("longer than 9 bytes".to_string()));
        // Replaced whole, no temporary file left beside it.
        replace(&f, b"{}").unwrap();
        assert_eq!(read_bounded(&f, 10), Ok(Some(b"{}".to_vec())));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_failed_replace_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("state.json");
        replace(&f, b"old").unwrap();
        // The temporary file's name is taken by a directory: the write fails before the rename.
        std::fs::create_dir(dir.path().join("state.json.tmp")).unwrap();
        assert!(replace(&f, b"new").is_err());
        assert_eq!(read_bounded(&f, 10), Ok(Some(b"old".to_vec())));
    }
}
