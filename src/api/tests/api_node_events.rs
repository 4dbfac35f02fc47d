//! What a node does by itself (a takeover, an HA restart of a VM: `Controller::take_node_events`)
//! reaches the API's event list and audit log. The node is real; a thin controller in front of
//! it hands out two such events, as the node's takeover and HA restart code would. Also: the
//! cluster status with its isolation lease fields is what the OpenAPI document says.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use control::{Actor, BoxFuture, ControlResult, Controller, NodeEvent, Request};

struct WithEvents {
    node: Arc<dyn Controller>,
    pending: parking_lot::Mutex<Vec<NodeEvent>>,
    taken: std::sync::atomic::AtomicUsize,
}

impl Controller for WithEvents {
    fn execute(&self, actor: Actor, req: Request) -> BoxFuture<'_, ControlResult> {
        self.node.execute(actor, req)
    }

    fn generation(&self) -> Option<u64> {
        self.node.generation()
    }

    fn take_node_events(&self) -> Vec<NodeEvent> {
        self.taken
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::mem::take(&mut *self.pending.lock())
    }
}

fn event(id: u64, severity: &str, action: &str, target: &str, message: &str) -> NodeEvent {
    NodeEvent {
        id,
        time_unix: 1,
        severity: severity.into(),
        action: action.into(),
        target: target.into(),
        message: message.into(),
    }
}

