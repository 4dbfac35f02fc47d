//! A minimal AML encoder: just the opcodes the DSDT uses (names, scopes, devices, methods,
//! an I/O operation region and its fields, integer arithmetic, If, Notify, Return and method
//! calls), each producing bytes per the ACPI 6.x grammar (chapter 20). Builds bytes only; it
//! never evaluates AML, and callers pass well-formed names (4-character segments).

/// Encodes a PkgLength for a body of `len` bytes (the length counts its own bytes).
pub fn pkg_length(len: usize) -> Vec<u8> {
    let total = |n: usize| len + n;
    if total(1) < 1 << 6 {
        vec![total(1) as u8]
    } else if total(2) < 1 << 12 {
        let t = total(2);
        vec![(1 << 6) | (t & 0xf) as u8, (t >> 4) as u8]
    } else if total(3) < 1 << 20 {
        let t = total(3);
        vec![(2 << 6) | (t & 0xf) as u8, (t >> 4) as u8, (t >> 12) as u8]
    } else {
        let t = total(4);
        vec![
            (3 << 6) | (t & 0xf) as u8,
            (t >> 4) as u8,
            (t >> 12) as u8,
            (t >> 20) as u8,
        ]
    }
}

/// A name string: `\\` root prefix, `^` parent prefixes and dot-separated 4-character segments
/// (shorter segments are padded with `_`).
pub fn name(path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = path;
    if let Some(r) = rest.strip_prefix('\\') {
        out.push(b'\\');
        rest = r;
    }
    while let Some(r) = rest.strip_prefix('^') {
        out.push(b'^');
        rest = r;
    }
    let segs: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('.').collect()
    };
    match segs.len() {
        0 => out.push(0x00),
        1 => {}
        2 => out.push(0x2e),
        n => {
            out.push(0x2f);
            out.push(n as u8);
        }
    }
    for s in segs {
        let mut seg = [b'_'; 4];
        for (d, c) in seg.iter_mut().zip(s.bytes()) {
            *d = c;
        }
        out.extend_from_slice(&seg);
    }
    out
}

/// The smallest integer encoding of `v`.
pub fn int(v: u64) -> Vec<u8> {
    match v {
        0 => vec![0x00],
        1 => vec![0x01],
        2..=0xff => vec![0x0a, v as u8],
        0x100..=0xffff => {
            let mut b = vec![0x0b];
            b.extend_from_slice(&(v as u16).to_le_bytes());
            b
        }
        0x1_0000..=0xffff_ffff => {
            let mut b = vec![0x0c];
            b.extend_from_slice(&(v as u32).to_le_bytes());
            b
        }
        _ => {
            let mut b = vec![0x0e];
            b.extend_from_slice(&v.to_le_bytes());
            b
        }
    }
}

/// A compressed EISA id ("PNP0A03") as the DWord integer `EisaId()` produces.
pub fn eisa_id(id: &str) -> Vec<u8> {
    let b = id.as_bytes();
    let letter = |c: u8| u32::from(c.wrapping_sub(0x40) & 0x1f);
    let hex = |c: u8| u32::from(char::from(c).to_digit(16).unwrap_or(0) as u8);
    let v = letter(b[0]) << 26
        | letter(b[1]) << 21
        | letter(b[2]) << 16
        | hex(b[3]) << 12
        | hex(b[4]) << 8
        | hex(b[5]) << 4
        | hex(b[6]);
    let mut out = vec![0x0c];
    out.extend_from_slice(&v.swap_bytes().to_le_bytes());
    out
}

