//! The node-local store on one disk: allocation, extent maps with reference counts, per-block
//! checksums, journal/checkpoint, cheap object clone. (Being written; see DESIGN.md.)
#![forbid(unsafe_code)]
