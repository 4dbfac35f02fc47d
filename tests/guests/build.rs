//! Builds the test guest ELF from C + GNU assembly with the system gcc and ld.
//!
//! No Rust bare-metal target exists on the build machines, so the guest is freestanding C. The
//! output is `$OUT_DIR/guest.elf`; the crate exposes its path. A missing compiler is a clear
//! build error, never a silently empty guest.

use std::path::{Path, PathBuf};
use std::process::Command;

const CFLAGS: &[&str] = &[
    "-m64",
    "-O2",
    "-ffreestanding",
    "-fno-stack-protector",
    "-fno-pic",
    "-fno-pie",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-mcmodel=small",
    "-fno-asynchronous-unwind-tables",
    "-fno-builtin",
    "-nostdlib",
    "-Wall",
    "-Werror",
];

fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("test-guests: cannot run {shown}: {e} (install gcc and binutils: apt-get install gcc binutils)")
    });
    assert!(
        status.success(),
        "test-guests: {shown} failed with {status}"
    );
}

fn main() {
    let src = Path::new("guest");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR set by cargo"));
    println!("cargo:rerun-if-changed=guest");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(src)
        .expect("tests/guests/guest exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("c") | Some("S")
            )
        })
        .collect();
    sources.sort();
    let gcc = std::env::var("CC_GUEST").unwrap_or_else(|_| "gcc".to_string());
    let mut objects = Vec::new();
    for s in &sources {
        let obj = out.join(format!(
            "{}.o",
            s.file_name()
                .and_then(|n| n.to_str())
                .expect("utf-8 file name")
        ));
        run(Command::new(&gcc)
            .args(CFLAGS)
            .arg("-c")
            .arg(s)
            .arg("-o")
            .arg(&obj));
        objects.push(obj);
    }
    let elf = out.join("guest.elf");
    run(Command::new("ld")
        .args([
            "-m",
            "elf_x86_64",
            "-static",
            "-nostdlib",
            "--no-dynamic-linker",
            "-z",
            "max-page-size=4096",
            "-T",
        ])
        .arg(src.join("guest.ld"))
        .arg("-o")
        .arg(&elf)
        .args(&objects));
}
