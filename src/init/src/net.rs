//! The node's network configuration: what the wizard asks for (DHCP or a static IPv4 address,
//! optional VLAN) and its validation. Applying it lives in `netlive`. Must never let an invalid
//! configuration through.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;

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

/// A second link for the cluster's own traffic (member RPC, replication), apart from the
/// management network: a static address on a private segment. Never gets a gateway or DNS, so
/// it cannot take over the management network's default route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNet {
    pub iface: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl fmt::Display for ClusterNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} static {}/{}", self.iface, self.addr, self.prefix)
    }
}

/// Parses the cluster link's "ADDRESS/PREFIX" (validated like a static management address; a
/// gateway or DNS server is refused: the cluster segment is local).
pub fn parse_cluster_addr(line: &str) -> Result<(Ipv4Addr, u8), String> {
    if line.split_whitespace().count() > 1 {
        return Err(
            "give only ADDRESS/PREFIX for the cluster link (no gateway or DNS), e.g. 10.10.0.1/24"
                .into(),
        );
    }
    match parse_static(line)? {
        NetMode::Static { addr, prefix, .. } => Ok((addr, prefix)),
        NetMode::Dhcp => Err("the cluster link takes a static ADDRESS/PREFIX".into()),
    }
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

pub use crate::netlive::{
    apply, apply_cluster, cluster_addr, loopback_up, replace, status, NetStatus,
};

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
    fn cluster_addresses_are_static_and_local() {
        assert_eq!(
            parse_cluster_addr("10.10.0.1/24").unwrap(),
            ("10.10.0.1".parse().unwrap(), 24)
        );
        assert!(parse_cluster_addr("10.10.0.1/24 10.10.0.254")
            .unwrap_err()
            .contains("no gateway"));
        assert!(parse_cluster_addr("10.10.0.1")
            .unwrap_err()
            .contains("prefix"));
        assert!(parse_cluster_addr("").is_err());
    }

    #[test]
    fn vlan_ids_are_bounded() {
        assert_eq!(parse_vlan("").unwrap(), None);
        assert_eq!(parse_vlan("100").unwrap(), Some(100));
        assert!(parse_vlan("4095").is_err());
        assert!(parse_vlan("x").is_err());
    }
}
