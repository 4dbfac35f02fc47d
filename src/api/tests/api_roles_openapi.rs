//! The role matrix (every endpoint × admin / operator / read-only / no credentials, plus other
//! users' objects) and the OpenAPI document checked against the route table and live answers.

mod common;
use common::{Client, Harness};
use control::{Request, Role};
use serde_json::{json, Value};

/// Expected policy for a route: from the control crate's table for storage requests, from the
/// api-local table (see `api::admin`) for the rest.
enum Rule {
    Control(Request),
    AdminOnly,
    Anyone,
}

fn rows() -> Vec<(&'static str, &'static str, Option<Value>, Rule)> {
    use Rule::*;
    let vd = |n: &str| n.to_string();
    vec![
        ("GET", "/api/v1/auth/me", None, Anyone),
        ("GET", "/api/v1/nodes", None, Control(Request::Stats)),
        ("GET", "/api/v1/disks", None, Control(Request::DiskList)),
        (
            "POST",
            "/api/v1/disks",
            Some(json!({"path": "/nonexistent/disk.img"})),
            Control(Request::DiskAdd { path: "/x".into() }),
        ),
        (
            "DELETE",
            "/api/v1/disks/nodisk",
            None,
            Control(Request::DiskRemove { disk: "x".into() }),
        ),
        (
            "POST",
            "/api/v1/disks/probe",
            Some(json!({"path": "/nonexistent"})),
            Control(Request::DiskProbe { path: "/x".into() }),
        ),
        (
            "POST",
            "/api/v1/disks/scrub",
            Some(json!({})),
            Control(Request::DiskScrub),
        ),
        ("GET", "/api/v1/pool", None, Control(Request::PoolInfo)),
        ("GET", "/api/v1/vdisks", None, Control(Request::VdiskList)),
        (
            "POST",
            "/api/v1/vdisks",
            Some(json!({"name": "m1", "size": "8M"})),
            Control(Request::VdiskCreate {
                name: vd("a"),
                size_bytes: 1,
            }),
        ),
        (
            "GET",
            "/api/v1/vdisks/base",
            None,
            Control(Request::VdiskGet { name: vd("a") }),
        ),
        (
            "PATCH",
            "/api/v1/vdisks/base",
            Some(json!({"size": "64M"})),
            Control(Request::VdiskResize {
                name: vd("a"),
                size_bytes: 1,
            }),
        ),
        (
            "POST",
            "/api/v1/vdisks/base/clone",
            Some(json!({"name": "m2"})),
            Control(Request::VdiskClone {
                source: vd("a"),
                snapshot: None,
                name: vd("b"),
            }),
        ),
        (
            "POST",
            "/api/v1/vdisks/import",
            Some(json!({"name": "m3", "file": "/nonexistent.img"})),
            Control(Request::VdiskImport {
                name: vd("a"),
                file: "/x".into(),
            }),
        ),
        (
            "POST",
            "/api/v1/vdisks/base/export",
            Some(json!({"file": "/nonexistent/dir/x.img"})),
            Control(Request::VdiskExport {
                name: vd("a"),
                snapshot: None,
                file: "/x".into(),
            }),
        ),
        (
            "GET",
            "/api/v1/vdisks/base/snapshots",
            None,
            Control(Request::SnapshotList { vdisk: vd("a") }),
        ),
        (
            "POST",
            "/api/v1/vdisks/base/snapshots",
            Some(json!({"name": "sx"})),
            Control(Request::SnapshotCreate {
                vdisk: vd("a"),
                name: vd("s"),
            }),
        ),
        (
            "GET",
            "/api/v1/vdisks/base/diff?from=s0",
            None,
            Control(Request::SnapshotDiff {
                vdisk: vd("a"),
                from: vd("s"),
                to: None,
            }),
        ),
        (
            "POST",
            "/api/v1/vdisks/base/snapshots/s0/rollback",
            Some(json!({})),
            Control(Request::SnapshotRollback {
                vdisk: vd("a"),
                name: vd("s"),
            }),
        ),
        (
            "DELETE",
            "/api/v1/vdisks/base/snapshots/nosnap",
            None,
            Control(Request::SnapshotDelete {
                vdisk: vd("a"),
                name: vd("s"),
            }),
        ),
        (
            "DELETE",
            "/api/v1/vdisks/nodisk",
            None,
            Control(Request::VdiskDelete { name: vd("a") }),
        ),
        ("GET", "/api/v1/nbd", None, Control(Request::NbdList)),
        (
            "POST",
            "/api/v1/nbd",
            Some(json!({"vdisk": "nodisk"})),
            Control(Request::NbdStart {
                vdisk: vd("a"),
                snapshot: None,
                listen: None,
                read_only: false,
            }),
        ),
        (
            "DELETE",
            "/api/v1/nbd/999",
            None,
            Control(Request::NbdStop { id: 1 }),
        ),
        ("GET", "/api/v1/tasks", None, Anyone),
        ("GET", "/api/v1/events", None, Anyone),
        ("GET", "/api/v1/alerts", None, Anyone),
        ("GET", "/api/v1/audit", None, Anyone),
        ("GET", "/api/v1/system/log", None, Anyone),
        ("GET", "/api/v1/stats", None, Anyone),
        ("GET", "/api/v1/stats/history?limit=1", None, Anyone),
        ("GET", "/api/v1/users", None, AdminOnly),
        (
            "POST",
            "/api/v1/users",
            Some(
                json!({"name": "new-user", "role": "read_only", "password": "a long password here"}),
            ),
            AdminOnly,
        ),
        ("GET", "/api/v1/users/admin", None, AdminOnly),
        (
            "PATCH",
            "/api/v1/users/ghost",
            Some(json!({"role": "operator"})),
            AdminOnly,
        ),
        ("DELETE", "/api/v1/users/ghost", None, AdminOnly),
        ("GET", "/api/v1/tokens", None, Anyone),
        (
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "t2"})),
            Anyone,
        ),
        (
            "POST",
            "/api/v1/control",
            Some(json!({"action": "vdisk_list"})),
            Control(Request::VdiskList),
        ),
        (
            "POST",
            "/api/v1/control",
            Some(json!({"action": "disk_add", "path": "/nonexistent"})),
            Control(Request::DiskAdd { path: "/x".into() }),
        ),
        ("GET", "/api/v1/vms", None, Control(Request::VmList)),
        (
            "POST",
            "/api/v1/vms",
            Some(json!({"name": "vmx", "vcpus": 1, "memory_mib": 64, "kernel": "/nonexistent/k"})),
            Control(Request::VmCreate {
                name: vd("v"),
                vcpus: 1,
                memory_mib: 64,
                disks: vec![],
                kernel: "/k".into(),
                cmdline: None,
                nics: vec![],
            }),
        ),
        (
            "GET",
            "/api/v1/vms/novm",
            None,
            Control(Request::VmGet { name: vd("v") }),
        ),
        (
            "GET",
            "/api/v1/vms/novm/disks",
            None,
            Control(Request::VmGet { name: vd("v") }),
        ),
        (
            "GET",
            "/api/v1/vms/novm/console",
            None,
            Control(Request::VmConsole {
                name: vd("v"),
                max_bytes: None,
            }),
        ),
        (
            "POST",
            "/api/v1/vms/novm/start",
            None,
            Control(Request::VmStart { name: vd("v") }),
        ),
        (
            "POST",
            "/api/v1/vms/novm/stop",
            None,
            Control(Request::VmStop {
                name: vd("v"),
                force: false,
                timeout_ms: None,
            }),
        ),
        (
            "POST",
            "/api/v1/vms/novm/stop",
            Some(json!({"force": true})),
            Control(Request::VmStop {
                name: vd("v"),
                force: true,
                timeout_ms: None,
            }),
        ),
        (
            "POST",
            "/api/v1/vms/novm/disks",
            Some(json!({"vdisk": "nodisk"})),
            Control(Request::VmDiskAttach {
                name: vd("v"),
                vdisk: vd("d"),
            }),
        ),
        (
            "DELETE",
            "/api/v1/vms/novm/disks/nodisk?force=true",
            None,
            Control(Request::VmDiskDetach {
                name: vd("v"),
                vdisk: vd("d"),
                force: true,
                timeout_ms: None,
            }),
        ),
        (
            "POST",
            "/api/v1/vms/novm/pause",
            None,
            Control(Request::VmPause { name: vd("v") }),
        ),
        (
            "POST",
            "/api/v1/vms/novm/resume",
            None,
            Control(Request::VmResume { name: vd("v") }),
        ),
        (
            "DELETE",
            "/api/v1/vms/novm",
            None,
            Control(Request::VmDelete { name: vd("v") }),
        ),
        (
            "GET",
            "/api/v1/cluster",
            None,
            Control(Request::ClusterStatus),
        ),
        (
            "PATCH",
            "/api/v1/vms/novm",
            Some(json!({"vcpus": 2})),
            Control(Request::VmUpdate {
                name: vd("v"),
                new_name: None,
                description: None,
                vcpus: Some(2),
                memory_mib: None,
                cmdline: None,
                disks: None,
                nics: None,
            }),
        ),
        (
            "POST",
            "/api/v1/cluster/tokens",
            Some(json!({"ttl_secs": 60})),
            Control(Request::ClusterToken {
                witness: false,
                ttl_secs: Some(60),
            }),
        ),
        (
            "DELETE",
            "/api/v1/cluster/members/nonode",
            None,
            Control(Request::ClusterRemove {
                node: vd("x"),
                force: false,
            }),
        ),
        (
            "POST",
            "/api/v1/cluster/members/nonode/locate",
            Some(json!({"address": "127.0.0.9:7440"})),
            Control(Request::ClusterLocate {
                node: vd("x"),
                address: "127.0.0.9:7440".into(),
            }),
        ),
        ("GET", "/api/v1/certificate", None, Anyone),
        (
            "PUT",
            "/api/v1/certificate",
            Some(json!({"cert_pem": "x", "key_pem": "y"})),
            AdminOnly,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_matrix() {
    let h = Harness::start().await.unwrap();
    let a = h.admin().await;
    assert_eq!(
        a.post("/api/v1/vdisks", json!({"name": "base", "size": "16M"}))
            .await
            .status,
        201
    );
    assert_eq!(
        a.post("/api/v1/vdisks/base/snapshots", json!({"name": "s0"}))
            .await
            .status,
        201
    );
    let admin_tok = a.post("/api/v1/tokens", json!({"name": "adm"})).await;
    let mut at = h.client();
    at.bearer = Some(admin_tok.json["token"].as_str().unwrap().into());
    let op = h.user_with_token(&a, "oscar", "operator").await;
    let ro = h.user_with_token(&a, "rita", "read_only").await;
    let none = h.client();
    let callers: [(&str, Option<Role>, &Client); 4] = [
        ("read_only", Some(Role::ReadOnly), &ro),
        ("operator", Some(Role::Operator), &op),
        ("admin", Some(Role::Admin), &at),
        ("none", None, &none),
    ];
    let mut cells = 0;
    for (method, path, body, rule) in rows() {
        for (name, role, c) in &callers {
            let r = c.call(method, path, body.clone(), &[]).await;
            cells += 1;
            let Some(role) = role else {
                assert_eq!(
                    r.status, 401,
                    "{method} {path} without credentials: {}",
                    r.text
                );
                continue;
            };
            let want = match &rule {
                Rule::Control(req) => control::allowed(*role, req),
                Rule::AdminOnly => *role == Role::Admin,
                Rule::Anyone => true,
            };
            if want {
                assert!(
                    r.status != 401 && r.status != 403,
                    "{method} {path} as {name} should be allowed: {} {}",
                    r.status,
                    r.text
                );
                assert!(
                    r.status < 500 || r.status == 503,
                    "{method} {path} as {name}: {} {}",
                    r.status,
                    r.text
                );
            } else {
                assert_eq!(
                    r.status, 403,
                    "{method} {path} as {name} should be forbidden: {}",
                    r.text
                );
                assert_eq!(r.json["error"]["code"], "forbidden");
            }
        }
    }
    assert!(cells >= 150, "{cells} cells");

    // Someone else's objects: tokens of others are invisible (404), users of others forbidden.
    let admin_id = admin_tok.json["id"].as_str().unwrap();
    for c in [&op, &ro] {
        assert_eq!(
            c.delete(&format!("/api/v1/tokens/{admin_id}")).await.status,
            404
        );
        let listed = c.get("/api/v1/tokens").await;
        assert!(listed.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["owner"] != "admin"));
        assert_eq!(c.get("/api/v1/users/admin").await.status, 403);
        assert_eq!(
            c.patch(
                "/api/v1/users/admin",
                json!({"password": "another long password"})
            )
            .await
            .status,
            403
        );
    }
    assert_eq!(
        ro.get("/api/v1/users/rita").await.status,
        200,
        "a user may read themselves"
    );
    let all = at.get("/api/v1/tokens").await;
    assert!(
        all.json["items"].as_array().unwrap().len() >= 3,
        "admin sees every token"
    );
    assert_eq!(
        at.get("/api/v1/vdisks/base").await.status,
        200,
        "admin token still valid"
    );
    // A forbidden mutation is audited.
    let audit = a.get("/api/v1/audit?limit=1000").await;
    assert!(audit.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["user"] == "rita" && e["result"] == "forbidden"));
    h.stop().await;
}

