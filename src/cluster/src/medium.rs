//! Where a member's durable state lives: the [`Medium`] seam under the raft log, the snapshot
//! and the member identity, and the [`RaftMedia`] that hands out one medium per [`Part`].
//!
//! A medium is one growable byte string with four operations: read it all, append at its end,
//! make the appends durable, and replace the whole content atomically (after a crash the old
//! or the new content is there, never a mix). Stores above it (log, snapshot) keep their own
//! record checksums; a medium only guarantees those four operations.
//!
//! Implementations here: [`FileMedia`] (the historical layout: `DIR/identity`,
//! `DIR/raft/log/log`, `DIR/raft/sm/snapshot`, byte-for-byte as before) and [`MemMedia`] (in
//! memory, for tests and tools). The node crate adds one on an internal virtual disk in the
//! node's pool.
//!
//! Must never: report a write or replace as done before it is durable (`sync`/`replace`
//! return only after the data would survive a power cut), or let a failed replace expose a
//! partial content.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One byte string of a member's state. Offsets are logical (0 = first byte of the content).
pub trait Medium: Send + 'static {
    /// The whole content as of the last completed write (empty when nothing was ever stored).
    fn read_all(&mut self) -> io::Result<Vec<u8>>;
    /// Writes `buf` at `offset`, which is the current end of the content (appends only).
    /// Not durable until [`Medium::sync`].
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes every completed write durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Replaces the whole content atomically and durably.
    fn replace(&mut self, content: &[u8]) -> io::Result<()>;
    /// Cuts the content to `len` bytes (a torn tail at open), durably.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Where this medium is, for messages.
    fn describe(&self) -> String;
}

impl std::fmt::Debug for dyn Medium {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Medium({})", self.describe())
    }
}

/// The parts of a member's state, each on its own medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// Cluster id, role, this node's certificate and key (small, replaced whole).
    Identity,
    /// The raft log (appended, compacted by replace).
    Log,
    /// The latest state-machine snapshot (replaced whole).
    Snapshot,
}

impl Part {
    pub const ALL: [Part; 3] = [Part::Identity, Part::Log, Part::Snapshot];
}

/// Hands out the media of one member's state.
pub trait RaftMedia: Send + Sync + Debug {
    /// Opens `part` (empty if never written).
    fn open(&self, part: Part) -> Result<Box<dyn Medium>, crate::Error>;
    /// Moves the current state aside (a join replaces it; [`RaftMedia::restore_aside`] brings
    /// it back if the join fails). Afterwards every part reads empty.
    fn set_aside(&self) -> Result<(), crate::Error>;
    /// Brings back what [`RaftMedia::set_aside`] saved, replacing the current state.
    fn restore_aside(&self) -> Result<(), crate::Error>;
    /// Forgets what [`RaftMedia::set_aside`] saved.
    fn drop_aside(&self);
    /// Where the state lives, for messages.
    fn describe(&self) -> String;
}

/// Whether `media` holds a member identity (the node belongs to a cluster).
pub fn has_identity(media: &dyn RaftMedia) -> Result<bool, crate::Error> {
    let mut m = media.open(Part::Identity)?;
    let b = m
        .read_all()
        .map_err(|e| crate::Error::io("read member identity", e))?;
    Ok(!b.is_empty())
}

// ---- files

/// A medium on one file: appends with `pwrite`, `fdatasync`, replace by temp file + rename +
/// directory sync. The file is created on the first write.
#[derive(Debug)]
pub struct FileMedium {
    path: PathBuf,
    file: Option<File>,
}

impl FileMedium {
    pub fn new(path: impl Into<PathBuf>) -> FileMedium {
        FileMedium {
            path: path.into(),
            file: None,
        }
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    fn file(&mut self) -> io::Result<&File> {
        if self.file.is_none() {
            std::fs::create_dir_all(self.dir())?;
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&self.path)?;
            self.file = Some(f);
        }
        self.file
            .as_ref()
            .ok_or_else(|| io::Error::other("file not open"))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(self.dir())?.sync_all()
    }
}

impl Medium for FileMedium {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut b = Vec::new();
        f.read_to_end(&mut b)?;
        Ok(b)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file()?.write_all_at(buf, offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file()?.sync_data()
    }

