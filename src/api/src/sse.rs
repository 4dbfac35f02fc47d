//! The live statistics stream (Server-Sent Events) and the alert list derived from the latest
//! sample and the certificate. At most `MAX_STREAMS` streams at once; each sends one sample a
//! second and a comment line when idle so proxies keep it open.

use crate::http::Resp;
use crate::state::State;
use bytes::Bytes;
use control::{ControlError, ErrorCode};
use futures::StreamExt;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub const MAX_STREAMS: usize = 64;

struct Slot(Arc<State>);
impl Drop for Slot {
    fn drop(&mut self) {
        self.0.sse_clients.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn stream(st: Arc<State>) -> Result<Resp, ControlError> {
    if st.sse_clients.fetch_add(1, Ordering::SeqCst) >= MAX_STREAMS {
        st.sse_clients.fetch_sub(1, Ordering::SeqCst);
        return Err(ControlError::new(
            ErrorCode::Busy,
            "too many live statistics streams are open",
        ));
    }
    let slot = Slot(st.clone());
    let rx = st.stats.subscribe();
    let first = st.stats.latest();
    let init = futures::stream::iter(first.map(|s| event(&s)));
    let live = futures::stream::unfold((rx, slot), |(mut rx, slot)| async move {
        loop {
            match tokio::time::timeout(std::time::Duration::from_secs(15), rx.recv()).await {
                Ok(Ok(s)) => return Some((event(&s), (rx, slot))),
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(_)) => return None,
                Err(_) => return Some((Bytes::from_static(b": keep-alive\n\n"), (rx, slot))),
            }
        }
    });
    let body = StreamBody::new(
        init.chain(live)
            .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))),
    )
    .boxed_unsync();
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

fn event(s: &crate::stats::Sample) -> Bytes {
    let j = serde_json::to_string(s).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: sample\ndata: {j}\n\n"))
}

/// Current alerts: failed or draining disks, degraded data, a nearly full pool, a certificate
/// near expiry, a node under memory pressure.
pub fn alerts(st: &State) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(s) = st.stats.latest() {
        for d in &s.disks {
            if d.state == "failed" {
                out.push(json!({"severity": "critical", "kind": "disk_failed", "message": format!("disk {} has failed; its data is being re-mirrored", d.name)}));
            }
        }
        if s.degraded_chunks > 0 {
            out.push(json!({"severity": "warning", "kind": "degraded", "message": format!("{} chunks have only one good copy; repair is running", s.degraded_chunks)}));
        }
        if s.pool_raw_bytes > 0 && s.pool_used_bytes * 100 / s.pool_raw_bytes >= 85 {
            out.push(json!({"severity": "warning", "kind": "pool_full", "message": format!("the pool is {}% full", s.pool_used_bytes * 100 / s.pool_raw_bytes)}));
        }
        if s.mem_total_bytes > 0 && s.mem_used_bytes * 100 / s.mem_total_bytes >= 95 {
            out.push(json!({"severity": "warning", "kind": "memory", "message": "the node is using more than 95% of its memory"}));
        }
    }
    let cert = st.certs.info();
    let left = cert.not_after_unix - crate::files::now_unix() as i64;
    if left < 30 * 86_400 {
        out.push(json!({"severity": "warning", "kind": "certificate", "message": format!("the TLS certificate expires in {} days", left.max(0) / 86_400)}));
    }
    out
}

