//! The block engine: virtual disks, chunking and placement across disks and nodes, replica I/O,
//! snapshots, thin clones, snapshot diffs, rebuild and resync. (Being written; see DESIGN.md.)
#![forbid(unsafe_code)]