    fn replace(&mut self, content: &[u8]) -> io::Result<()> {
        std::fs::create_dir_all(self.dir())?;
        let mut name = self.path.file_name().unwrap_or_default().to_owned();
        name.push(".tmp");
        let tmp = self.path.with_file_name(name);
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .read(true)
            .open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        // If the directory sync fails we cannot say which file is on disk: the caller fails
        // stop on the error.
        self.sync_dir()?;
        self.file = Some(f);
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let f = self.file()?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// A member's state as files under one directory (the layout every earlier version used).
#[derive(Debug, Clone)]
pub struct FileMedia {
    dir: PathBuf,
}

impl FileMedia {
    pub fn new(dir: impl Into<PathBuf>) -> FileMedia {
        FileMedia { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds `part` under `dir`.
    pub fn path_of(dir: &Path, part: Part) -> PathBuf {
        match part {
            Part::Identity => dir.join("identity"),
            Part::Log => dir.join("raft/log/log"),
            Part::Snapshot => dir.join("raft/sm/snapshot"),
        }
    }

    fn aside(&self) -> PathBuf {
        self.dir.with_extension("solo")
    }
}

impl RaftMedia for FileMedia {
    fn open(&self, part: Part) -> Result<Box<dyn Medium>, crate::Error> {
        Ok(Box::new(FileMedium::new(FileMedia::path_of(
            &self.dir, part,
        ))))
    }

    fn set_aside(&self) -> Result<(), crate::Error> {
        let aside = self.aside();
        let _ = std::fs::remove_dir_all(&aside);
        match std::fs::rename(&self.dir, &aside) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(crate::Error::io("set the member state aside", e)),
        }
    }

    fn restore_aside(&self) -> Result<(), crate::Error> {
        let _ = std::fs::remove_dir_all(&self.dir);
        let aside = self.aside();
        if !aside.exists() {
            return Ok(());
        }
        std::fs::rename(&aside, &self.dir)
            .map_err(|e| crate::Error::io("restore the member state set aside", e))
    }

    fn drop_aside(&self) {
        let _ = std::fs::remove_dir_all(self.aside());
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

// ---- memory

/// A medium in memory. Clones share the content, so a "reopen" sees what was written.
#[derive(Debug, Clone, Default)]
pub struct MemMedium {
    content: Arc<Mutex<Vec<u8>>>,
}

impl MemMedium {
    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.content.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Medium for MemMedium {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        Ok(self.bytes().clone())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut b = self.bytes();
        if offset != b.len() as u64 {
            return Err(io::Error::other(format!(
                "append at {offset} but the content ends at {}",
                b.len()
            )));
        }
        b.extend_from_slice(buf);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn replace(&mut self, content: &[u8]) -> io::Result<()> {
        *self.bytes() = content.to_vec();
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut b = self.bytes();
        if len > b.len() as u64 {
            return Err(io::Error::other("set_len beyond the end"));
        }
        b.truncate(len as usize);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

/// Every part's content, as set aside for a join.
type Saved = BTreeMap<Part, Vec<u8>>;

/// A member's state in memory (tests, tools). Clones share the state.
#[derive(Debug, Clone, Default)]
pub struct MemMedia {
    parts: Arc<Mutex<BTreeMap<Part, MemMedium>>>,
    aside: Arc<Mutex<Option<Saved>>>,
}

impl MemMedia {
    fn medium(&self, part: Part) -> MemMedium {
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(part)
            .or_default()
            .clone()
    }
}

impl RaftMedia for MemMedia {
    fn open(&self, part: Part) -> Result<Box<dyn Medium>, crate::Error> {
        Ok(Box::new(self.medium(part)))
    }

    fn set_aside(&self) -> Result<(), crate::Error> {
        let mut saved = BTreeMap::new();
        for p in Part::ALL {
            let mut m = self.medium(p);
            saved.insert(p, m.read_all().unwrap_or_default());
            m.bytes().clear();
        }
        *self.aside.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        Ok(())
    }

    fn restore_aside(&self) -> Result<(), crate::Error> {
        let saved = self.aside.lock().unwrap_or_else(|e| e.into_inner()).take();
        for p in Part::ALL {
            let content = saved
                .as_ref()
                .and_then(|s| s.get(&p).cloned())
                .unwrap_or_default();
            *self.medium(p).bytes() = content;
        }
        Ok(())
    }

    fn drop_aside(&self) {
        self.aside.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(m: &mut dyn Medium) {
        assert!(m.read_all().unwrap().is_empty());
        m.write_at(0, b"abc").unwrap();
        m.write_at(3, b"def").unwrap();
        m.sync().unwrap();
        assert_eq!(m.read_all().unwrap(), b"abcdef");
        m.set_len(4).unwrap();
        assert_eq!(m.read_all().unwrap(), b"abcd");
        m.replace(b"xy").unwrap();
        m.write_at(2, b"z").unwrap();
        m.sync().unwrap();
        assert_eq!(m.read_all().unwrap(), b"xyz");
    }

    #[test]
    fn file_and_memory_media_behave_alike() {
        let dir = tempfile::TempDir::new().unwrap();
        let files = FileMedia::new(dir.path().join("c"));
        let mem = MemMedia::default();
        for media in [&files as &dyn RaftMedia, &mem] {
            assert!(!has_identity(media).unwrap());
            exercise(&mut *media.open(Part::Log).unwrap());
            media.open(Part::Identity).unwrap().replace(b"id").unwrap();
            assert!(has_identity(media).unwrap());
            media.set_aside().unwrap();
            assert!(!has_identity(media).unwrap());
            media.restore_aside().unwrap();
            assert!(has_identity(media).unwrap());
            assert_eq!(media.open(Part::Log).unwrap().read_all().unwrap(), b"xyz");
            media.drop_aside();
        }
        assert!(dir.path().join("c/raft/log/log").exists());
    }
}
