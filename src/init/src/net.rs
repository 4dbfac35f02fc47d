//! The node's network configuration: what the wizard asks for (DHCP or a static IPv4 address,
//! optional VLAN), its validation, and applying it with netlink (+ DHCP). DNS servers go to
//! /run/resolv.conf for the node's own use. Must never apply an invalid configuration, and never
//! touch a link other than the chosen one (and loopback).

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::netlink::{if_index, Netlink};
use crate::{dhcp, logln};

/// How the address is obtained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum NetMode {
    Dhcp,
    Static {
        addr: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
        dns: Vec<Ipv4Addr>,
    },
}

/// The management network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    pub iface: String,
    pub vlan: Option<u16>,
    #[serde(flatten)]
    pub mode: NetMode,
}

impl fmt::Display for NetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.iface)?;
        if let Some(v) = self.vlan {
            write!(f, " vlan {v}")?;
        }
        match &self.mode {
            NetMode::Dhcp => write!(f, " dhcp"),
            NetMode::Static {
                addr,
                prefix,
                gateway,
                dns,
            } => {
                write!(f, " static {addr}/{prefix}")?;
                if let Some(g) = gateway {
                    write!(f, " gateway {g}")?;
                }
                for d in dns {
                    write!(f, " dns {d}")?;
                }
                Ok(())
            }
        }
    }
}

fn parse_ip(s: &str, what: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = s
        .parse()
        .map_err(|_| format!("{what} {s:?} is not an IPv4 address (like 192.168.1.10)"))?;
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
        return Err(format!(
            "{what} {ip} cannot be used (unspecified, loopback, multicast or broadcast)"
        ));
    }
    Ok(ip)
}

/// Parses "ADDR/PREFIX [GATEWAY [DNS...]]" into a static mode, validated.
pub fn parse_static(line: &str) -> Result<NetMode, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some(first) = words.first() else {
        return Err(
            "expected ADDRESS/PREFIX [GATEWAY [DNS ...]], e.g. 192.168.1.10/24 192.168.1.1 1.1.1.1"
                .into(),
        );
    };
    let (a, p) = first
        .split_once('/')
        .ok_or_else(|| format!("{first:?}: give the prefix length too, e.g. {first}/24"))?;
    let addr = parse_ip(a, "address")?;
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .ok_or_else(|| format!("prefix length {p:?} must be a number from 1 to 32"))?;
    let mask = u32::MAX << (32 - u32::from(prefix));
    if prefix <= 30 {
        let host = u32::from(addr) & !mask;
        if host == 0 || host == !mask {
            return Err(format!(
                "{addr}/{prefix} is the network or broadcast address of its subnet"
            ));
        }
    }
    let gateway = match words.get(1) {
        None => None,
        Some(g) => {
            let g = parse_ip(g, "gateway")?;
            if u32::from(g) & mask != u32::from(addr) & mask {
                return Err(format!("gateway {g} is not inside {addr}/{prefix}"));
            }
            if g == addr {
                return Err(format!("gateway {g} is the node's own address"));
            }
            Some(g)
        }
    };
    if words.len() > 5 {
        return Err("at most 3 DNS servers".into());
    }
    let dns = words[2.min(words.len())..]
        .iter()
        .map(|d| parse_ip(d, "DNS server"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NetMode::Static {
        addr,
        prefix,
        gateway,
        dns,
    })
}

/// Parses a VLAN id ("" or "none" = no VLAN).
pub fn parse_vlan(s: &str) -> Result<Option<u16>, String> {
    let s = s.trim();
    if s.is_empty() || s == "none" || s == "0" {
        return Ok(None);
    }
    s.parse::<u16>()
        .ok()
        .filter(|v| (1..=4094).contains(v))
        .map(Some)
        .ok_or_else(|| format!("VLAN id {s:?} must be a number from 1 to 4094 (or empty for none)"))
}

