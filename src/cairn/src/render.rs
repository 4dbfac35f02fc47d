//! Text output of replies for people (the `--json` output is the reply itself).

use control::{format_size, DiskProbeView, Reply};
use std::fmt::Write;

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(l, "{:<w$}  ", c, w = width[i]);
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, header.to_vec());
    for r in &rows {
        line(&mut out, r.iter().map(|s| s.as_str()).collect());
    }
    out
}

/// The member a listed item is on: its name, or `this node` (the node answering).
pub fn node_word(node: Option<&str>) -> String {
    node.unwrap_or("this node").to_string()
}

/// `2026-11-25 17:44 UTC` from seconds since the epoch (no time-zone library: UTC only).
fn when(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

pub fn reply(r: &Reply) -> String {
    match r {
        Reply::Done => "ok\n".into(),
        Reply::Disks(d) => table(
            &["ID", "PATH", "SIZE", "USED", "STATE", "ERRORS"],
            d.iter()
                .map(|d| {
                    vec![
                        d.id.clone(),
                        d.path.clone(),
                        format_size(d.size_bytes),
                        format_size(d.used_bytes),
                        // Another member's disk (this pool keeps copies there): added and
                        // removed on that member.
                        if d.remote {
                            format!("{}, member {}'s", d.state, d.node_id)
                        } else {
                            d.state.clone()
                        },
                        d.errors.to_string(),
                    ]
                })
                .collect(),
        ),
        Reply::Disk(d) => format!(
            "disk {} ({}): {}, {} used, {}\n",
            d.id,
            d.path,
            format_size(d.size_bytes),
            format_size(d.used_bytes),
            d.state
        ),
        Reply::Probe(p) => match p {
            DiskProbeView::Blank => "blank: can join the pool\n".into(),
            DiskProbeView::Cairn { pool_id, disk_id } => {
                format!("cairn disk {disk_id} of pool {pool_id}\n")
            }
            DiskProbeView::Foreign { reason } => {
                format!("foreign data ({reason}): will be refused\n")
            }
        },
        Reply::Pool(p) => format!(
            "disks:          {}\nraw:            {} ({} used)\nusable:         {} (two replicas)\nlogical limit:  {}\ndegraded:       {} chunks\nrebalancing:    {}\n",
            p.disks,
            format_size(p.raw_bytes),
            format_size(p.used_raw_bytes),
            format_size(p.usable_bytes),
            format_size(p.logical_limit_bytes),
            p.degraded_chunks,
            if p.rebalancing { "yes" } else { "no" }
        ),
        Reply::Vdisks(v) => {
            // Through a node's API the list is every member's: each names its member.
            let nodes = v.iter().any(|v| v.node.is_some());
            let mut head = vec!["NAME", "SIZE", "USED", "SNAPSHOTS", "CREATED"];
            if nodes {
                head.push("NODE");
            }
            let rows = v
                .iter()
                .map(|v| {
                    let mut row = vec![
                        v.name.clone(),
                        format_size(v.size_bytes),
                        format_size(v.used_bytes),
                        v.snapshots.to_string(),
                        when(v.created_unix),
                    ];
                    if nodes {
                        row.push(node_word(v.node.as_deref()));
                    }
                    row
                })
                .collect();
            table(&head, rows)
        }
        Reply::Vdisk(v) => format!(
            "name:       {}\nid:         {}\nsize:       {} ({} bytes)\nused:       {}\nsnapshots:  {}\ncreated:    {}\n{}",
            v.name,
            v.id,
            format_size(v.size_bytes),
            v.size_bytes,
            format_size(v.used_bytes),
            v.snapshots,
            when(v.created_unix),
            v.node
                .as_ref()
                .map(|n| format!("node:       {n}\n"))
                .unwrap_or_default()
        ),
        Reply::Snapshots(s) => table(
            &["DISK", "SNAPSHOT", "ID", "CREATED"],
            s.iter()
                .map(|s| {
                    vec![
                        s.vdisk.clone(),
                        s.name.clone(),
                        s.id.to_string(),
                        when(s.created_unix),
                    ]
                })
                .collect(),
        ),
        Reply::Snapshot(s) => format!("snapshot {}@{} created\n", s.vdisk, s.name),
        Reply::Ranges(r) => {
            let total: u64 = r.iter().map(|r| r.len).sum();
            let mut out = table(
                &["OFFSET", "LENGTH"],
                r.iter()
                    .map(|r| vec![r.offset.to_string(), r.len.to_string()])
                    .collect(),
            );
            let _ = writeln!(out, "{} ranges, {} changed", r.len(), format_size(total));
            out
        }
        Reply::Transfer(t) => format!(
            "{} <-> {}: {} ({} written, zero blocks skipped) in {} ms\n",
            t.vdisk,
            t.file,
            format_size(t.size_bytes),
            format_size(t.written_bytes),
            t.elapsed_ms
        ),
        Reply::NbdExports(x) => table(
            &["ID", "DISK", "SNAPSHOT", "URI", "MODE"],
            x.iter()
                .map(|x| {
                    vec![
                        x.id.to_string(),
                        x.vdisk.clone(),
                        x.snapshot.clone().unwrap_or_else(|| "-".into()),
                        format!("nbd://{}/{}", x.listen, x.export_name),
                        if x.read_only { "ro" } else { "rw" }.into(),
                    ]
                })
                .collect(),
        ),
        Reply::NbdExport(x) => format!(
            "export {}: nbd://{}/{} ({})\n",
            x.id,
            x.listen,
            x.export_name,
            if x.read_only { "read-only" } else { "read-write" }
        ),
        Reply::Stats(s) => {
            // The per-vdisk counters get a line each instead of one long JSON run.
            let mut engine = s.engine.clone();
            let io = engine
                .as_object_mut()
                .and_then(|o| o.remove("vdisk_io"))
                .unwrap_or_default();
            let mut out = format!(
                "node:      {} (id {})\nuptime:    {} s\ndisks:     {}\nvdisks:    {}\nexports:   {}\nrequests:  {}\nraw:       {} ({} used)\nengine:    {}\n",
                s.node_name,
                s.node_id,
                s.uptime_secs,
                s.disks.len(),
                s.vdisks,
                s.nbd_exports,
                s.requests,
                format_size(s.pool.raw_bytes),
                format_size(s.pool.used_raw_bytes),
                engine
            );
            for v in io.as_array().into_iter().flatten() {
                let n = |op: &str, k: &str| v[op][k].as_u64().unwrap_or(0);
                out.push_str(&format!(
                    "vdisk {}: reads {} ({}), writes {} ({}), flushes {}, errors {}\n",
                    v["name"].as_str().unwrap_or("?"),
                    n("read", "ops"),
                    format_size(n("read", "bytes")),
                    n("write", "ops"),
                    format_size(n("write", "bytes")),
                    n("flush", "ops"),
                    n("read", "errors") + n("write", "errors") + n("flush", "errors"),
                ));
            }
            out
        }
        Reply::Vm(_) | Reply::Vms(_) | Reply::Console(_) => {
            crate::vmcmd::render(r).unwrap_or_default()
        }
        other => format!("{other:?}\n"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_render_in_utc() {
        assert_eq!(super::when(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::when(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(super::when(1_795_628_654), "2026-11-25 17:44 UTC");
    }

    #[test]
    fn another_members_disk_says_whose_it_is() {
        let disk = |remote: bool, node_id: u64| control::DiskView {
            id: "d".into(),
            name: "p".into(),
            path: "p".into(),
            node_id,
            size_bytes: 1 << 30,
            used_bytes: 0,
            state: "active".into(),
            errors: 0,
            remote,
        };
        let out = super::reply(&control::Reply::Disks(vec![disk(false, 77), disk(true, 2)]));
        let rows: Vec<&str> = out.lines().skip(1).collect();
        assert!(
            rows[0].contains("active") && !rows[0].contains("member"),
            "{out}"
        );
        assert!(rows[1].contains("active, member 2's"), "{out}");
    }

    #[test]
    fn a_list_through_the_api_names_each_disks_member() {
        let vd = |name: &str, node: Option<&str>| control::VdiskView {
            name: name.into(),
            id: 1,
            size_bytes: 1 << 20,
            used_bytes: 0,
            snapshots: 0,
            created_unix: 0,
            node: node.map(Into::into),
        };
        // Over the socket (no member named): no NODE column.
        let own = super::reply(&control::Reply::Vdisks(vec![vd("a", None)]));
        assert!(!own.contains("NODE"), "{own}");
        let all = super::reply(&control::Reply::Vdisks(vec![
            vd("a", None),
            vd("b", Some("n2")),
        ]));
        let lines: Vec<&str> = all.lines().collect();
        assert!(lines[0].ends_with("NODE"), "{all}");
        assert!(lines[1].trim_end().ends_with("this node"), "{all}");
        assert!(lines[2].trim_end().ends_with("n2"), "{all}");
        let one = super::reply(&control::Reply::Vdisk(vd("b", Some("n2"))));
        assert!(one.contains("node:       n2"), "{one}");
    }
}
