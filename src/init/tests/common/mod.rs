//! Helpers for the network-namespace tests: run a body in a fresh network namespace of its own
//! thread (never the host's), with a veth pair cv0/cv1, and the `ip` tool for checks.

use std::process::Command;

use init::net::{parse_static, NetConfig};

pub fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cfg(iface: &str, vlan: Option<u16>, line: &str) -> NetConfig {
    NetConfig {
        iface: iface.into(),
        vlan,
        mode: parse_static(line).unwrap(),
    }
}

/// Runs `body` on a thread inside a new network namespace holding an up veth pair cv0/cv1, with
/// the resolver file in a temp dir. An `Err("skipped: ...")` is reported as skipped.
pub fn in_namespace(body: fn() -> Result<(), String>) {
    let r = std::thread::spawn(move || {
        // SAFETY: unshare(2) with a plain flag; it only changes this thread's network namespace
        // (and that of the `ip` children it forks).
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "skipped: cannot create a network namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
        if let Err(e) = ip(&["link", "add", "cv0", "type", "veth", "peer", "name", "cv1"]) {
            return Err(format!("skipped: no veth links here: {e}"));
        }
        ip(&["link", "set", "cv1", "up"])?;
        let dir = std::env::temp_dir().join(format!("cairn-netns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        init::netlive::set_resolv_path(dir.join("resolv.conf"));
        let r = body();
        let _ = std::fs::remove_dir_all(&dir);
        r
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
    match r {
        Ok(()) => {}
        Err(e) if e.starts_with("skipped:") => println!("{e}"),
        Err(e) => panic!("{e}"),
    }
}
