//! The OpenAPI document and the server agree on POST /control bodies (one schema per action,
//! oneOf by `action`) and on `ip:port` text (IPv4 or bracketed IPv6), and an NBD export can
//! listen on IPv6 loopback.

mod common;

use control::Request;
use serde_json::{json, Value};

fn doc() -> Value {
    serde_json::from_str(api::OPENAPI_JSON).expect("openapi.json parses")
}

/// A validator for one component schema of the document.
fn component(doc: &Value, name: &str) -> jsonschema::Validator {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{name}"),
        "components": doc["components"],
    });
    jsonschema::validator_for(&root).expect("schema compiles")
}

/// What the server makes of a /control body: read (unknown fields refused), then checked.
fn server_accepts(body: &Value) -> bool {
    Request::from_json(body.clone()).is_ok_and(|r| r.validate().is_ok())
}

/// Every `ip:port` text the document's pattern allows is one the server parses, and the other
/// way round, over IPv4/IPv6 shapes near the edges (group counts, `::` places, ports, zones).
#[test]
fn socket_addr_pattern_and_parser_agree() {
    let doc = doc();
    let v = component(&doc, "SocketAddr");
    let mut hosts: Vec<String> = [
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "256.1.1.1",
        "01.2.3.4",
        "1.2.3",
        "1.2.3.4.5",
        "localhost",
        "",
        "[]",
        "[::1%1]",
        "[::ffff:1.2.3.4]",
        "[::1",
        "::1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // IPv6: 0-9 groups with `::` at every place or nowhere, groups of several shapes.
    for n in 0..=9usize {
        for group in ["0", "1", "fFfF", "0001", "12345", "g"] {
            let groups = vec![group; n];
            hosts.push(format!("[{}]", groups.join(":")));
            for at in 0..=n {
                let (a, b) = groups.split_at(at);
                hosts.push(format!("[{}::{}]", a.join(":"), b.join(":")));
            }
        }
    }
    let mut checked = 0;
    for host in &hosts {
        for port in ["0", "1", "080", "10809", "65535", "65536", "", "-1"] {
            let text = format!("{host}:{port}");
            let by_schema = v.is_valid(&json!(text));
            let by_server = control::parse_socket_addr(&text).is_some();
            assert_eq!(
                by_schema, by_server,
                "{text:?}: schema says {by_schema}, server says {by_server}"
            );
            checked += 1;
        }
    }
    assert!(checked > 1000, "only {checked} cases");
    assert!(v.is_valid(&json!("[::1]:10809")));
    assert!(!v.is_valid(&json!("[::1%lo]:10809")));
}

/// Each action's schema takes exactly what the server takes: valid bodies pass both, a body
/// with a field its action lacks, a missing field or a bad value fails both.
#[test]
fn control_bodies_match_the_document() {
    let doc = doc();
    let body_schema =
        &doc["paths"]["/control"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body_schema["$ref"], "#/components/schemas/ControlRequest");
    let v = component(&doc, "ControlRequest");
    let one_of = doc["components"]["schemas"]["ControlRequest"]["oneOf"]
        .as_array()
        .expect("oneOf");
    // One schema per action the server knows.
    let documented: Vec<&str> = one_of
        .iter()
        .map(|s| s["properties"]["action"]["const"].as_str().expect("const"))
        .collect();
    for (i, a) in documented.iter().enumerate() {
        assert!(!documented[..i].contains(a), "{a} documented twice");
        let bare = json!({ "action": a });
        // An action with required fields is refused without them by both sides.
        let needs_fields = one_of[i]["required"].as_array().unwrap().len() > 1;
        assert_eq!(v.is_valid(&bare), !needs_fields, "{a}");
        if !needs_fields {
            assert!(server_accepts(&bare), "{a}");
        }
    }
    assert_eq!(documented.len(), 42, "every Request variant is documented");

    let good = [
        json!({"action": "disk_list"}),
        json!({"action": "disk_add", "path": "/var/tmp/d.img"}),
        json!({"action": "disk_remove", "disk": "ü".repeat(256)}),
        json!({"action": "vdisk_create", "name": "a", "size_bytes": 4096}),
        json!({"action": "vdisk_clone", "source": "a", "name": "b", "snapshot": null}),
        json!({"action": "snapshot_diff", "vdisk": "a", "from": "s1"}),
        json!({"action": "nbd_start", "vdisk": "a", "listen": "[::1]:0", "read_only": true}),
        json!({"action": "nbd_start", "vdisk": "a", "listen": null}),
        json!({"action": "nbd_stop", "id": 18446744073709551615u64}),
        json!({"action": "vm_create", "name": "v", "vcpus": 1, "memory_mib": 16,
               "kernel": "/k", "disks": ["a", "b"], "cmdline": "console=ttyS0"}),
        json!({"action": "vm_update", "name": "v", "description": "é".repeat(1024)}),
        json!({"action": "vm_update", "name": "v", "nics": [{"tap": "tap0", "mac": "02:00:00:00:00:01"}]}),
        json!({"action": "vm_update", "name": "v", "nics": [{"tap": "t", "bridge": "br0", "vlan": 1},
               {"tap": "u", "bridge": "br0", "vlan": 4094}, {"tap": "w", "vlan": null}]}),
        // bridge none: a plain tap, even on a node with a default bridge; not a bridge name,
        // so a tap of that name does not clash with it.
        json!({"action": "vm_update", "name": "v", "nics": [{"tap": "t", "bridge": "none"},
               {"tap": "none", "bridge": "none", "vlan": null}]}),
        json!({"action": "vm_create", "name": "v", "vcpus": 1, "memory_mib": 16, "kernel": "/k",
               "nics": [{"tap": "t", "bridge": "none"}, {"tap": "u", "bridge": "Nonesuch"}]}),
        json!({"action": "vm_stop", "name": "v", "force": false, "timeout_ms": 600000}),
        json!({"action": "vm_console", "name": "v", "max_bytes": 1048576}),
        json!({"action": "cluster_token", "witness": true, "ttl_secs": 604800}),
        json!({"action": "cluster_join", "address": "[fd00::2]:7440", "token": "t"}),
        json!({"action": "cluster_remove", "node": "2", "force": true}),
    ];
    for b in &good {
        assert!(v.is_valid(b), "schema refuses {b}");
        assert!(server_accepts(b), "server refuses {b}");
    }
    let bad = [
        json!({"action": "disk_list", "x": 1}),
        json!({"action": "nope"}),
        json!({"name": "a"}),
        json!({"action": "vdisk_get", "name": "a", "extra": true}),
        json!({"action": "vdisk_create", "name": "a", "size_bytes": 4097}),
        json!({"action": "vdisk_create", "name": "a b", "size_bytes": 4096}),
        json!({"action": "disk_add", "path": "rel/ative"}),
        json!({"action": "disk_add", "path": "/a\u{0}b"}),
        json!({"action": "disk_remove", "disk": ""}),
        json!({"action": "nbd_start", "vdisk": "a", "listen": "[::1%1]:0"}),
        json!({"action": "nbd_start", "vdisk": "a", "listen": "127.0.0.1:080"}),
        json!({"action": "nbd_start", "vdisk": "a", "read_only": null}),
        json!({"action": "nbd_stop", "id": -1}),
        json!({"action": "vm_create", "name": "v", "vcpus": 33, "memory_mib": 16, "kernel": "/k"}),
        json!({"action": "vm_create", "name": "v", "vcpus": 1, "memory_mib": 16, "kernel": "/k",
               "disks": ["a", "a"]}),
        json!({"action": "vm_create", "name": "v", "vcpus": 1, "memory_mib": 16, "kernel": "/k",
               "cmdline": "a\nb"}),
        json!({"action": "vm_update", "name": "v"}),
        json!({"action": "vm_update", "name": "v", "vcpus": null}),
        json!({"action": "vm_update", "name": "v", "nics": [{"tap": "t", "x": 1}]}),
        json!({"action": "vm_update", "name": "v", "nics": [{"tap": ".."}]}),
        json!({"action": "vm_update", "name": "v", "nics": [{"tap": "t", "bridge": "br0", "vlan": 0}]}),
        json!({"action": "vm_update", "name": "v", "nics": [{"tap": "t", "bridge": "br0", "vlan": 4095}]}),
        json!({"action": "vm_update", "name": "v", "nics": [{"tap": "t", "bridge": "br0", "vlan": "10"}]}),
        json!({"action": "vm_update", "name": "v", "nics": [{"tap": "t", "vlan": 10}]}),
        json!({"action": "vm_update", "name": "v", "nics": [{"tap": "t", "bridge": null, "vlan": 10}]}),
        json!({"action": "vm_update", "name": "v", "nics": [{"tap": "t", "bridge": "none", "vlan": 10}]}),
        json!({"action": "vm_update", "name": "v", "nics": [{"tap": "t", "bridge": "None"}]}),
        json!({"action": "vm_create", "name": "v", "vcpus": 1, "memory_mib": 16, "kernel": "/k",
               "nics": [{"tap": "t", "bridge": "NONE"}]}),
        json!({"action": "vm_stop", "name": "v", "timeout_ms": 600001}),
        json!({"action": "vm_console", "name": "v", "max_bytes": 0}),
        json!({"action": "cluster_token", "ttl_secs": 0}),
        json!({"action": "cluster_join", "address": "127.0.0.1:7440", "token": "é"}),
    ];
    for b in &bad {
        assert!(!v.is_valid(b), "schema takes {b}");
        assert!(!server_accepts(b), "server takes {b}");
    }
}

/// An NBD export listens where it is asked to, IPv6 included, through the REST route and
/// through /control; a zone id is refused with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbd_export_listens_on_ipv6_loopback() {
    let h = common::Harness::start().await.expect("harness");
    let a = h.admin().await;
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("skipped: nbd_export_listens_on_ipv6_loopback (no IPv6 loopback here)");
        h.stop().await;
        return;
    }
    let r = a
        .post(
            "/api/v1/vdisks",
            json!({"name": "v6", "size_bytes": 1 << 20}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = a
        .post(
            "/api/v1/nbd",
            json!({"vdisk": "v6", "listen": "[::1]:0", "read_only": true}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let listen = r.json["listen"].as_str().expect("listen").to_string();
    assert!(listen.starts_with("[::1]:"), "{listen}");
    // A real NBD server answers there: the newstyle greeting starts with "NBDMAGIC".
    let mut s = tokio::net::TcpStream::connect(listen.as_str())
        .await
        .expect("connect to the export");
    let mut magic = [0u8; 8];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut magic)
        .await
        .expect("greeting");
    assert_eq!(&magic, b"NBDMAGIC");
    drop(s);
    let id = r.json["id"].as_u64().expect("id");
    assert_eq!(a.delete(&format!("/api/v1/nbd/{id}")).await.status, 204);

    let r = a
        .post(
            "/api/v1/control",
            json!({"action": "nbd_start", "vdisk": "v6", "listen": "[::1]:0"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let listen = r.json["value"]["listen"].as_str().unwrap_or_default();
    assert!(listen.starts_with("[::1]:"), "{}", r.text);

    for bad in ["[::1%1]:0", "[::ffff:127.0.0.1]:0", "::1:0"] {
        let r = a
            .post("/api/v1/nbd", json!({"vdisk": "v6", "listen": bad}))
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
    }
    // A field nbd_start does not have, and one given to an action without fields: 400.
    for body in [
        json!({"action": "nbd_start", "vdisk": "v6", "port": 1}),
        json!({"action": "nbd_list", "vdisk": "v6"}),
    ] {
        let r = a.post("/api/v1/control", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
    }
    h.stop().await;
}
