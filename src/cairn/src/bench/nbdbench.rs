//! NBD figures: fio's nbd engine against our NBD export vs against qemu-storage-daemon serving
//! a qcow2 image on the same file system. (Filled in once the nbd crate lands.)

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use super::EngineBenchArgs;

pub async fn run(
    _a: &EngineBenchArgs,
    _files: &[PathBuf; 2],
    _span: u64,
    _dur: Duration,
) -> Result<()> {
    eprintln!("cairn bench engine: skipped: NBD figures (no NBD server in this build yet)");
    Ok(())
}