fn with_pkg(op: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = op.to_vec();
    out.extend(pkg_length(body.len()));
    out.extend_from_slice(body);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// `Name (path, value)`.
pub fn name_decl(path: &str, value: &[u8]) -> Vec<u8> {
    cat(&[&[0x08], &name(path), value])
}

/// A string constant.
pub fn string(s: &str) -> Vec<u8> {
    cat(&[&[0x0d], s.as_bytes(), &[0]])
}

/// `Buffer () { bytes }`.
pub fn buffer(bytes: &[u8]) -> Vec<u8> {
    with_pkg(&[0x11], &cat(&[&int(bytes.len() as u64), bytes]))
}

/// `Scope (path) { body }`.
pub fn scope(path: &str, body: &[u8]) -> Vec<u8> {
    with_pkg(&[0x10], &cat(&[&name(path), body]))
}

/// `Device (path) { body }`.
pub fn device(path: &str, body: &[u8]) -> Vec<u8> {
    with_pkg(&[0x5b, 0x82], &cat(&[&name(path), body]))
}

/// `Method (path, args, NotSerialized) { body }`.
pub fn method(path: &str, args: u8, body: &[u8]) -> Vec<u8> {
    with_pkg(&[0x14], &cat(&[&name(path), &[args & 7], body]))
}

/// `OperationRegion (path, SystemIO, port, len)`.
pub fn op_region_io(path: &str, port: u16, len: u16) -> Vec<u8> {
    cat(&[
        &[0x5b, 0x80],
        &name(path),
        &[0x01],
        &int(u64::from(port)),
        &int(u64::from(len)),
    ])
}

/// `Field (region, DWordAcc, NoLock, WriteAsZeros) { name, 32, ... }`.
pub fn field_dwords(region: &str, names: &[&str]) -> Vec<u8> {
    let mut body = name(region);
    body.push(0x03 | (2 << 5));
    for n in names {
        body.extend(name(n));
        body.extend(pkg_length(32 - 1)); // a bit count in PkgLength form: 32 bits, one byte
    }
    with_pkg(&[0x5b, 0x81], &body)
}

/// Arg0..Arg6.
pub fn arg(n: u8) -> Vec<u8> {
    vec![0x68 + n.min(6)]
}

/// Local0..Local7.
pub fn local(n: u8) -> Vec<u8> {
    vec![0x60 + n.min(7)]
}

/// `Store (src, dst)`.
pub fn store(src: &[u8], dst: &[u8]) -> Vec<u8> {
    cat(&[&[0x70], src, dst])
}

/// `And (a, b)` with no target.
pub fn and(a: &[u8], b: &[u8]) -> Vec<u8> {
    cat(&[&[0x7b], a, b, &[0x00]])
}

/// `ShiftLeft (a, b)` with no target.
pub fn shift_left(a: &[u8], b: &[u8]) -> Vec<u8> {
    cat(&[&[0x79], a, b, &[0x00]])
}

/// `If (predicate) { body }`.
pub fn if_(predicate: &[u8], body: &[u8]) -> Vec<u8> {
    with_pkg(&[0xa0], &cat(&[predicate, body]))
}

/// `Return (value)`.
pub fn ret(value: &[u8]) -> Vec<u8> {
    cat(&[&[0xa4], value])
}

/// `Notify (object, value)`.
pub fn notify(object: &str, value: u64) -> Vec<u8> {
    cat(&[&[0x86], &name(object), &int(value)])
}

/// A method call `path (args...)` (the method must be declared before for parsers to know
/// its argument count).
pub fn call(path: &str, args: &[&[u8]]) -> Vec<u8> {
    let mut out = name(path);
    for a in args {
        out.extend_from_slice(a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(pkg_length(5), [6]);
        assert_eq!(pkg_length(62), [63]);
        // 63 body bytes + 2 length bytes = 65 = 0x41: lead 0x41 & 0xf | 1<<6, then 0x41 >> 4.
        assert_eq!(pkg_length(63), [0x41, 0x04]);
        // 5000 + 3 = 0x138b: low nibble in the lead byte, then 0x38, then 0x01.
        assert_eq!(pkg_length(5000), [0x8b, 0x38, 0x01]);
        assert_eq!(name("_SB"), b"_SB_");
        assert_eq!(name("\\_SB.PCI0"), b"\\\x2e_SB_PCI0");
        assert_eq!(name("\\_SB.PCI0.PCNT"), b"\\\x2f\x03_SB_PCI0PCNT");
        assert_eq!(int(0), [0]);
        assert_eq!(int(0x0f), [0x0a, 0x0f]);
        assert_eq!(int(0xae00), [0x0b, 0x00, 0xae]);
        assert_eq!(int(1 << 31), [0x0c, 0, 0, 0, 0x80]);
        // EisaId ("PNP0A03") is 0x030AD041 in every ACPI table that names a PCI root.
        assert_eq!(eisa_id("PNP0A03"), [0x0c, 0x41, 0xd0, 0x0a, 0x03]);
        assert_eq!(method("_E01", 0, &[])[..3], [0x14, 0x06, b'_']);
    }
}
