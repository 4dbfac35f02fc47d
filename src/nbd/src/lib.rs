//! NBD server (fixed newstyle) exporting a virtual disk or snapshot for backup and import tools.
//! Never used in the VM data path. (Being written.)
#![forbid(unsafe_code)]