fn schema_for(doc: &Value, path: &str, method: &str, status: u16) -> Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not in openapi.json");
    let r = &op["responses"][status.to_string()];
    assert!(
        r.is_object(),
        "{method} {path} has no {status} response in openapi.json"
    );
    r["content"]["application/json"]["schema"].clone()
}

fn check(doc: &Value, path: &str, method: &str, resp: &common::Resp) {
    let schema = schema_for(doc, path, method, resp.status);
    if schema.is_null() {
        assert!(
            resp.text.is_empty(),
            "{method} {path}: body where none is documented"
        );
        return;
    }
    let root = json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "allOf": [schema], "components": doc["components"]});
    let v = jsonschema::validator_for(&root).expect("schema compiles");
    let errors: Vec<String> = v
        .iter_errors(&resp.json)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {}: {errors:?}\n{}",
        resp.status,
        resp.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_matches_routes_and_live_answers() {
    let doc: Value = serde_json::from_str(api::OPENAPI_JSON).unwrap();
    // Same set of operations in the route table and the document.
    let mut from_routes: Vec<String> = api::routes::ROUTES
        .iter()
        .map(|(m, p, _)| format!("{} {p}", m.as_str().to_lowercase()))
        .collect();
    let mut from_doc: Vec<String> = Vec::new();
    for (p, ops) in doc["paths"].as_object().unwrap() {
        for m in ops.as_object().unwrap().keys() {
            from_doc.push(format!("{m} {p}"));
        }
    }
    from_routes.sort();
    from_doc.sort();
    assert_eq!(from_routes, from_doc);

    let h = Harness::start().await.unwrap();
    let a = h.admin().await;
    // VM definitions only check that the kernel is a file; these tests never boot it.
    let kernel = h.dir.path().join("not-a-kernel.bin");
    std::fs::write(&kernel, [0u8; 4096]).unwrap();
    let vm_body = json!({"name": "v1", "vcpus": 1, "memory_mib": 64, "disks": ["o1"],
        "kernel": kernel.display().to_string(),
        "nics": [{"tap": "t0", "bridge": "br0"}, {"tap": "t1", "mac": "02:00:00:00:00:01"},
            {"tap": "t2", "bridge": "none"}]});
    let calls: Vec<(&str, &str, &str, Option<Value>)> = vec![
        ("get", "/health", "/api/v1/health", None),
        ("get", "/auth/me", "/api/v1/auth/me", None),
        (
            "post",
            "/vdisks",
            "/api/v1/vdisks",
            Some(json!({"name": "o1", "size": "16M"})),
        ),
        (
            "post",
            "/vdisks",
            "/api/v1/vdisks",
            Some(json!({"name": "o1", "size": "16M"})),
        ),
        (
            "post",
            "/vdisks",
            "/api/v1/vdisks",
            Some(json!({"name": "", "size": "16M"})),
        ),
        ("get", "/vdisks", "/api/v1/vdisks", None),
        ("get", "/vdisks/{name}", "/api/v1/vdisks/o1", None),
        ("get", "/vdisks/{name}", "/api/v1/vdisks/none", None),
        (
            "patch",
            "/vdisks/{name}",
            "/api/v1/vdisks/o1",
            Some(json!({"size": "32M"})),
        ),
        (
            "post",
            "/vdisks/{name}/snapshots",
            "/api/v1/vdisks/o1/snapshots",
            Some(json!({"name": "s"})),
        ),
        (
            "get",
            "/vdisks/{name}/snapshots",
            "/api/v1/vdisks/o1/snapshots",
            None,
        ),
        (
            "get",
            "/vdisks/{name}/diff",
            "/api/v1/vdisks/o1/diff?from=s",
            None,
        ),
        (
            "post",
            "/vdisks/{name}/clone",
            "/api/v1/vdisks/o1/clone",
            Some(json!({"name": "o2"})),
        ),
        ("get", "/tasks", "/api/v1/tasks", None),
        ("get", "/tasks/{id}", "/api/v1/tasks/1", None),
        ("get", "/nodes", "/api/v1/nodes", None),
        ("get", "/disks", "/api/v1/disks", None),
        ("get", "/pool", "/api/v1/pool", None),
        ("get", "/nbd", "/api/v1/nbd", None),
        ("get", "/events", "/api/v1/events", None),
        ("get", "/alerts", "/api/v1/alerts", None),
        ("get", "/users", "/api/v1/users", None),
        (
            "post",
            "/users",
            "/api/v1/users",
            Some(json!({"name": "u1", "role": "operator", "password": "a long password here"})),
        ),
        ("get", "/users/{name}", "/api/v1/users/u1", None),
        (
            "post",
            "/tokens",
            "/api/v1/tokens",
            Some(json!({"name": "tk"})),
        ),
        ("get", "/tokens", "/api/v1/tokens", None),
        ("get", "/certificate", "/api/v1/certificate", None),
        ("get", "/audit", "/api/v1/audit", None),
        ("get", "/system/log", "/api/v1/system/log?after=1", None),
        ("get", "/system/log", "/api/v1/system/log?after=x", None),
        (
            "get",
            "/system/log",
            "/api/v1/system/log?before=3&limit=1",
            None,
        ),
        (
            "get",
            "/system/log",
            "/api/v1/system/log?after=1&before=3",
            None,
        ),
        ("get", "/stats", "/api/v1/stats", None),
        (
            "get",
            "/stats/history",
            "/api/v1/stats/history?limit=5",
            None,
        ),
        (
            "delete",
            "/vdisks/{name}/snapshots/{snapshot}",
            "/api/v1/vdisks/o1/snapshots/s",
            None,
        ),
        ("delete", "/users/{name}", "/api/v1/users/u1", None),
        ("post", "/vms", "/api/v1/vms", Some(vm_body.clone())),
        ("post", "/vms", "/api/v1/vms", Some(vm_body)),
        (
            "post",
            "/vms",
            "/api/v1/vms",
            Some(json!({"name": "v2", "vcpus": 0, "memory_mib": 64, "kernel": "/k"})),
        ),
        ("get", "/vms", "/api/v1/vms?limit=10", None),
        ("get", "/vms/{name}", "/api/v1/vms/v1", None),
        ("get", "/vms/{name}", "/api/v1/vms/none", None),
        ("get", "/vms/{name}/disks", "/api/v1/vms/v1/disks", None),
        (
            "get",
            "/vms/{name}/console",
            "/api/v1/vms/v1/console?max_bytes=100",
            None,
        ),
        ("post", "/vms/{name}/stop", "/api/v1/vms/v1/stop", None),
        (
            "post",
            "/vms/{name}/stop",
            "/api/v1/vms/v1/stop",
            Some(json!({"force": true})),
        ),
        ("post", "/vms/{name}/pause", "/api/v1/vms/v1/pause", None),
        ("post", "/vms/{name}/resume", "/api/v1/vms/v1/resume", None),
        (
            "delete",
            "/vms/{name}/disks/{vdisk}",
            "/api/v1/vms/v1/disks/nope",
            None,
        ),
        (
            "delete",
            "/vms/{name}/disks/{vdisk}",
            "/api/v1/vms/v1/disks/o1?force=maybe",
            None,
        ),
        (
            "delete",
            "/vms/{name}/disks/{vdisk}",
            "/api/v1/vms/v1/disks/o1?timeout_ms=100",
            None,
        ),
        (
            "patch",
            "/vms/{name}",
            "/api/v1/vms/v1",
            Some(json!({"description": "d", "vcpus": 2, "nics": [{"tap": "t0"}]})),
        ),
        ("patch", "/vms/{name}", "/api/v1/vms/v1", Some(json!({}))),
        (
            "patch",
            "/vms/{name}",
            "/api/v1/vms/none",
            Some(json!({"vcpus": 2})),
        ),
        (
            "post",
            "/cluster/tokens",
            "/api/v1/cluster/tokens",
            Some(json!({"witness": true})),
        ),
        (
            "delete",
            "/cluster/members/{node}",
            "/api/v1/cluster/members/nobody",
            None,
        ),
        ("post", "/vms/{name}/start", "/api/v1/vms/v1/start", None),
        ("delete", "/vms/{name}", "/api/v1/vms/v1", None),
        ("get", "/cluster", "/api/v1/cluster", None),
    ];
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut statuses = Vec::new();
    for (m, p, url, body) in calls {
        let r = a.call(&m.to_uppercase(), url, body, &[]).await;
        check(&doc, p, m, &r);
        statuses.push((format!("{m} {url}"), r.status));
    }
    // The VM calls answered as designed, not merely in some documented shape.
    let want = [
        ("post /api/v1/vms", 201),
        ("get /api/v1/vms/v1", 200),
        ("get /api/v1/vms/none", 404),
        ("get /api/v1/vms/v1/disks", 200),
        ("post /api/v1/vms/v1/stop", 409),
        ("delete /api/v1/vms/v1/disks/nope", 404),
        ("delete /api/v1/vms/v1/disks/o1?force=maybe", 400),
        ("delete /api/v1/vms/v1/disks/o1?timeout_ms=100", 200),
        ("delete /api/v1/vms/v1", 204),
        ("patch /api/v1/vms/v1", 200),
        ("patch /api/v1/vms/v1", 400),
        ("patch /api/v1/vms/none", 404),
        ("post /api/v1/cluster/tokens", 201),
        ("delete /api/v1/cluster/members/nobody", 404),
        ("get /api/v1/system/log?before=3&limit=1", 200),
        ("get /api/v1/system/log?after=1&before=3", 400),
    ];
    for (call, status) in want {
        assert!(
            statuses.iter().any(|(c, s)| c == call && *s == status),
            "{call} never answered {status}: {statuses:?}"
        );
    }
    let audit = a.get("/api/v1/audit?limit=1000").await;
    let items = audit.json["items"].as_array().unwrap();
    for action in ["vm_create", "vm_delete"] {
        assert!(
            items
                .iter()
                .any(|e| e["action"] == action && e["target"] == "v1" && e["result"] == "ok"),
            "{action} of v1 is not in the audit log"
        );
    }
    h.stop().await;
}