/// A real node with the API in front of the controller `wrap` makes of it.
async fn behind<C: Controller + 'static>(
    wrap: impl FnOnce(Arc<dyn Controller>) -> Arc<C>,
) -> (common::Harness, Arc<C>) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = node::NodeConfig::new(dir.path().join("data"));
    cfg.disk_count = 2;
    cfg.disk_size_bytes = node::MIN_DISK_SIZE_BYTES.max(128 << 20);
    cfg.api_listen = None;
    let n = node::Node::start(cfg).await.unwrap();
    let state = dir.path().join("api");
    let pw = api::bootstrap_admin(&state).unwrap().unwrap();
    let ctl = wrap(n.controller());
    let acfg = api::ApiConfig::new("127.0.0.1:0".parse().unwrap(), state.clone());
    let h = api::serve(acfg, ctl.clone()).await.unwrap();
    let harness = common::Harness {
        addr: h.local_addr,
        tls: common::connector(&state).unwrap(),
        dir,
        node: Some(n),
        api: Some(h),
        admin_password: pw,
    };
    (harness, ctl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeovers_and_ha_restarts_reach_the_event_list_and_the_audit_log() {
    let (harness, ctl) = behind(|node| {
        Arc::new(WithEvents {
            node,
            pending: parking_lot::Mutex::new(vec![
                event(
                    1,
                    "warning",
                    "vdisk_takeover",
                    "b",
                    "member b (2) was lost; this node took its virtual disks over (epoch 7)",
                ),
                event(
                    2,
                    "warning",
                    "vm_ha_restart",
                    "web",
                    "VM web restarted on this node after its node was lost (attempt 1)",
                ),
            ]),
            taken: Default::default(),
        })
    })
    .await;
    let admin = harness.admin().await;
    let t = Instant::now();
    let events = loop {
        let r = admin.get("/api/v1/events").await;
        assert_eq!(r.status, 200, "{}", r.text);
        let items = r.json["items"].as_array().cloned().unwrap_or_default();
        if items.iter().any(|e| e["kind"] == "vm_ha_restart") {
            break items;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the node's events never reached /events: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let takeover = events
        .iter()
        .find(|e| e["kind"] == "vdisk_takeover")
        .expect("the takeover is listed");
    assert_eq!(takeover["severity"], "warning");
    assert!(takeover["message"]
        .as_str()
        .unwrap()
        .contains("took its virtual disks over"));
    let r = admin.get("/api/v1/audit").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let audit = r.json["items"].as_array().unwrap();
    let restart = audit
        .iter()
        .find(|e| e["action"] == "vm_ha_restart")
        .unwrap_or_else(|| panic!("no HA restart in the audit log: {}", r.text));
    assert_eq!(restart["user"], "system");
    assert_eq!(restart["via"], "internal");
    assert_eq!(restart["target"], "web");
    assert_eq!(restart["result"], "ok");
    assert!(audit.iter().any(|e| e["action"] == "vdisk_takeover"));
    // Each event is listed once, however often the API asks.
    let before = ctl.taken.load(std::sync::atomic::Ordering::Relaxed);
    while ctl.taken.load(std::sync::atomic::Ordering::Relaxed) < before + 2 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the API stopped asking"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = admin.get("/api/v1/events").await;
    let n = r.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "vdisk_takeover")
        .count();
    assert_eq!(n, 1, "{}", r.text);
    harness.stop().await;
}

/// `GET /cluster`'s answer, with and without the lease fields, with a witness and draining
/// members, fits the document's `Cluster` schema; a lease state the document does not name
/// does not, nor a drain past 100%.
#[test]
fn cluster_status_with_the_lease_fits_the_openapi_schema() {
    let doc: serde_json::Value = serde_json::from_str(api::OPENAPI_JSON).unwrap();
    let root = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": "#/components/schemas/Cluster",
        "components": doc["components"],
    });
    let v = jsonschema::validator_for(&root).expect("schema compiles");
    let member = |id: u64, lease: Option<&str>| control::ClusterMemberView {
        id,
        name: format!("n{id}"),
        address: "127.0.0.1:7440".into(),
        role: "data".into(),
        state: "active".into(),
        voter: true,
        leader: id == 1,
        health: "up".into(),
        last_seen_ms_ago: Some(10),
        lease: lease.map(str::to_string),
        stats: None,
    };
    let mut view = control::ClusterView {
        cluster_id: "c".into(),
        me: 1,
        leader: Some(1),
        term: 2,
        commit_index: Some(9),
        last_log_index: Some(9),
        campaigns: Some(true),
        placement_version: 3,
        members: vec![
            member(1, Some("held")),
            member(2, Some("needed")),
            member(3, None),
            control::ClusterMemberView {
                role: "witness".into(),
                ..member(4, Some("unreachable"))
            },
        ],
        vdisks: vec!["d".into()],
        snapshots: 0,
        vms: vec![],
        data: control::ClusterDataView {
            draining: vec![
                control::DrainView {
                    node: 2,
                    name: "n2".into(),
                    chunks_left: 4,
                    hosted_chunks_left: 0,
                    progress: Some(control::DrainProgressView {
                        chunks_left: 30,
                        chunks_at_start: 120,
                        percent: 75,
                        eta_secs: Some(12),
                    }),
                },
                control::DrainView {
                    node: 3,
                    name: "n3".into(),
                    progress: None,
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
        lease: Some(control::LeaseView {
            state: "held".into(),
            remaining_ms: Some(2500),
            length_ms: 5000,
            problem: String::new(),
            awaiting_adoption: vec![control::AdoptionView {
                vdisk: "d2".into(),
                id: "3/d2".into(),
                held_for_ms: 4000,
                held_until_unix_ms: 1_800_000_000_000,
            }],
        }),
    };
    let json = serde_json::to_value(&view).unwrap();
    let errors: Vec<String> = v.iter_errors(&json).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{json}");
    view.lease = None;
    assert!(v.is_valid(&serde_json::to_value(&view).unwrap()));
    let mut bad = json.clone();
    bad["lease"]["state"] = "maybe".into();
    assert!(
        !v.is_valid(&bad),
        "an unknown lease state passes the schema"
    );
    bad = json.clone();
    bad["data"]["draining"][0]["progress"]["percent"] = 140.into();
    assert!(!v.is_valid(&bad), "a drain over 100% passes the schema");
    bad = json;
    bad["members"][0]["lease"] = "sometimes".into();
    assert!(
        !v.is_valid(&bad),
        "an unknown member lease passes the schema"
    );
}

/// A real node whose cluster status also lists a second member that stopped answering, with
/// this node's copies on it away (what the node reports once a peer dies; a thin controller
/// adds them to the real node's own status).
struct WithPeerDown {
    node: Arc<dyn Controller>,
}

impl Controller for WithPeerDown {
    fn execute(&self, actor: Actor, req: Request) -> BoxFuture<'_, ControlResult> {
        let status = req == Request::ClusterStatus;
        let f = self.node.execute(actor, req);
        Box::pin(async move {
            let mut reply = f.await?;
            if let (true, control::Reply::Cluster(v)) = (status, &mut reply) {
                v.members.push(control::ClusterMemberView {
                    id: 2,
                    name: "b".into(),
                    address: "127.0.0.2:7440".into(),
                    role: "data".into(),
                    health: "down".into(),
                    last_seen_ms_ago: Some(9_000),
                    lease: Some("unreachable".into()),
                    ..Default::default()
                });
                v.data.remote_replicas.push(control::RemoteReplicaView {
                    disk: "b-disk0".into(),
                    node: 2,
                    state: "active".into(),
                    reachability: "away".into(),
                    away_secs: 9,
                    dirty_chunks: 3,
                    ..Default::default()
                });
            }
            Ok(reply)
        })
    }

    fn generation(&self) -> Option<u64> {
        self.node.generation()
    }
}

/// `GET /alerts` carries the cluster's trouble as well as the node's own: a member that does
/// not answer and this node's copies on it, in words, each with its kind; the dashboard shows
/// them. Without them it reported "no alerts" while a member was dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stopped_answering_is_an_alert() {
    let (harness, _) = behind(|node| Arc::new(WithPeerDown { node })).await;
    let admin = harness.admin().await;
    let t = Instant::now();
    let items = loop {
        let r = admin.get("/api/v1/alerts").await;
        assert_eq!(r.status, 200, "{}", r.text);
        let items = r.json["items"].as_array().cloned().unwrap_or_default();
        // Until the single node has elected itself, "no quorum" is true and said too.
        if !items.iter().any(|a| a["kind"] == "no_quorum") {
            break items;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{}", r.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let of = |kind: &str| {
        items
            .iter()
            .find(|a| a["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} alert in {items:?}"))
    };
    let down = of("member_down");
    assert_eq!(down["severity"], "critical");
    assert_eq!(
        down["message"],
        "member b (127.0.0.2:7440) does not answer: last answered 9 s ago"
    );
    let away = of("replicas_away");
    assert_eq!(away["severity"], "warning");
    let msg = away["message"].as_str().unwrap();
    assert!(
        msg.starts_with("copies on b are out of reach (1 disk for 9 s)")
            && msg.contains("3 chunks"),
        "{msg}"
    );
    // The node's own members (itself) raise nothing.
    assert_eq!(items.len(), 2, "{items:?}");
    harness.stop().await;
}
