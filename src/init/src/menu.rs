//! The console status screen and menu after setup: UI address and node health, then network,
//! logs, reboot, shut down, reset. Owns nothing but the dialogue. Must never change anything
//! without an explicit confirmation.

use std::time::Duration;

/// How long a network change waits for a DHCP lease before it restores the previous network.
const NET_CHANGE_DHCP_TIMEOUT: Duration = Duration::from_secs(20);

use crate::net;
use crate::power::{self, PowerAction};
use crate::record::NodeRecord;
use crate::wizard::{ask_network, Term};
use crate::{hw, log, logln, service};

fn status(t: &mut dyn Term, rec: &NodeRecord) {
    t.say("");
    t.say(&format!("=== Cairn node {} ===", rec.hostname));
    match net::status().and_then(|n| n.addr) {
        Some((a, _)) => t.say(&format!("UI: https://{a}:{}/", service::API_PORT)),
        None => t.say("UI: no network address (choose 1 to set up the network)"),
    }
    // The address may have changed since the node service last looked (the DHCP thread tells
    // it, but asynchronously): name it now, so the lines below show what the UI serves on it.
    service::name_ui_address();
    let cert = std::path::Path::new(service::DATA_DIR).join(CERT_FILE);
    for l in certificate_lines(std::fs::read(&cert)) {
        t.say(&l);
    }
    if let Some(c) = &rec.cluster_net {
        match net::cluster_addr() {
            Some(a) => t.say(&format!(
                "Cluster link: {} {a}:{}",
                c.iface,
                crate::wizard::CLUSTER_PORT
            )),
            None => t.say(&format!("Cluster link: {} not up (see the log)", c.iface)),
        }
    }
    let h = service::health();
    if h.running {
        let state = if h.degraded_chunks == 0 {
            "ok"
        } else {
            "degraded"
        };
        t.say(&format!(
            "Health: {state}; pool {} disks, {} usable, {} virtual disks",
            h.disks,
            hw::human(h.usable_bytes),
            h.vdisks
        ));
    } else {
        t.say("Health: node service starting");
    }
    t.say(&format!("Memory: node RSS {} MiB", rss_kib() / 1024));
    t.say("1) network  2) show logs  3) reboot  4) shut down  5) reset node  (enter: refresh)");
}

/// The API's certificate in use, under the node's data directory (the API owns the file and
/// rewrites it when it re-issues the certificate or an admin uploads one).
const CERT_FILE: &str = "api/tls/cert.pem";

/// The status screen's lines about the UI's certificate: its SHA-256 fingerprint, which a
/// browser shows at the first visit (a person compares it before trusting the certificate), and
/// its key's, which stays when the node re-issues the certificate for a new address. Lowercase
/// hex as the API (`GET /api/v1/certificate`) and the web UI's Settings show them; one value a
/// line, each line within 80 columns, so a script reads them with a fixed prefix.
/// `read`: the certificate file's contents.
fn certificate_lines(read: std::io::Result<Vec<u8>>) -> Vec<String> {
    match read {
        Ok(pem) => match api::tls::pem_fingerprints(&pem) {
            Ok(fp) => vec![
                "UI certificate (check it at the first visit; its key stays across addresses):"
                    .into(),
                format!("  SHA-256     {}", fp.certificate),
                format!("  Key SHA-256 {}", fp.key),
            ],
            Err(e) => vec![format!("UI certificate: unreadable: {e}")],
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            vec!["UI certificate: not made yet (enter: refresh)".into()]
        }
        Err(e) => vec![format!("UI certificate: unreadable: {e}")],
    }
}

/// Resident memory of this process (PID 1 runs the node service), from /proc/self/status.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn confirm(t: &mut dyn Term, what: &str) -> bool {
    matches!(
        t.ask(&format!("{what} Type yes to confirm: "))
            .as_deref()
            .map(str::trim),
        Some("yes")
    )
}

