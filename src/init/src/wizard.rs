//! The first-boot setup wizard: plain numbered lines and prompts on the consoles, drivable by a
//! script over the serial line (no cursor movement, no terminal size). Owns the questions and
//! their validation. Must never apply anything itself: it returns a [`Setup`] only after the
//! final confirmation, and every bad answer gets an `error:` line and the same question again.

use crate::hw::{human, DiskKind, Inventory};
use crate::net::{parse_cluster_addr, parse_static, parse_vlan, ClusterNet, NetConfig, NetMode};

/// Most attempts at one question before the wizard starts over (a stuck script must not loop
/// forever on one field).
pub const MAX_TRIES: usize = 20;
/// The HTTPS API's own minimum (the admin account is created with it).
pub const MIN_PASSWORD_CHARS: usize = api::users::MIN_PASSWORD_LEN;
pub const MAX_PASSWORD_CHARS: usize = 128;

/// Line-based console I/O.
pub trait Term {
    fn say(&mut self, text: &str);
    /// Prints `prompt` and returns the next line (without the newline); `None` = no more input.
    fn ask(&mut self, prompt: &str) -> Option<String>;
    /// Like `ask` with echo off.
    fn ask_secret(&mut self, prompt: &str) -> Option<String>;
}

/// Create a new cluster, or join an existing one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterChoice {
    Create {
        admin_password: String,
    },
    /// Join the cluster of the member at `address` (its cluster address) with a one-time
    /// token; `admin_password` is for this node's own HTTPS API.
    Join {
        address: String,
        token: String,
        admin_password: String,
    },
}

/// Everything the wizard collected, confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    pub net: NetConfig,
    /// A link of its own for the cluster's traffic (asked only when the machine has more than
    /// one link).
    pub cluster_net: Option<ClusterNet>,
    pub hostname: String,
    pub cluster: ClusterChoice,
}

/// Why the wizard stopped without a setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Abort {
    /// Input ended (console closed).
    Eof,
    TooManyTries(String),
}

/// The port of the appliance's cluster address (member RPC); the join endpoint is the next one.
pub const CLUSTER_PORT: u16 = 8444;

pub fn validate_hostname(s: &str) -> Result<String, String> {
    let s = s.trim().to_ascii_lowercase();
    if s.is_empty() || s.len() > 63 {
        return Err("hostname must be 1-63 characters".into());
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("hostname {s:?}: use only letters, digits and '-'"));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(format!("hostname {s:?} must not start or end with '-'"));
    }
    Ok(s)
}