/// What the network ended up as (for the status screen).
#[derive(Debug, Clone, Default)]
pub struct NetStatus {
    pub link: String,
    pub addr: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

fn write_resolv(dns: &[Ipv4Addr]) {
    let mut s = String::from("# written by cairn PID 1\n");
    for d in dns.iter().take(3) {
        s.push_str(&format!("nameserver {d}\n"));
    }
    if let Err(e) = std::fs::write("/run/resolv.conf", s) {
        logln!("cannot write /run/resolv.conf: {e}");
    }
}

fn apply_addr(
    nl: &mut Netlink,
    index: u32,
    link: &str,
    addr: Ipv4Addr,
    prefix: u8,
    gw: Option<Ipv4Addr>,
    dns: &[Ipv4Addr],
) -> Result<NetStatus, String> {
    nl.add_addr(index, addr, prefix)
        .map_err(|e| format!("{link}: add address {addr}/{prefix}: {e}"))?;
    if let Some(g) = gw {
        nl.add_default_route(index, g)
            .map_err(|e| format!("{link}: default route via {g}: {e}"))?;
    }
    write_resolv(dns);
    logln!("network: {link} {addr}/{prefix} gateway {gw:?} dns {dns:?}");
    Ok(NetStatus {
        link: link.to_string(),
        addr: Some((addr, prefix)),
        gateway: gw,
        dns: dns.to_vec(),
    })
}

/// Brings loopback up (always wanted, also before the wizard).
pub fn loopback_up() {
    let r = Netlink::open().and_then(|mut nl| nl.link_up(if_index("lo")?));
    if let Err(e) = r {
        logln!("loopback: {e}");
    }
}

/// Applies `cfg`: link up, VLAN, then static address or DHCP (waits up to `dhcp_timeout` for
/// the first lease; renewals continue in a background thread).
pub fn apply(cfg: &NetConfig, dhcp_timeout: Duration) -> Result<NetStatus, String> {
    let mut nl = Netlink::open().map_err(|e| format!("netlink: {e}"))?;
    let parent = if_index(&cfg.iface).map_err(|e| format!("no link {}: {e}", cfg.iface))?;
    nl.link_up(parent)
        .map_err(|e| format!("{}: link up: {e}", cfg.iface))?;
    let link = match cfg.vlan {
        None => cfg.iface.clone(),
        Some(vid) => {
            let name = format!("{}.{vid}", cfg.iface);
            if if_index(&name).is_err() {
                nl.add_vlan(parent, &name, vid)
                    .map_err(|e| format!("create VLAN {name}: {e}"))?;
            }
            let idx = if_index(&name).map_err(|e| format!("{name}: {e}"))?;
            nl.link_up(idx)
                .map_err(|e| format!("{name}: link up: {e}"))?;
            name
        }
    };
    let index = if_index(&link).map_err(|e| format!("{link}: {e}"))?;
    match &cfg.mode {
        NetMode::Static {
            addr,
            prefix,
            gateway,
            dns,
        } => apply_addr(&mut nl, index, &link, *addr, *prefix, *gateway, dns),
        NetMode::Dhcp => {
            logln!("network: DHCP on {link}");
            // The smoltcp device is not Send: the client lives on its own thread for good
            // (renewals), and hands the first lease back here.
            let (tx, rx) = std::sync::mpsc::channel::<Result<NetStatus, String>>();
            let thread_link = link.clone();
            std::thread::Builder::new()
                .name("dhcp".into())
                .spawn(move || dhcp_thread(thread_link, index, tx))
                .map_err(|e| format!("dhcp thread: {e}"))?;
            rx.recv_timeout(dhcp_timeout + Duration::from_secs(1))
                .map_err(|_| format!("{link}: no DHCP lease within {} s", dhcp_timeout.as_secs()))?
        }
    }
}

fn dhcp_thread(
    link: String,
    index: u32,
    first: std::sync::mpsc::Sender<Result<NetStatus, String>>,
) {
    let setup = Netlink::open()
        .map_err(|e| format!("netlink: {e}"))
        .and_then(|nl| Ok((nl, dhcp::Client::new(&link)?)));
    let (mut nl, mut client) = match setup {
        Ok(x) => x,
        Err(e) => {
            let _ = first.send(Err(e));
            return;
        }
    };
    let mut first = Some(first);
    loop {
        match client.next_event(Duration::from_secs(3600)) {
            Ok(Some(l)) => {
                let r = apply_addr(&mut nl, index, &link, l.addr, l.prefix, l.router, &l.dns);
                if let Some(tx) = first.take() {
                    let _ = tx.send(r);
                }
            }
            // smoltcp reports "deconfigured" once at start too; only a real loss is news.
            Ok(None) if first.is_none() => {
                logln!("network: DHCP lease lost on {link}; still trying")
            }
            Ok(None) => {}
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_lines_are_validated() {
        let m = parse_static("10.0.2.20/24 10.0.2.2 10.0.2.3").unwrap();
        assert_eq!(
            m,
            NetMode::Static {
                addr: "10.0.2.20".parse().unwrap(),
                prefix: 24,
                gateway: Some("10.0.2.2".parse().unwrap()),
                dns: vec!["10.0.2.3".parse().unwrap()],
            }
        );
        assert!(parse_static("10.0.2.20").unwrap_err().contains("prefix"));
        assert!(parse_static("10.0.2.300/24")
            .unwrap_err()
            .contains("not an IPv4"));
        assert!(parse_static("10.0.2.0/24")
            .unwrap_err()
            .contains("network or broadcast"));
        assert!(parse_static("10.0.2.20/33")
            .unwrap_err()
            .contains("1 to 32"));
        assert!(parse_static("10.0.2.20/24 10.0.3.1")
            .unwrap_err()
            .contains("not inside"));
        assert!(parse_static("127.0.0.1/8")
            .unwrap_err()
            .contains("cannot be used"));
        assert!(parse_static("").is_err());
    }

    #[test]
    fn vlan_ids_are_bounded() {
        assert_eq!(parse_vlan("").unwrap(), None);
        assert_eq!(parse_vlan("100").unwrap(), Some(100));
        assert!(parse_vlan("4095").is_err());
        assert!(parse_vlan("x").is_err());
    }
}
