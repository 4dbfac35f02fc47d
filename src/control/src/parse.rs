//! Names and sizes, parsed and checked the same way for every front end.

use crate::error::ControlError;

/// Longest name of a virtual disk or snapshot, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Sanity bound on any virtual disk size (1 PiB); the engine applies the pool's real limit.
pub const MAX_VDISK_SIZE_BYTES: u64 = 1 << 50;

/// Check a virtual disk or snapshot name: 1..=64 ASCII letters, digits, `.`, `_` or `-`,
/// starting with a letter or digit (so it can never look like an option or a hidden file).
pub fn validate_name(what: &str, name: &str) -> Result<(), ControlError> {
    if name.is_empty() {
        return Err(ControlError::invalid(format!("{what} name is empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ControlError::invalid(format!(
            "{what} name is {} bytes long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        )));
    }
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok {
        return Err(ControlError::invalid(format!(
            "{what} name {name:?} must start with a letter or digit"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ControlError::invalid(format!(
            "{what} name {name:?} contains {bad:?}; use letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// Parse a size: a plain number of bytes (`4096`) or a number with a binary unit
/// (`512K`, `512M`, `10G`, `2T`, `1P`; `KiB`/`MiB`/.. and a trailing `B` are accepted too).
/// Anything else (`10X`, `1.5G`, `-1`, ``, overflow) is a clear error.
pub fn parse_size(text: &str) -> Result<u64, ControlError> {
    let s = text.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    if num.is_empty() {
        return Err(ControlError::invalid(format!(
            "size {text:?} is not a number (examples: 4096, 512M, 10G)"
        )));
    }
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        "P" | "PB" | "PIB" => 50,
        _ => {
            return Err(ControlError::invalid(format!(
                "size {text:?} has an unknown unit {unit:?} (use K, M, G, T or P)"
            )))
        }
    };
    let value: u64 = num
        .parse()
        .map_err(|_| ControlError::invalid(format!("size {text:?} is too large")))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| ControlError::invalid(format!("size {text:?} is too large")))
}

/// Render bytes for people: `10 GiB`, `512 MiB`, `4.5 KiB`, `123 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Check a size for a virtual disk (create/resize): positive, 4 KiB aligned, within bounds.
pub(crate) fn validate_vdisk_size(size_bytes: u64) -> Result<(), ControlError> {
    if size_bytes == 0 {
        return Err(ControlError::invalid("size must be greater than zero"));
    }
    if !size_bytes.is_multiple_of(4096) {
        return Err(ControlError::invalid(format!(
            "size {size_bytes} is not a multiple of 4096 bytes"
        )));
    }
    if size_bytes > MAX_VDISK_SIZE_BYTES {
        return Err(ControlError::invalid(format!(
            "size {} is larger than the maximum of {}",
            format_size(size_bytes),
            format_size(MAX_VDISK_SIZE_BYTES)
        )));
    }
    Ok(())
}

/// Parse `ip:port` as the API documents it: dotted IPv4 (`127.0.0.1:10809`) or bracketed IPv6
/// of hex groups (`[::1]:10809`, `[fd00::5]:0`); the port is decimal 0-65535 without leading
/// zeros. Stricter than `SocketAddr`'s parser on purpose: no zone ids (`%eth0`), no IPv4 inside
/// IPv6 and no `080` ports, so the OpenAPI pattern and the node accept exactly the same text.
pub fn parse_socket_addr(text: &str) -> Option<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let (host, port) = text.rsplit_once(':')?;
    let port_ok = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && (port == "0" || !port.starts_with('0'));
    if !port_ok {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    let ip = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        if !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return None;
        }
        IpAddr::V6(v6.parse::<Ipv6Addr>().ok()?)
    } else {
        // Rust's IPv4 parser already refuses leading zeros and anything but four decimal parts.
        IpAddr::V4(host.parse::<Ipv4Addr>().ok()?)
    };
    Some(SocketAddr::new(ip, port))
}

/// Check a host path given to the node (disk files, import/export images): absolute, bounded,
/// no NUL. The node resolves nothing relative to its own working directory.
pub(crate) fn validate_path(what: &str, path: &str) -> Result<(), ControlError> {
    if path.is_empty() {
        return Err(ControlError::invalid(format!("{what} path is empty")));
    }
    if path.len() > 4096 || path.contains('\0') {
        return Err(ControlError::invalid(format!("{what} path is not valid")));
    }
    if !path.starts_with('/') {
        return Err(ControlError::invalid(format!(
            "{what} path {path:?} must be absolute"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn sizes_parse_strictly() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("10g").unwrap(), 10 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
        for bad in [
            "",
            "G",
            "10X",
            "1.5G",
            "-1",
            "10 G",
            "99999999999999999999",
            "20000000P",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidArgument, "{bad}");
            assert!(!err.message.is_empty());
        }
        assert!(parse_size("10X").unwrap_err().message.contains("unit"));
    }

    #[test]
    fn names_are_checked() {
        for good in ["a", "web-01", "db.snap_2", &"x".repeat(64)] {
            validate_name("vdisk", good).unwrap();
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "ä", &"x".repeat(65), "a\0"] {
            assert_eq!(
                validate_name("vdisk", bad).unwrap_err().code,
                ErrorCode::InvalidArgument,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn socket_addresses_are_parsed_strictly() {
        for (good, want) in [
            ("127.0.0.1:10809", "127.0.0.1:10809"),
            ("0.0.0.0:0", "0.0.0.0:0"),
            ("[::1]:10809", "[::1]:10809"),
            ("[fd00::5]:65535", "[fd00::5]:65535"),
            ("[1:2:3:4:5:6:7::]:1", "[1:2:3:4:5:6:7:0]:1"),
            ("[0001:ABCD::]:80", "[1:abcd::]:80"),
        ] {
            let got = parse_socket_addr(good).unwrap_or_else(|| panic!("{good} refused"));
            assert_eq!(got.to_string(), want);
        }
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:080",
            "127.0.0.1:65536",
            "127.0.0.01:1",
            "localhost:80",
            "::1:80",
            "[::1]",
            "[::1%2]:80",
            "[::ffff:1.2.3.4]:80",
            "[1:2:3:4:5:6:7:8::]:1",
            "[::1]:+80",
            " 127.0.0.1:80",
        ] {
            assert!(parse_socket_addr(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes_format_for_people() {
        assert_eq!(format_size(123), "123 B");
        assert_eq!(format_size(10 << 30), "10 GiB");
        assert_eq!(format_size(4608), "4.5 KiB");
    }

    #[test]
    fn vdisk_sizes_and_paths_are_bounded() {
        validate_vdisk_size(4096).unwrap();
        assert!(validate_vdisk_size(0).is_err());
        assert!(validate_vdisk_size(4097).is_err());
        assert!(validate_vdisk_size(MAX_VDISK_SIZE_BYTES + 4096).is_err());
        validate_path("image", "/tmp/x.img").unwrap();
        assert!(validate_path("image", "x.img").is_err());
        assert!(validate_path("image", "").is_err());
    }
}