/// Asks for a new network configuration and, once confirmed, applies it live (the previous one
/// comes back if the new one fails) and then stores it in the record for the next boots.
fn change_network(t: &mut dyn Term, rec: &NodeRecord) {
    let inv = hw::inventory();
    let Ok(n) = ask_network(t, &inv) else {
        t.say("Nothing was changed.");
        return;
    };
    if rec.cluster_net.as_ref().is_some_and(|c| c.iface == n.iface) {
        // Its address is the cluster's, which the other members know: it is not moved here.
        t.say(&format!(
            "error: {} is the cluster link; the management network needs another link. Nothing was changed.",
            n.iface
        ));
        return;
    }
    t.say(&format!("New network: {n} (applied now, without a reboot)"));
    if !confirm(t, "Apply it?") {
        t.say("Nothing was changed.");
        return;
    }
    match net::replace(&n, NET_CHANGE_DHCP_TIMEOUT) {
        Ok(s) => {
            let at = s
                .addr
                .map(|(a, p)| format!("{a}/{p}"))
                .unwrap_or_else(|| "no address".into());
            t.say(&format!("network applied: {} {at}", s.link));
        }
        Err(e) => {
            t.say(&format!("error: {e}"));
            t.say("The stored configuration was not changed.");
            return;
        }
    }
    match service::update_record(|r| r.net = n) {
        Ok(()) => t.say("saved: the next boot uses it too."),
        Err(e) => t.say(&format!(
            "error: applied but not saved ({e}); the next boot uses the previous configuration"
        )),
    }
}

