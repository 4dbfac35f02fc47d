//! `cairn cluster ...` (status, token, join, locate, remove: control requests to the local node or
//! witness) and `cairn witness` (run a witness in the foreground).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use control::{ClusterTokenView, ClusterView, ControlError, Reply, Request};

use crate::cli::Target;

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Members, leader, each node's health, raft term and commit index, degraded data.
    Status,
    /// Issue a one-time join token for a new node (or a witness).
    Token {
        /// The token admits a witness (a vote only) instead of a data node.
        #[arg(long)]
        witness: bool,
        /// How long the token stays valid, in seconds (default 3600).
        #[arg(long, value_name = "SECS")]
        ttl: Option<u64>,
    },
    /// Make this fresh node join the cluster of the member at ADDRESS.
    Join {
        /// A member's cluster address (shown by `cairn cluster token` and `cluster status`).
        #[arg(long)]
        address: String,
        /// A token from `cairn cluster token` on a member.
        #[arg(long)]
        token: String,
    },
    /// Tell this node where member NODE (id or name) is now, when every member's cluster
    /// address changed at once (a renumbered site, new DHCP leases) and none can reach another
    /// to announce its own. NODE must answer there (with its certificate); once members reach
    /// each other again, each moved member's new address is committed and the others follow.
    Locate {
        node: String,
        /// The member's cluster address now (ip:port: the address it listens on).
        #[arg(long)]
        address: String,
    },
    /// Remove a member (by id or name) from the cluster. Refused while it owns virtual disks
    /// or VMs (they are listed); delete or move them first. A data node is drained first: its
    /// data is re-mirrored on the other nodes (progress is printed), then it leaves. Refused if
    /// the other nodes lack the room (or fewer than two data nodes would remain).
    Remove {
        node: String,
        /// Remove it at once, without draining: the node is dead and being replaced (its
        /// definitions stay; redundancy is rebuilt afterwards).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct WitnessArgs {
    /// Data directory (created if missing): raft state and the control socket.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Cluster address (ip:port; the join endpoint is the next port). Fixed at the first start.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Member name (default "witness").
    #[arg(long)]
    pub name: Option<String>,
}

fn request(cmd: ClusterCmd) -> Request {
    match cmd {
        ClusterCmd::Status => Request::ClusterStatus,
        ClusterCmd::Token { witness, ttl } => Request::ClusterToken {
            witness,
            ttl_secs: ttl,
        },
        ClusterCmd::Join { address, token } => Request::ClusterJoin { address, token },
        ClusterCmd::Remove { node, force } => Request::ClusterRemove { node, force },
        ClusterCmd::Locate { node, address } => Request::ClusterLocate { node, address },
    }
}

/// Longest `cluster remove` keeps asking while the member drains (it can be run again: the
/// drain goes on in the cluster meanwhile).
const REMOVE_WAIT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Run one `cairn cluster` command; returns the exit code.
pub fn run(target: &Target, json: bool, cmd: ClusterCmd) -> i32 {
    let req = request(cmd);
    let result = req.validate().and_then(|_| match &req {
        Request::ClusterRemove { node, force: false } => remove_waiting(target, &req, node),
        _ => crate::remote::call(target, &req),
    });
    match result {
        Ok(reply) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&reply).unwrap_or_else(|e| format!("{e}"))
                );
            } else {
                print!("{}", render(&reply));
            }
            control::EXIT_OK
        }
        Err(e) => fail(json, e),
    }
}

