//! CLI commands that talk to a running node: build a `control::Request`, send it over the
//! node's socket, print the reply (text, or `--json`), and exit with the documented code.

use std::path::Path;

use control::{ControlError, Request};

use crate::cli::{Command, DiskCmd, NbdCmd, SnapshotCmd, Target, VdiskCmd};
use crate::render;

/// Host paths go to the node as absolute paths: it does not share our working directory.
fn abs(p: &Path) -> Result<String, ControlError> {
    std::path::absolute(p)
        .map(|p| p.display().to_string())
        .map_err(|e| ControlError::invalid(format!("path {}: {e}", p.display())))
}

fn request(cmd: Command) -> Result<Request, ControlError> {
    Ok(match cmd {
        Command::Disk(d) => match d {
            DiskCmd::List => Request::DiskList,
            DiskCmd::Add { path } => Request::DiskAdd { path: abs(&path)? },
            DiskCmd::Remove { disk } => Request::DiskRemove { disk },
            DiskCmd::Scrub => Request::DiskScrub,
            DiskCmd::Probe { path } => Request::DiskProbe { path: abs(&path)? },
        },
        Command::Vdisk(v) => match v {
            VdiskCmd::Create { name, size } => Request::VdiskCreate {
                name,
                size_bytes: size,
            },
            VdiskCmd::List => Request::VdiskList,
            VdiskCmd::Show { name } => Request::VdiskGet { name },
            VdiskCmd::Resize { name, size } => Request::VdiskResize {
                name,
                size_bytes: size,
            },
            VdiskCmd::Delete { name } => Request::VdiskDelete { name },
            VdiskCmd::Clone {
                source,
                name,
                snapshot,
            } => Request::VdiskClone {
                source,
                snapshot,
                name,
            },
            VdiskCmd::Import { name, file } => Request::VdiskImport {
                name,
                file: abs(&file)?,
            },
            VdiskCmd::Export {
                name,
                file,
                snapshot,
            } => Request::VdiskExport {
                name,
                snapshot,
                file: abs(&file)?,
            },
            VdiskCmd::Takeover { name, to, force } => Request::VdiskTakeover { name, to, force },
            VdiskCmd::Nbd {
                name,
                snapshot,
                listen,
                read_only,
            } => Request::NbdStart {
                vdisk: name,
                snapshot,
                listen,
                read_only,
            },
        },
        Command::Snapshot(s) => match s {
            SnapshotCmd::Create { vdisk, name } => Request::SnapshotCreate { vdisk, name },
            SnapshotCmd::List { vdisk } => Request::SnapshotList { vdisk },
            SnapshotCmd::Delete { vdisk, name } => Request::SnapshotDelete { vdisk, name },
            SnapshotCmd::Rollback { vdisk, name } => Request::SnapshotRollback { vdisk, name },
            SnapshotCmd::Diff { vdisk, from, to } => Request::SnapshotDiff { vdisk, from, to },
        },
        Command::Nbd(n) => match n {
            NbdCmd::List => Request::NbdList,
            NbdCmd::Stop { id } => Request::NbdStop { id },
        },
        Command::Pool => Request::PoolInfo,
        Command::Stats => Request::Stats,
        Command::Vm(v) => crate::vmcmd::request(v)?,
        Command::Node(_) | Command::Bench(_) | Command::Cluster(_) | Command::Witness(_) => {
            return Err(ControlError::internal("not a client command"))
        }
    })
}

/// Run one client command; returns the process exit code.
pub fn run(target: &Target, json: bool, cmd: Command) -> i32 {
    let result = request(cmd).and_then(|req| {
        // Check locally first: bad input fails fast with the node's own words, and never
        // reaches the node at all.
        req.validate()?;
        crate::remote::call(target, &req)
    });
    match result {
        Ok(reply) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&reply).unwrap_or_else(|e| format!("{e}"))
                );
            } else {
                print!("{}", render::reply(&reply));
                if let Some(note) = elsewhere(target, &reply) {
                    println!("{note}");
                }
            }
            control::EXIT_OK
        }
        Err(e) => {
            if json {
                let body = serde_json::json!({"error": {"code": e.code, "message": e.message}});
                println!("{body}");
            }
            eprintln!("cairn: error: {}", e.message);
            e.exit_code()
        }
    }
}

/// Under a list of virtual disks or VMs: those the cluster records that the list does not
/// show, or None (none, another reply, or no cluster status to compare with). Over the socket
/// the list is this node's own (each member manages its own from its CLI); through a node's
/// API (`--server`) it is every member's, and what is missing is on members that did not
/// answer.
fn elsewhere(target: &Target, reply: &control::Reply) -> Option<String> {
    let (what, here): (&str, Vec<&str>) = match reply {
        control::Reply::Vdisks(v) => ("virtual disks", v.iter().map(|d| d.name.as_str()).collect()),
        control::Reply::Vms(v) => ("VMs", v.iter().map(|m| m.name.as_str()).collect()),
        _ => return None,
    };
    let Ok(control::Reply::Cluster(c)) = crate::remote::call(target, &Request::ClusterStatus)
    else {
        return None;
    };
    let all = if what == "VMs" { &c.vms } else { &c.vdisks };
    elsewhere_note(what, all, &here, target.server.is_some())
}

/// The note itself: the names in `all` missing from `here`, sorted, or None. `whole`: `here`
/// is every member's list (through the API).
fn elsewhere_note(what: &str, all: &[String], here: &[&str], whole: bool) -> Option<String> {
    let here: std::collections::HashSet<&str> = here.iter().copied().collect();
    let mut others: Vec<&str> = all
        .iter()
        .map(String::as_str)
        .filter(|n| !here.contains(n))
        .collect();
    if others.is_empty() {
        return None;
    }
    others.sort_unstable();
    Some(if whole {
        format!(
            "(the cluster records {} more {what} on members that did not answer: {})",
            others.len(),
            others.join(", ")
        )
    } else {
        format!(
            "(this node's {what}; other cluster members hold {} more: {} — list them there, or \
             through any node's API: cairn --server)",
            others.len(),
            others.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_note_names_what_other_members_hold() {
        let all = ["web".to_string(), "db".into(), "bd".into()];
        assert_eq!(
            super::elsewhere_note("VMs", &all, &["web", "db", "bd"], false),
            None
        );
        assert_eq!(
            super::elsewhere_note("virtual disks", &all, &["web"], false).as_deref(),
            Some(
                "(this node's virtual disks; other cluster members hold 2 more: bd, db — list \
                 them there, or through any node's API: cairn --server)"
            )
        );
        assert_eq!(
            super::elsewhere_note("VMs", &all, &["web", "db"], true).as_deref(),
            Some("(the cluster records 1 more VMs on members that did not answer: bd)")
        );
    }
}