/// Alerts from the cluster as this node sees it: members that do not answer, no leader (or
/// this node too cut off to help elect one), an isolation lease run out, and this node's
/// replicas on other nodes that are away or were given up. Pure, for the tests.
pub fn cluster_alerts(v: &control::ClusterView) -> Vec<Value> {
    let mut out = Vec::new();
    let alert = |severity: &str, kind: &str, message: String| json!({"severity": severity, "kind": kind, "message": message});
    let disks_word = |n: usize| match n {
        1 => "1 disk".to_string(),
        n => format!("{n} disks"),
    };
    let name_of = |id: u64| {
        v.members
            .iter()
            .find(|m| m.id == id)
            .map_or_else(|| format!("member {id}"), |m| m.name.clone())
    };
    if v.leader.is_none() || v.campaigns == Some(false) {
        out.push(alert(
            "critical",
            "no_quorum",
            "this node reaches too few members to elect a leader: creating, changing or deleting \
             disks, VMs and members waits until more of them answer"
                .into(),
        ));
    }
    if let Some(l) = &v.lease {
        if l.state == "expired" {
            let why = if l.problem.is_empty() {
                String::new()
            } else {
                format!(" ({})", l.problem)
            };
            out.push(alert(
                "critical",
                "lease_expired",
                format!(
                    "this node's isolation lease ran out{why}: it serves no virtual disk until it \
                     reaches the majority again"
                ),
            ));
        }
    }
    for m in v
        .members
        .iter()
        .filter(|m| m.id != v.me && m.health == "down")
    {
        let since = m.last_seen_ms_ago.map_or_else(
            || "never answered since this node started".to_string(),
            |ms| format!("last answered {} s ago", ms / 1000),
        );
        let (severity, what) = if m.role == "witness" {
            ("warning", "the witness")
        } else {
            ("critical", "member")
        };
        out.push(alert(
            severity,
            "member_down",
            format!("{what} {} ({}) does not answer: {since}", m.name, m.address),
        ));
    }
    // This node's replicas on other nodes, one alert per node and kind of trouble.
    // Per node: disks away, the longest away, chunks written meanwhile, and whether any was
    // not reached since this node started.
    let mut away: std::collections::BTreeMap<u64, (usize, u64, u64, bool)> = Default::default();
    let mut failed: std::collections::BTreeMap<u64, usize> = Default::default();
    for r in &v.data.remote_replicas {
        if r.state == "failed" {
            *failed.entry(r.node).or_default() += 1;
        } else if r.reachability == "away" {
            let e = away.entry(r.node).or_default();
            e.0 += 1;
            e.1 = e.1.max(r.away_secs);
            e.2 += r.dirty_chunks;
            e.3 |= r.since_start;
        }
    }
    for (node, (disks, secs, dirty, since_start)) in away {
        let message = if since_start {
            // Not attached since this node started: no give-up clock runs for these copies.
            format!(
                "copies on {} are out of reach ({}, not reached since this node started {secs} s \
                 ago): writes land on this node alone; every copy there is checked and caught \
                 up when it answers (they are not re-mirrored elsewhere meanwhile)",
                name_of(node),
                disks_word(disks),
            )
        } else {
            let written = match dirty {
                0 => "writes land on this node alone and are copied there".to_string(),
                1 => "1 chunk written meanwhile is copied there".to_string(),
                n => format!("{n} chunks written meanwhile are copied there"),
            };
            format!(
                "copies on {} are out of reach ({} for {secs} s): {written} when it answers \
                 again (if it stays away 5 min in all, they are re-mirrored elsewhere)",
                name_of(node),
                disks_word(disks),
            )
        };
        out.push(alert("warning", "replicas_away", message));
    }
    for (node, disks) in failed {
        out.push(alert(
            "critical",
            "replicas_lost",
            format!(
                "copies on {} were given up ({}): the data they held is re-mirrored onto the other \
                 nodes",
                name_of(node),
                disks_word(disks),
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::cluster_alerts;
    use control::{ClusterMemberView, ClusterView, LeaseView, RemoteReplicaView};

    fn member(id: u64, name: &str, role: &str, health: &str) -> ClusterMemberView {
        ClusterMemberView {
            id,
            name: name.into(),
            address: format!("127.0.0.{id}:7000"),
            role: role.into(),
            health: health.into(),
            last_seen_ms_ago: Some(42_000),
            ..Default::default()
        }
    }

    /// Three members seen from member 1, all answering, a leader, nothing away.
    fn healthy() -> ClusterView {
        ClusterView {
            me: 1,
            leader: Some(1),
            members: vec![
                member(1, "a", "data", "up"),
                member(2, "b", "data", "up"),
                member(3, "w", "witness", "up"),
            ],
            lease: Some(LeaseView {
                state: "held".into(),
                ..Default::default()
            }),
            campaigns: Some(true),
            ..Default::default()
        }
    }

    fn replica(disk: &str, node: u64, state: &str, reach: &str, dirty: u64) -> RemoteReplicaView {
        RemoteReplicaView {
            disk: disk.into(),
            node,
            state: state.into(),
            reachability: reach.into(),
            away_secs: 30,
            dirty_chunks: dirty,
            ..Default::default()
        }
    }

    fn kinds(v: &ClusterView) -> Vec<(String, String)> {
        cluster_alerts(v)
            .iter()
            .map(|a| {
                (
                    a["severity"].as_str().unwrap().to_string(),
                    a["kind"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn a_healthy_cluster_raises_nothing() {
        assert!(cluster_alerts(&healthy()).is_empty());
    }

    #[test]
    fn a_member_that_does_not_answer_is_named_with_its_address() {
        let mut v = healthy();
        v.members[1].health = "down".into();
        let a = cluster_alerts(&v);
        assert_eq!(kinds(&v), [("critical".into(), "member_down".into())]);
        let msg = a[0]["message"].as_str().unwrap();
        assert!(msg.contains("member b (127.0.0.2:7000)"), "{msg}");
        assert!(msg.contains("42 s ago"), "{msg}");
        // A witness down is a warning (the two data members still make a majority).
        let mut v = healthy();
        v.members[2].health = "down".into();
        assert_eq!(kinds(&v), [("warning".into(), "member_down".into())]);
        // Not yet known (just started) raises nothing.
        let mut v = healthy();
        v.members[1].health = "unknown".into();
        assert!(cluster_alerts(&v).is_empty());
    }

    #[test]
    fn no_leader_a_closed_election_gate_and_a_lost_lease_are_critical() {
        let mut v = healthy();
        v.leader = None;
        assert_eq!(kinds(&v), [("critical".into(), "no_quorum".into())]);
        let mut v = healthy();
        v.campaigns = Some(false);
        assert_eq!(kinds(&v), [("critical".into(), "no_quorum".into())]);
        let mut v = healthy();
        v.lease = Some(LeaseView {
            state: "expired".into(),
            problem: "no majority answered".into(),
            ..Default::default()
        });
        let a = cluster_alerts(&v);
        assert_eq!(kinds(&v), [("critical".into(), "lease_expired".into())]);
        assert!(a[0]["message"]
            .as_str()
            .unwrap()
            .contains("(no majority answered)"));
    }

    #[test]
    fn replicas_away_or_given_up_are_counted_per_node() {
        let mut v = healthy();
        v.data.remote_replicas = vec![
            replica("d1", 2, "active", "away", 5),
            replica("d2", 2, "active", "away", 7),
            replica("d3", 2, "active", "up", 0),
            replica("d4", 3, "failed", "away", 0),
        ];
        let a = cluster_alerts(&v);
        assert_eq!(
            kinds(&v),
            [
                ("warning".into(), "replicas_away".into()),
                ("critical".into(), "replicas_lost".into())
            ]
        );
        let away = a[0]["message"].as_str().unwrap();
        assert!(
            away.contains("copies on b") && away.contains("2 disks"),
            "{away}"
        );
        assert!(away.contains("12 chunks"), "{away}");
        let lost = a[1]["message"].as_str().unwrap();
        assert!(
            lost.contains("copies on w") && lost.contains("1 disk)"),
            "{lost}"
        );
        // Nothing written while away yet: said so, not "0 chunks".
        v.data.remote_replicas = vec![replica("d1", 2, "active", "away", 0)];
        let a = cluster_alerts(&v);
        let away = a[0]["message"].as_str().unwrap();
        assert!(away.contains("writes land on this node alone"), "{away}");
        // Not reached since this node started: no promise of a re-mirror after 5 min.
        v.data.remote_replicas[0].since_start = true;
        let a = cluster_alerts(&v);
        let away = a[0]["message"].as_str().unwrap();
        assert!(
            away.contains("not reached since this node started"),
            "{away}"
        );
        assert!(!away.contains("5 min"), "{away}");
    }
}
