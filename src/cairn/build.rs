//! Link flags for the `cairn` binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        // Compact relative relocations (DT_RELR, glibc >= 2.36, binutils >= 2.38): the PIE's
        // ~75 000 R_X86_64_RELATIVE entries take ~860 KiB as RELA, all read by the loader at
        // start and resident for the life of the process (the node, whose VMs run inside it, and
        // every other cairn process pay it); as RELR they take a few KiB. The relocated pages themselves are unchanged.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