/// Runs the menu forever.
pub fn run(t: &mut dyn Term, rec: &NodeRecord) -> ! {
    loop {
        status(t, rec);
        let Some(choice) = t.ask("Choice: ") else {
            // No console input: keep the service running, re-check now and then.
            std::thread::sleep(Duration::from_secs(60));
            continue;
        };
        match choice.trim() {
            "" => {}
            "1" => change_network(t, rec),
            "2" => {
                for l in log::recent(0, 50) {
                    t.say(&l.text);
                }
            }
            "3" if confirm(t, "Reboot?") => {
                service::stop_node(Duration::from_secs(20));
                power::finish(PowerAction::Reboot);
            }
            "4" if confirm(t, "Shut down?") => {
                service::stop_node(Duration::from_secs(20));
                power::finish(PowerAction::PowerOff);
            }
            "5" if confirm(t, "Reset: forget this node's configuration and run setup at the next boot (pool data stays)?") => {
                match service::delete_record() {
                    Ok(()) => {
                        logln!("configuration record deleted; rebooting into setup");
                        service::stop_node(Duration::from_secs(20));
                        power::finish(PowerAction::Reboot);
                    }
                    Err(e) => t.say(&format!("error: {e}")),
                }
            }
            "3" | "4" | "5" => t.say("Nothing was changed."),
            other => t.say(&format!("error: no menu entry {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the system's temporary directory, removed when dropped.
    struct TempDir(std::path::PathBuf);
    impl TempDir {
        fn new(name: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!("init-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn is_hex64(s: &str) -> bool {
        s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    #[test]
    fn the_status_screen_shows_the_fingerprints_the_api_serves() {
        // The certificate the node's API makes, in the layout the node keeps it in.
        let dir = TempDir::new("status-cert");
        let store = api::tls::CertStore::open(&dir.0).unwrap();
        let info = store.info();
        let lines = certificate_lines(std::fs::read(dir.0.join("tls/cert.pem")));
        assert_eq!(
            lines,
            [
                "UI certificate (check it at the first visit; its key stays across addresses):"
                    .to_string(),
                format!("  SHA-256     {}", info.sha256_fingerprint),
                format!("  Key SHA-256 {}", info.key_sha256),
            ]
        );
        // What a script on the serial line reads: a fixed prefix, 64 hex digits, nothing after.
        assert!(
            is_hex64(&lines[1]["  SHA-256     ".len()..]),
            "{}",
            lines[1]
        );
        assert!(
            is_hex64(&lines[2]["  Key SHA-256 ".len()..]),
            "{}",
            lines[2]
        );
        assert!(lines.iter().all(|l| l.len() <= 80), "{lines:?}");

        // After a re-issue for a new address the screen shows the new certificate, same key.
        assert!(store.name_address("192.0.2.9".parse().unwrap()).unwrap());
        let again = certificate_lines(std::fs::read(dir.0.join("tls/cert.pem")));
        assert_eq!(
            again[1],
            format!("  SHA-256     {}", store.info().sha256_fingerprint)
        );
        assert_ne!(again[1], lines[1]);
        assert_eq!(again[2], lines[2]);
    }

    #[test]
    fn an_address_change_reissues_the_certificate_the_status_screen_shows() {
        let dir = TempDir::new("status-readdress");
        let store = api::tls::CertStore::open(&dir.0).unwrap();
        let read = || certificate_lines(std::fs::read(dir.0.join("tls/cert.pem")));
        let before = read();
        // A documentation address: never one of this host's, so the certificate made at
        // start does not name it, as after a DHCP renewal with a new address.
        let ip: std::net::IpAddr = "192.0.2.44".parse().unwrap();
        assert!(!store.info().names.contains(&ip.to_string()));
        let line = service::name_in_certificate(&store, ip).expect("re-issued");
        let info = store.info();
        assert_eq!(
            line,
            format!(
                "UI certificate re-issued (same key) to name 192.0.2.44: SHA-256 {}",
                info.sha256_fingerprint
            )
        );
        assert!(info.names.contains(&ip.to_string()), "{:?}", info.names);
        // The screen now shows the certificate the API serves on that address, same key.
        let after = read();
        assert_eq!(
            after[1],
            format!("  SHA-256     {}", info.sha256_fingerprint)
        );
        assert_ne!(after[1], before[1]);
        assert_eq!(after[2], before[2]);
        // Named already: nothing more (each screen refresh asks).
        assert_eq!(service::name_in_certificate(&store, ip), None);
        assert_eq!(read(), after);

        // An uploaded certificate is never re-issued.
        let (c, k) = api::tls::self_signed().unwrap();
        store.replace(c.as_bytes(), k.as_bytes()).unwrap();
        let uploaded = read();
        let other: std::net::IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(service::name_in_certificate(&store, other), None);
        assert_eq!(read(), uploaded);
    }

    #[test]
    fn a_failed_reissue_is_said_once_and_the_certificate_stays() {
        let dir = TempDir::new("status-reissue-fails");
        let store = api::tls::CertStore::open(&dir.0).unwrap();
        let before = std::fs::read(dir.0.join("tls/cert.pem")).unwrap();
        // The key the re-issue signs with is gone (a damaged data directory).
        std::fs::remove_file(dir.0.join("tls/key.pem")).unwrap();
        let ip: std::net::IpAddr = "192.0.2.45".parse().unwrap();
        let line = service::name_in_certificate(&store, ip).expect("said");
        assert!(
            line.starts_with(
                "UI certificate: cannot re-issue it to name 192.0.2.45 (the old one stays): "
            ),
            "{line}"
        );
        assert_eq!(std::fs::read(dir.0.join("tls/cert.pem")).unwrap(), before);
        // Not retried (nor logged again) at every refresh of the screen.
        assert_eq!(service::name_in_certificate(&store, ip), None);
    }

    #[test]
    fn a_missing_or_bad_certificate_is_said_in_one_line() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(
            certificate_lines(Err(missing)),
            ["UI certificate: not made yet (enter: refresh)"]
        );
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let l = certificate_lines(Err(denied));
        assert_eq!(l.len(), 1);
        assert!(l[0].starts_with("UI certificate: unreadable: "), "{l:?}");
        let l = certificate_lines(Ok(b"not a certificate".to_vec()));
        assert_eq!(
            l,
            ["UI certificate: unreadable: no certificate found (expected a PEM 'BEGIN CERTIFICATE' block)"]
        );
    }
}