pub fn validate_password(p: &str) -> Result<(), String> {
    let n = p.chars().count();
    if n < MIN_PASSWORD_CHARS {
        return Err(format!(
            "password too short: use at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    if n > MAX_PASSWORD_CHARS {
        return Err(format!(
            "password too long: at most {MAX_PASSWORD_CHARS} characters"
        ));
    }
    if p.chars().any(char::is_control) {
        return Err("password must not contain control characters".into());
    }
    // The API's rules decide in the end; checking them here keeps a bad password from failing
    // after the confirmation.
    api::users::validate_password(p)
}

/// A member's cluster address: IP:PORT (the node's join endpoint is the next port).
pub fn validate_join_address(s: &str) -> Result<String, String> {
    let s = s.trim();
    let a: std::net::SocketAddr = s.parse().map_err(|_| {
        format!("{s:?}: give IP:PORT of a cluster member, e.g. 192.168.1.10:{CLUSTER_PORT}")
    })?;
    if a.port() == 0 || a.port() == u16::MAX {
        return Err(format!("{s:?}: the port must be from 1 to 65534"));
    }
    if a.ip().is_unspecified() || a.ip().is_multicast() {
        return Err(format!("{s:?}: not the address of a node"));
    }
    Ok(a.to_string())
}

/// A join token as `cairn cluster token` prints it (checked for form only; the cluster checks
/// it for real when the node joins).
pub fn validate_join_token(s: &str) -> Result<String, String> {
    let s = s.trim();
    cluster::JoinToken::parse(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("join token: {e}"))
}

/// Prints the machine summary (CPUs, RAM, NICs with link state, disks with their contents).
pub fn show_inventory(t: &mut dyn Term, inv: &Inventory) {
    t.say(&format!(
        "CPUs: {}   RAM: {}",
        inv.cpus,
        human(inv.mem_bytes)
    ));
    t.say("Network links:");
    if inv.nics.is_empty() {
        t.say("  (none found)");
    }
    for n in &inv.nics {
        let st = if n.link_up { "link up" } else { "no link" };
        t.say(&format!("  {}  {}  {st}", n.name, n.mac));
    }
    t.say("Disks:");
    if inv.disks.is_empty() {
        t.say("  (none found)");
    }
    for d in &inv.disks {
        t.say(&format!(
            "  {}  {}  {}  {}",
            d.name,
            human(d.size_bytes),
            d.model,
            d.kind
        ));
    }
}

fn ask_valid<T>(
    t: &mut dyn Term,
    prompt: &str,
    default: &str,
    check: impl Fn(&str) -> Result<T, String>,
) -> Result<T, Abort> {
    for _ in 0..MAX_TRIES {
        let full = if default.is_empty() {
            format!("{prompt}: ")
        } else {
            format!("{prompt} [{default}]: ")
        };
        let line = t.ask(&full).ok_or(Abort::Eof)?;
        let line = line.trim();
        let answer = if line.is_empty() { default } else { line };
        match check(answer) {
            Ok(v) => return Ok(v),
            Err(e) => t.say(&format!("error: {e}")),
        }
    }
    Err(Abort::TooManyTries(prompt.to_string()))
}

fn ask_password(t: &mut dyn Term) -> Result<String, Abort> {
    for _ in 0..MAX_TRIES {
        let p1 = t.ask_secret("Admin password: ").ok_or(Abort::Eof)?;
        if let Err(e) = validate_password(&p1) {
            t.say(&format!("error: {e}"));
            continue;
        }
        let p2 = t.ask_secret("Admin password again: ").ok_or(Abort::Eof)?;
        if p1 != p2 {
            t.say("error: the passwords do not match; enter them again");
            continue;
        }
        return Ok(p1);
    }
    Err(Abort::TooManyTries("admin password".into()))
}

/// Asks the network questions (also used by the console menu's "network" entry).
pub fn ask_network(t: &mut dyn Term, inv: &Inventory) -> Result<NetConfig, Abort> {
    let default_nic = inv
        .nics
        .iter()
        .find(|n| n.link_up)
        .or(inv.nics.first())
        .map(|n| n.name.clone())
        .unwrap_or_default();
    let names: Vec<String> = inv.nics.iter().map(|n| n.name.clone()).collect();
    let iface = ask_valid(t, "Network link", &default_nic, |s| {
        if names.iter().any(|n| n == s) {
            Ok(s.to_string())
        } else {
            Err(format!(
                "no network link named {s:?} (have: {})",
                names.join(", ")
            ))
        }
    })?;
    let vlan = ask_valid(t, "VLAN id (empty for none)", "", parse_vlan)?;
    let mode = ask_valid(
        t,
        "Address: dhcp, or ADDRESS/PREFIX [GATEWAY [DNS ...]]",
        "dhcp",
        |s| {
            if s == "dhcp" {
                Ok(NetMode::Dhcp)
            } else {
                parse_static(s)
            }
        },
    )?;
    Ok(NetConfig { iface, vlan, mode })
}

/// Asks whether the cluster's traffic gets a link of its own (only on a machine with more than
/// one link; empty = the management network carries it), and that link's static address.
pub fn ask_cluster_net(
    t: &mut dyn Term,
    inv: &Inventory,
    net: &NetConfig,
) -> Result<Option<ClusterNet>, Abort> {
    if inv.nics.len() < 2 {
        return Ok(None);
    }
    let names: Vec<String> = inv.nics.iter().map(|n| n.name.clone()).collect();
    let iface = ask_valid(
        t,
        "Cluster network link (empty: the management network)",
        "",
        |s| {
            if s.is_empty() {
                Ok(None)
            } else if s == net.iface {
                Err(format!(
                    "{s} already carries the management network; choose another link or leave it empty"
                ))
            } else if names.iter().any(|n| n == s) {
                Ok(Some(s.to_string()))
            } else {
                Err(format!(
                    "no network link named {s:?} (have: {})",
                    names.join(", ")
                ))
            }
        },
    )?;
    let Some(iface) = iface else { return Ok(None) };
    let (addr, prefix) = ask_valid(
        t,
        &format!("Cluster address on {iface} (ADDRESS/PREFIX)"),
        "",
        |s| {
            let (addr, prefix) = parse_cluster_addr(s)?;
            if let NetMode::Static { addr: m, .. } = &net.mode {
                if *m == addr {
                    return Err(format!("{addr} is the management address already"));
                }
            }
            Ok((addr, prefix))
        },
    )?;
    Ok(Some(ClusterNet {
        iface,
        addr,
        prefix,
    }))
}

/// Runs the whole wizard until a confirmed [`Setup`].
pub fn run(t: &mut dyn Term, inv: &Inventory) -> Result<Setup, Abort> {
    loop {
        t.say("");
        t.say("=== Cairn setup ===");
        show_inventory(t, inv);
        let usable = inv
            .disks
            .iter()
            .filter(|d| !matches!(d.kind, DiskKind::Other(_)))
            .count();
        if usable == 0 {
            t.say(
                "warning: no blank or Cairn disk found; the pool will be empty until one is added",
            );
        }
        let net = ask_network(t, inv)?;
        let cluster_net = ask_cluster_net(t, inv, &net)?;
        let hostname = ask_valid(t, "Hostname", "cairn", validate_hostname)?;
        let choice = ask_valid(
            t,
            "Create a new cluster or join one? (create/join)",
            "create",
            |s| match s {
                "create" | "join" => Ok(s.to_string()),
                _ => Err(format!("answer create or join, not {s:?}")),
            },
        )?;
        let cluster = if choice == "create" {
            ClusterChoice::Create {
                admin_password: ask_password(t)?,
            }
        } else {
            let address = ask_valid(
                t,
                "Cluster address of a member (IP:PORT)",
                "",
                validate_join_address,
            )?;
            let token = ask_valid(t, "Join token", "", validate_join_token)?;
            t.say("This node's own web UI gets an admin account too:");
            ClusterChoice::Join {
                address,
                token,
                admin_password: ask_password(t)?,
            }
        };
        t.say("");
        t.say("Summary:");
        t.say(&format!("  network:  {net}"));
        if let Some(c) = &cluster_net {
            t.say(&format!("  cluster network: {c}"));
        }
        t.say(&format!("  hostname: {hostname}"));
        match &cluster {
            ClusterChoice::Create { .. } => t.say("  cluster:  create a new cluster (user admin)"),
            ClusterChoice::Join { address, .. } => t.say(&format!(
                "  cluster:  join the cluster of {address} (user admin on this node)"
            )),
        }
        for d in &inv.disks {
            let fate = match d.kind {
                DiskKind::Blank => "formatted and added to the pool",
                DiskKind::Cairn => "opened as a pool disk",
                DiskKind::Other(_) => "left untouched",
            };
            t.say(&format!("  disk {}: {fate}", d.name));
        }
        let ok = ask_valid(t, "Apply this configuration? (yes/no)", "", |s| match s {
            "yes" => Ok(true),
            "no" => Ok(false),
            _ => Err("answer yes or no".to_string()),
        })?;
        if ok {
            return Ok(Setup {
                net,
                cluster_net,
                hostname,
                cluster,
            });
        }
        t.say("Nothing was changed. Starting over.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::{Disk, Nic};
    use std::collections::VecDeque;

    struct Script {
        input: VecDeque<&'static str>,
        out: Vec<String>,
    }
    impl Term for Script {
        fn say(&mut self, text: &str) {
            self.out.push(text.to_string());
        }
        fn ask(&mut self, prompt: &str) -> Option<String> {
            self.out.push(prompt.to_string());
            self.input.pop_front().map(str::to_string)
        }
        fn ask_secret(&mut self, prompt: &str) -> Option<String> {
            self.ask(prompt)
        }
    }

    fn inv() -> Inventory {
        Inventory {
            cpus: 2,
            mem_bytes: 2 << 30,
            nics: vec![Nic {
                name: "eth0".into(),
                mac: "52:54:00:12:34:56".into(),
                link_up: true,
            }],
            disks: vec![
                Disk {
                    name: "nvme0n1".into(),
                    size_bytes: 1 << 30,
                    model: "QEMU".into(),
                    kind: DiskKind::Blank,
                },
                Disk {
                    name: "sda".into(),
                    size_bytes: 1 << 30,
                    model: "X".into(),
                    kind: DiskKind::Other("GPT partition table".into()),
                },
            ],
        }
    }

    #[test]
    fn bad_answers_are_refused_and_nothing_returned_until_yes() {
        let mut s = Script {
            input: [
                "eth9",
                "",
                "",
                "10.0.2.999/24",
                "10.0.2.20/24 10.0.2.2",
                "-bad-",
                "node1",
                "maybe",
                "create",
                "short",
                "password1-long",
                "password2-long",
                "password1-long",
                "password1-long",
                "no",
                "",
                "",
                "dhcp",
                "node1",
                "create",
                "password1-long",
                "password1-long",
                "yes",
            ]
            .into(),
            out: Vec::new(),
        };
        let setup = run(&mut s, &inv()).unwrap();
        assert_eq!(setup.hostname, "node1");
        assert_eq!(setup.net.mode, NetMode::Dhcp);
        assert_eq!(
            setup.cluster,
            ClusterChoice::Create {
                admin_password: "password1-long".into()
            }
        );
        let out = s.out.join("\n");
        assert!(out.contains("error: no network link named \"eth9\""));
        assert!(out.contains("error: address \"10.0.2.999\" is not an IPv4 address"));
        assert!(out.contains("error: hostname \"-bad-\" must not start or end with '-'"));
        assert!(out.contains("error: password too short"));
        assert!(out.contains("error: the passwords do not match"));
        assert!(out.contains("disk sda: left untouched"));
        assert!(out.contains("other data, never touched (GPT partition table)"));
        assert!(out.contains("Nothing was changed. Starting over."));
    }

    #[test]
    fn join_validates_address_and_token() {
        let token = format!("cairn1.{}.{}", "a".repeat(64), "b".repeat(64));
        let tok: &'static str = Box::leak(token.clone().into_boxed_str());
        let mut s = Script {
            input: [
                "",
                "",
                "",
                "",
                "join",
                "nohost",
                "10.0.0.1:0",
                "10.0.0.1:8444",
                "tok",
                tok,
                "password1-long",
                "password1-long",
                "yes",
            ]
            .into(),
            out: Vec::new(),
        };
        let setup = run(&mut s, &inv()).unwrap();
        assert_eq!(
            setup.cluster,
            ClusterChoice::Join {
                address: "10.0.0.1:8444".into(),
                token,
                admin_password: "password1-long".into(),
            }
        );
        let out = s.out.join("\n");
        assert!(out.contains("error: \"nohost\": give IP:PORT"));
        assert!(out.contains("error: \"10.0.0.1:0\": the port must be"));
        assert!(out.contains("error: join token:"));
        assert!(out.contains("join the cluster of 10.0.0.1:8444"));
    }

    #[test]
    fn a_second_link_can_carry_the_cluster() {
        let mut two = inv();
        two.nics.push(Nic {
            name: "eth1".into(),
            mac: "52:54:00:00:01:01".into(),
            link_up: true,
        });
        let mut s = Script {
            input: [
                "",
                "",
                "10.0.2.20/24",
                "eth0",
                "eth7",
                "eth1",
                "10.10.0.1/24 10.10.0.254",
                "10.10.0.1",
                "10.0.2.20/24",
                "10.10.0.1/24",
                "node1",
                "create",
                "password1-long",
                "password1-long",
                "yes",
            ]
            .into(),
            out: Vec::new(),
        };
        let setup = run(&mut s, &two).unwrap();
        assert_eq!(
            setup.cluster_net,
            Some(ClusterNet {
                iface: "eth1".into(),
                addr: "10.10.0.1".parse().unwrap(),
                prefix: 24,
            })
        );
        let out = s.out.join("\n");
        assert!(out.contains("error: eth0 already carries the management network"));
        assert!(out.contains("error: no network link named \"eth7\""));
        assert!(out.contains("(no gateway or DNS)"));
        assert!(out.contains("error: 10.0.2.20 is the management address already"));
        assert!(out.contains("cluster network: eth1 static 10.10.0.1/24"));

        // Empty: the management network carries the cluster; one link: not even asked.
        let mut s = Script {
            input: [
                "",
                "",
                "",
                "",
                "node1",
                "create",
                "password1-long",
                "password1-long",
                "yes",
            ]
            .into(),
            out: Vec::new(),
        };
        assert_eq!(run(&mut s, &two).unwrap().cluster_net, None);
        let mut s = Script {
            input: [
                "",
                "",
                "",
                "node1",
                "create",
                "password1-long",
                "password1-long",
                "yes",
            ]
            .into(),
            out: Vec::new(),
        };
        let setup = run(&mut s, &inv()).unwrap();
        assert_eq!(setup.cluster_net, None);
        assert!(!s.out.join("\n").contains("Cluster network link"));
    }

    #[test]
    fn eof_aborts() {
        let mut s = Script {
            input: ["", "", "", "", "join", "10.0.0.1:8444"].into(),
            out: Vec::new(),
        };
        assert_eq!(run(&mut s, &inv()), Err(Abort::Eof));
    }
}