/// `cluster remove` of a data member: the node answers with the cluster view while the
/// member drains; ask again (printing what is left) until it answers Done.
fn remove_waiting(target: &Target, req: &Request, node: &str) -> Result<Reply, ControlError> {
    let start = std::time::Instant::now();
    loop {
        let reply = crate::remote::call(target, req)?;
        let Reply::Cluster(v) = &reply else {
            return Ok(reply);
        };
        let Some(d) = v
            .data
            .draining
            .iter()
            .find(|d| d.name == node || d.node.to_string() == node)
        else {
            return Ok(reply);
        };
        eprintln!("{}", drain_line(d, &v.data.rebuild));
        if start.elapsed() >= REMOVE_WAIT {
            return Err(ControlError::new(
                control::ErrorCode::Busy,
                format!("{node} is still draining; run the command again to keep waiting"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// One draining member: its own account of the whole drain when it gave one (progress and time
/// left), and what still depends on it here.
fn drain_line(d: &control::DrainView, r: &control::RebuildView) -> String {
    let mut s = format!("draining {} (member {}): ", d.name, d.node);
    match &d.progress {
        Some(p) => {
            s.push_str(&format!(
                "{} of {} chunks still on its disks ({}% moved), ",
                p.chunks_left, p.chunks_at_start, p.percent
            ));
            s.push_str(&eta_text(p.eta_secs));
        }
        None => s.push_str("its own progress not known (it did not answer)"),
    }
    if d.hosted_chunks_left == 0 && d.chunks_left > 0 {
        s.push_str(&format!("; {} chunks of this node on it", d.chunks_left));
    }
    if r.running {
        s.push_str(&format!("; {}", rebuild_text(r)));
    }
    s
}

/// "about 2m 10s left", or that it is not known yet (nothing moved so far).
fn eta_text(eta_secs: Option<u64>) -> String {
    match eta_secs {
        Some(t) => format!("about {} left", duration_text(t)),
        None => "time left not known yet".into(),
    }
}

/// "rebuilding 40/120 chunks (33%), 85.3 MiB/s, about 2m 10s left".
fn rebuild_text(r: &control::RebuildView) -> String {
    let mut s = format!(
        "rebuilding {}/{} chunks ({}%)",
        r.chunks_done, r.chunks_total, r.percent
    );
    if r.rate_bytes_per_sec > 0 {
        s.push_str(&format!(
            ", {}/s",
            control::format_size(r.rate_bytes_per_sec)
        ));
    }
    s.push_str(&format!(", {}", eta_text(r.eta_secs)));
    if r.ceiling_bytes_per_sec > 0 {
        s.push_str(&format!(
            " (limited to {}/s{})",
            control::format_size(r.ceiling_bytes_per_sec),
            if r.guest_busy {
                " while guests do I/O"
            } else {
                ""
            }
        ));
    }
    s
}

fn duration_text(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

fn fail(json: bool, e: ControlError) -> i32 {
    if json {
        let body = serde_json::json!({"error": {"code": e.code, "message": e.message}});
        println!("{body}");
    }
    eprintln!("cairn: error: {}", e.message);
    e.exit_code()
}

fn render(r: &Reply) -> String {
    match r {
        Reply::Cluster(v) => status(v),
        Reply::ClusterToken(t) => token(t),
        Reply::Done => "ok\n".into(),
        other => format!("{other:?}\n"),
    }
}

fn status(v: &ClusterView) -> String {
    let mut out = format!(
        "cluster {}  leader {}  term {}  commit index {}  (this node: {})\n",
        v.cluster_id,
        v.leader.map_or("none".into(), |l| l.to_string()),
        v.term,
        v.commit_index.map_or("-".into(), |i| i.to_string()),
        v.me,
    );
    let header = [
        "ID",
        "NAME",
        "ADDRESS",
        "ROLE",
        "STATE",
        "VOTER",
        "HEALTH",
        "SEEN",
        "LEASE",
        "OWN DISKS USED",
    ];
    let rows: Vec<[String; 10]> = v
        .members
        .iter()
        .map(|m| {
            [
                format!("{}{}", m.id, if m.leader { "*" } else { "" }),
                m.name.clone(),
                m.address.clone(),
                m.role.clone(),
                m.state.clone(),
                if m.voter { "yes" } else { "no" }.into(),
                m.health.clone(),
                m.last_seen_ms_ago
                    .map_or("-".into(), |ms| format!("{:.1}s ago", ms as f64 / 1000.0)),
                m.lease.as_deref().unwrap_or("-").replace('_', " "),
                m.stats.as_ref().map_or("-".into(), |x| {
                    format!(
                        "{} of {}",
                        control::format_size(x.used_raw_bytes),
                        control::format_size(x.raw_bytes)
                    )
                }),
            ]
        })
        .collect();
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            s.push_str(&format!("{c:<w$}  ", w = width[i]));
        }
        s.trim_end().to_string() + "\n"
    };
    out.push_str(&line(header.to_vec()));
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    if v.campaigns == Some(false) {
        // Also under a leader: one restored at start-up, or a follower's, may be out of date.
        out.push_str(
            "this node reaches too few voters to win an election: it starts none until more \
             answer\n",
        );
    }
    out.push_str(&unreachable_hint(v));
    out.push_str(&format!(
        "objects: {} virtual disks, {} snapshots, {} VMs\n",
        v.vdisks.len(),
        v.snapshots,
        v.vms.len()
    ));
    if let Some(l) = &v.lease {
        out.push_str(&lease_lines(l));
    }
    let witness = v
        .members
        .iter()
        .any(|m| m.id == v.me && m.role == "witness");
    if witness {
        out.push_str("data: none on this node (a witness holds no disks)\n");
    } else {
        out.push_str(&data_line(&v.data));
    }
    for d in &v.data.draining {
        out.push_str(&drain_line(d, &control::RebuildView::default()));
        out.push('\n');
    }
    out.push_str(&mirror_lines(&v.data));
    out
}

/// The members that do not answer, and how to tell this node where one is now should its
/// address have changed while it could not announce it (every member moved at once:
/// `cairn cluster locate`); nothing while every member answers.
fn unreachable_hint(v: &ClusterView) -> String {
    let away: Vec<&control::ClusterMemberView> = v
        .members
        .iter()
        .filter(|m| m.id != v.me && m.health != "up")
        .collect();
    let Some(first) = away.first() else {
        return String::new();
    };
    let names: Vec<&str> = away.iter().map(|m| m.name.as_str()).collect();
    format!(
        "not answering at the address above: {}. If a member's address changed while it could \
         not announce it (every member moved at once), tell this node where it is now: cairn \
         cluster locate {} --address IP:PORT\n",
        names.join(", "),
        first.name
    )
}

/// This node's isolation lease and the virtual disks waiting for adoption here.
fn lease_lines(l: &control::LeaseView) -> String {
    let secs = |ms: u64| format!("{:.1} s", ms as f64 / 1000.0);
    let mut out = format!("lease (this node, L = {}): ", secs(l.length_ms));
    match (l.state.as_str(), l.remaining_ms) {
        ("held", Some(ms)) => out.push_str(&format!("held, {} left\n", secs(ms))),
        ("expired", _) => out.push_str(&format!(
            "EXPIRED ({}): this node's virtual disks are not served and its VMs are paused\n",
            l.problem
        )),
        ("not_needed", _) => out.push_str("not needed\n"),
        (other, _) => out.push_str(&format!("{other}\n")),
    }
    for a in &l.awaiting_adoption {
        out.push_str(&format!(
            "  taken over, waiting for adoption: {} ({}), {}\n",
            a.vdisk,
            a.id,
            if a.held_for_ms > 0 {
                format!("held {} more (old owner's lease)", secs(a.held_for_ms))
            } else {
                "hold passed".to_string()
            }
        ));
    }
    out
}

/// Degraded and rebuilding data as this node's engine sees it.
fn data_line(d: &control::ClusterDataView) -> String {
    // Copies on another member's disk out of reach: this node writes alone meanwhile.
    let away = d
        .remote_replicas
        .iter()
        .filter(|r| r.state == "active" && r.reachability == "away")
        .count();
    if d.degraded_chunks == 0 && !d.rebuilding && !d.rebuild.running && away == 0 {
        return "data: fully redundant on this node's view\n".to_string();
    }
    if d.degraded_chunks == 0 && !d.rebuilding && !d.rebuild.running {
        return format!(
            "data: not redundant while {away} of the other members' disks holding this node's \
             copies are out of reach (writes land here alone; those copies catch up when they \
             answer)\n"
        );
    }
    let mut s = format!("data: {} degraded chunks", d.degraded_chunks);
    if d.rebuild.running {
        s.push_str(&format!("; {}", rebuild_text(&d.rebuild)));
    } else if d.rebuilding {
        s.push_str(", rebuild pending");
    }
    s + "\n"
}

/// Mirrored I/O: this node's replicas on other nodes, and what it holds for them.
fn mirror_lines(d: &control::ClusterDataView) -> String {
    let Some(listen) = &d.mirror_listen else {
        return String::new();
    };
    let mut out = format!(
        "mirror: serving on {listen}, write epoch {}, holding {} chunks of other nodes; {} stale chunks awaiting resync\n",
        d.write_epoch, d.hosted_chunks, d.stale_chunks
    );
    for r in &d.remote_replicas {
        out.push_str(&format!(
            "  remote replica {} (node {}): {} {}{}, {} dirty chunks, {} resynced in {} resyncs\n",
            r.disk,
            r.node,
            r.state,
            r.reachability,
            if r.away_secs > 0 {
                format!(" for {} s", r.away_secs)
            } else {
                String::new()
            },
            r.dirty_chunks,
            r.resynced_chunks,
            r.resyncs
        ));
    }
    out
}

fn token(t: &ClusterTokenView) -> String {
    format!(
        "{}\n(one-time {} token, valid {} s; on the new {}: cairn cluster join --address {} --token <token>)\n",
        t.token,
        t.role,
        t.expires_in_secs,
        if t.role == "witness" { "witness" } else { "node" },
        t.address
    )
}

/// `cairn witness`: runs until SIGINT/SIGTERM.
pub fn run_witness(a: WitnessArgs) -> i32 {
    crate::nodecmd::init_tracing();
    let cfg = node::WitnessConfig {
        data_dir: a.data.clone(),
        listen: a.listen,
        name: a.name,
    };
    let result = node::run_witness(cfg, |addr| {
        println!(
            "cairn witness running: data {}, cluster address {addr}",
            a.data.display()
        );
        println!(
            "Join it with a witness token: cairn --data {} cluster join --address MEMBER --token TOKEN",
            a.data.display()
        );
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cairn witness: {e}");
            match e {
                node::NodeError::AlreadyRunning(_) => 4,
                node::NodeError::Config(_) => 2,
                _ => 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_says_how_to_locate_members_when_none_answers() {
        let member = |id: u64, name: &str, health: &str| control::ClusterMemberView {
            id,
            name: name.into(),
            address: format!("127.0.0.{id}:7440"),
            role: "data".into(),
            state: "active".into(),
            voter: true,
            leader: false,
            health: health.into(),
            last_seen_ms_ago: None,
            lease: None,
            stats: None,
        };
        let mut v = ClusterView {
            cluster_id: "c".into(),
            me: 1,
            leader: None,
            term: 2,
            commit_index: None,
            last_log_index: None,
            campaigns: Some(false),
            placement_version: 0,
            members: vec![
                member(1, "a", "up"),
                member(2, "b", "down"),
                member(3, "c", "unknown"),
            ],
            vdisks: Vec::new(),
            snapshots: 0,
            vms: Vec::new(),
            data: control::ClusterDataView::default(),
            lease: None,
        };
        let s = status(&v);
        assert!(
            s.contains("not answering at the address above: b, c."),
            "{s}"
        );
        assert!(s.contains("reaches too few voters"), "{s}");
        assert!(
            s.contains("cairn cluster locate b --address IP:PORT"),
            "{s}"
        );
        v.members[1].health = "up".into();
        v.campaigns = Some(true);
        let s = status(&v);
        assert!(s.contains("above: c."), "{s}");
        assert!(!s.contains("reaches too few voters"), "{s}");
        assert!(
            s.contains("cairn cluster locate c --address IP:PORT"),
            "{s}"
        );
        v.members[2].health = "up".into();
        assert!(!status(&v).contains("cluster locate"));
        v.members.truncate(1);
        assert!(!status(&v).contains("cluster locate"), "a cluster of one");
    }

    #[test]
    fn rebuild_progress_renders_percent_rate_and_time_left() {
        let mut d = control::ClusterDataView {
            degraded_chunks: 80,
            rebuilding: true,
            ..Default::default()
        };
        d.rebuild = control::RebuildView {
            running: true,
            chunks_total: 120,
            chunks_done: 40,
            percent: 33,
            bytes_done: 40 << 20,
            rate_bytes_per_sec: 85 << 20,
            eta_secs: Some(130),
            ceiling_bytes_per_sec: 64 << 20,
            guest_busy: true,
        };
        let s = data_line(&d);
        assert!(s.contains("80 degraded"), "{s}");
        assert!(s.contains("40/120 chunks (33%)"), "{s}");
        assert!(s.contains("about 2m 10s left"), "{s}");
        assert!(s.contains("while guests do I/O"), "{s}");
        d.rebuild.eta_secs = None;
        assert!(data_line(&d).contains("not known yet"));
        let idle = control::ClusterDataView::default();
        assert!(data_line(&idle).contains("fully redundant"));
        // Copies on a member that is away: not redundant, said so.
        let mut away = control::ClusterDataView {
            remote_replicas: vec![control::RemoteReplicaView {
                disk: "node2:/d0".into(),
                node: 2,
                state: "active".into(),
                reachability: "away".into(),
                away_secs: 30,
                dirty_chunks: 0,
                resynced_chunks: 0,
                resyncs: 0,
                since_start: false,
            }],
            ..Default::default()
        };
        let s = data_line(&away);
        assert!(s.contains("not redundant while 1 of"), "{s}");
        away.remote_replicas[0].reachability = "up".into();
        assert!(data_line(&away).contains("fully redundant"));
    }

    /// Every member's answer shows a draining member's own progress and time left; without it
    /// (it did not answer) the line says so, and this node's chunks on it are shown either way.
    #[test]
    fn drain_lines_show_the_members_own_progress_and_time_left() {
        let mut dv = control::DrainView {
            node: 3,
            name: "c".into(),
            chunks_left: 57,
            hosted_chunks_left: 0,
            progress: None,
        };
        let idle = control::RebuildView::default();
        let s = drain_line(&dv, &idle);
        assert!(s.contains("progress not known"), "{s}");
        assert!(s.contains("57 chunks of this node on it"), "{s}");
        dv.progress = Some(control::DrainProgressView {
            chunks_left: 300,
            chunks_at_start: 1200,
            percent: 75,
            eta_secs: Some(130),
        });
        let s = drain_line(&dv, &idle);
        assert_eq!(
            s,
            "draining c (member 3): 300 of 1200 chunks still on its disks (75% moved), about \
             2m 10s left; 57 chunks of this node on it"
        );
        if let Some(p) = dv.progress.as_mut() {
            p.eta_secs = None;
        }
        assert!(drain_line(&dv, &idle).contains("time left not known yet"));
    }

    /// A witness's own answer says it holds no data instead of a redundancy line.
    #[test]
    fn a_witness_status_shows_its_role_and_no_data() {
        let member = |id: u64, role: &str, lease: &str| control::ClusterMemberView {
            id,
            name: format!("n{id}"),
            address: format!("127.0.0.{id}:7440"),
            role: role.into(),
            state: "active".into(),
            voter: true,
            leader: id == 1,
            health: "up".into(),
            last_seen_ms_ago: Some(300),
            lease: Some(lease.into()),
            stats: None,
        };
        let mut v = ClusterView {
            cluster_id: "c1".into(),
            me: 3,
            leader: Some(1),
            term: 2,
            commit_index: Some(9),
            campaigns: Some(true),
            last_log_index: Some(9),
            placement_version: 1,
            members: vec![
                member(1, "data", "held"),
                member(2, "data", "unreachable"),
                member(3, "witness", "not_needed"),
            ],
            vdisks: vec![],
            snapshots: 0,
            vms: vec![],
            data: control::ClusterDataView::default(),
            lease: None,
        };
        let s = status(&v);
        assert!(s.contains("data: none on this node (a witness"), "{s}");
        assert!(!s.contains("fully redundant"), "{s}");
        let row = s.lines().find(|l| l.starts_with("3 ")).unwrap_or_default();
        assert!(row.contains("witness") && row.contains("0.3s ago"), "{row}");
        assert!(row.contains("not needed"), "{row}");
        v.me = 1;
        assert!(status(&v).contains("fully redundant"));
        // A data member that reported its figures shows how full its own disks are.
        v.members[0].stats = Some(control::MemberStatsView {
            raw_bytes: 2 << 30,
            used_raw_bytes: 512 << 20,
            ..Default::default()
        });
        let s = status(&v);
        assert!(s.contains("OWN DISKS USED"), "{s}");
        let row = s.lines().find(|l| l.starts_with("1* ")).unwrap_or_default();
        assert!(row.ends_with("512 MiB of 2 GiB"), "{row}");
        let row = s.lines().find(|l| l.starts_with("2 ")).unwrap_or_default();
        assert!(row.ends_with(" -"), "{row}");
    }

    #[test]
    fn lease_lines_say_held_expired_and_what_waits_for_adoption() {
        let mut l = control::LeaseView {
            state: "held".into(),
            remaining_ms: Some(3200),
            length_ms: 5000,
            ..Default::default()
        };
        let s = lease_lines(&l);
        assert!(
            s.contains("L = 5.0 s") && s.contains("held, 3.2 s left"),
            "{s}"
        );
        l.state = "expired".into();
        l.remaining_ms = None;
        l.problem = "renewal not confirmed within the lease".into();
        l.awaiting_adoption.push(control::AdoptionView {
            vdisk: "d1".into(),
            id: "1/d1".into(),
            held_for_ms: 4500,
            held_until_unix_ms: 1,
        });
        let s = lease_lines(&l);
        assert!(s.contains("EXPIRED (renewal not confirmed"), "{s}");
        assert!(s.contains("d1 (1/d1), held 4.5 s more"), "{s}");
        l.state = "not_needed".into();
        assert!(lease_lines(&l).contains("not needed"));
    }
}
