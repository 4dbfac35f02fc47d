//! Editing VMs (`PATCH /api/v1/vms/{name}`) and cluster membership (`POST /cluster/tokens`,
//! `DELETE /cluster/members/{node}`) against a real node: every validation error, not found,
//! conflict, idempotency, audit and task records; and, with KVM, a running guest: the changes
//! that need a stop are refused, and a disk detach that waits for the guest leaves status,
//! console and stop usable while refusing a second change.

mod common;
use common::Harness;
use common::{err_has, kvm_usable};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_edit_validation_conflicts_and_records() {
    let h = Harness::start().await.unwrap();
    let a = h.admin().await;
    for d in ["d1", "d2"] {
        let r = a
            .post("/api/v1/vdisks", json!({"name": d, "size": "16M"}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    // Defining a VM only checks that the kernel is a file; nothing here boots it.
    let kernel = h.dir.path().join("not-a-kernel.bin");
    std::fs::write(&kernel, [0u8; 4096]).unwrap();
    let k = kernel.display().to_string();
    for (n, disks) in [("v1", json!(["d1", "d2"])), ("v2", json!([]))] {
        let r = a
            .post(
                "/api/v1/vms",
                json!({"name": n, "vcpus": 1, "memory_mib": 64, "disks": disks, "kernel": k}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let v = a.get("/api/v1/vms/v1").await;
    assert_eq!(v.json["description"], "");
    assert_eq!(v.json["nics"], json!([]));
    assert_eq!(v.json["operation"], Value::Null);

    // Bad input: 400 with a sentence, and nothing changes.
    let bad = [
        (json!({}), "nothing to change"),
        (json!({"vcpus": 0}), "1 to 32 vCPUs"),
        (json!({"vcpus": 33}), "1 to 32 vCPUs"),
        (json!({"memory_mib": 1}), "VM memory must be"),
        (json!({"name": "-bad"}), "must start with a letter or digit"),
        (json!({"cmdline": "a\nb"}), "one line"),
        (
            json!({"description": "x".repeat(1025)}),
            "at most 1024 characters",
        ),
        (json!({"disks": ["d1", "d1"]}), "listed twice"),
        (
            json!({"nics": [{"tap": "much-too-long-tap"}]}),
            "tap device name",
        ),
        (
            json!({"nics": [{"tap": "t0", "mac": "01:00:00:00:00:01"}]}),
            "multicast",
        ),
        (
            json!({"nics": [{"tap": "t0", "mac": "02:00:00:00:01"}]}),
            "six hex pairs",
        ),
        (json!({"vcpu": 2}), "unknown field"),
    ];
    for (body, words) in bad {
        let r = a.patch("/api/v1/vms/v1", body.clone()).await;
        err_has(&r, 400, words);
        assert_eq!(r.json["error"]["code"], "invalid_argument", "{body}");
    }
    // Which disks the VM has is its state: a list that differs from it is a conflict (409).
    for body in [
        json!({"disks": ["d1"]}),
        json!({"disks": ["d1", "d2", "d3"]}),
    ] {
        let r = a.patch("/api/v1/vms/v1", body.clone()).await;
        err_has(&r, 409, "in the new order");
    }
    let same = a.get("/api/v1/vms/v1").await;
    assert_eq!(same.json["vcpus"], 1);
    assert_eq!(same.json["disks"], json!(["d1", "d2"]));
    err_has(
        &a.patch("/api/v1/vms/nope", json!({"vcpus": 2})).await,
        404,
        "no VM named nope",
    );

    // A stopped VM takes every change; only the given fields change; the boot disk moves.
    let r = a
        .patch(
            "/api/v1/vms/v1",
            json!({"vcpus": 2, "memory_mib": 96, "description": "web front end",
                "cmdline": "console=ttyS0", "disks": ["d2", "d1"],
                "nics": [{"tap": "cairn-t0"}, {"tap": "cairn-t1", "mac": "02:AA:00:00:00:01"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["vcpus"], 2);
    assert_eq!(r.json["memory_mib"], 96);
    assert_eq!(r.json["description"], "web front end");
    assert_eq!(r.json["cmdline"], "console=ttyS0");
    assert_eq!(r.json["disks"], json!(["d2", "d1"]));
    let nics = r.json["nics"].as_array().unwrap().clone();
    assert_eq!(nics.len(), 2);
    assert_eq!(nics[0]["id"], "net0");
    assert_eq!(nics[0]["tap"], "cairn-t0");
    let derived = nics[0]["mac"].as_str().unwrap().to_string();
    assert!(
        derived.starts_with("02:") && derived.len() == 17,
        "{derived}"
    );
    assert_eq!(nics[1]["mac"], "02:aa:00:00:00:01", "stored lower case");
    // Saved: the definition file holds it (it is what the node loads at its next start).
    let saved = std::fs::read_to_string(h.dir.path().join("data/vms.json")).unwrap();
    assert!(
        saved.contains("web front end") && saved.contains("cairn-t1"),
        "{saved}"
    );
    // A NIC listed again without a MAC keeps its address; the second one is removed.
    let r = a
        .patch("/api/v1/vms/v1", json!({"nics": [{"tap": "cairn-t0"}]}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["nics"][0]["mac"], derived.as_str());
    assert_eq!(r.json["nics"].as_array().unwrap().len(), 1);
    // Two NICs may not share a MAC, given or kept.
    err_has(
        &a.patch(
            "/api/v1/vms/v1",
            json!({"nics": [{"tap": "cairn-t0"}, {"tap": "x1", "mac": derived}]}),
        )
        .await,
        409,
        "used by two NICs",
    );
    // So may two NICs not share a tap device: a conflict between them, like the MAC.
    err_has(
        &a.patch(
            "/api/v1/vms/v1",
            json!({"nics": [{"tap": "t0"}, {"tap": "t0"}]}),
        )
        .await,
        409,
        "used by two NICs",
    );

    // Rename: onto another VM's name is a conflict; otherwise the old name is gone.
    let r = a.patch("/api/v1/vms/v1", json!({"name": "v2"})).await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.json["error"]["code"], "already_exists");
    let r = a.patch("/api/v1/vms/v1", json!({"name": "web"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["name"], "web");
    assert_eq!(a.get("/api/v1/vms/v1").await.status, 404);
    let w = a.get("/api/v1/vms/web").await;
    assert_eq!(w.json["disks"], json!(["d2", "d1"]), "the rest moved along");
    // The disks stay in use by the renamed VM (a conflict: delete the VM first).
    err_has(
        &a.delete("/api/v1/vdisks/d1").await,
        409,
        "d1 is a disk of VM web",
    );

    // Idempotency: the same key and body replay the answer; another body is a conflict.
    let key = [("idempotency-key", "edit-1")];
    let first = a
        .call("PATCH", "/api/v1/vms/web", Some(json!({"vcpus": 3})), &key)
        .await;
    assert_eq!(first.status, 200, "{}", first.text);
    let again = a
        .call("PATCH", "/api/v1/vms/web", Some(json!({"vcpus": 3})), &key)
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(
        again
            .headers
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let other = a
        .call("PATCH", "/api/v1/vms/web", Some(json!({"vcpus": 4})), &key)
        .await;
    assert_eq!(other.status, 409, "{}", other.text);
    assert_eq!(a.get("/api/v1/vms/web").await.json["vcpus"], 3);

    // Roles: read-only may not edit (audited as forbidden), an operator may.
    let ro = h.user_with_token(&a, "rita", "read_only").await;
    let op = h.user_with_token(&a, "oscar", "operator").await;
    assert_eq!(
        ro.patch("/api/v1/vms/web", json!({"vcpus": 1}))
            .await
            .status,
        403
    );
    assert_eq!(
        op.patch("/api/v1/vms/web", json!({"description": "by oscar"}))
            .await
            .status,
        200
    );

    // Audit and task records: each edit is both, with its result.
    let audit = a.get("/api/v1/audit?limit=1000").await;
    let items = audit.json["items"].as_array().unwrap();
    assert!(items
        .iter()
        .any(|e| e["action"] == "vm_update" && e["target"] == "v1 -> web" && e["result"] == "ok"));
    assert!(items
        .iter()
        .any(|e| e["action"] == "vm_update" && e["user"] == "rita" && e["result"] == "forbidden"));
    let tasks = a.get("/api/v1/tasks?limit=100").await;
    let t = tasks.json["items"].as_array().unwrap();
    assert!(t
        .iter()
        .any(|t| t["action"] == "vm_update" && t["state"] == "succeeded"));
    assert!(
        t.iter().any(|t| t["action"] == "vm_update"
            && t["state"] == "failed"
            && t["error"]["code"] == "already_exists"),
        "the refused rename left a failed task: {}",
        tasks.text
    );
    // Input refused by its shape alone never reaches the node, so it makes no task; what only
    // the node can judge (a disk order that is not the VM's disks) is a failed task.
    let msg = |t: &Value| {
        t["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        !t.iter().any(|t| msg(t).contains("1 to 32 vCPUs")),
        "bad input made a task: {}",
        tasks.text
    );
    assert!(t
        .iter()
        .any(|t| t["state"] == "failed" && msg(t).contains("in the new order")));
    h.stop().await;
}

/// On a node with a default bridge (the appliance's), a NIC left without a bridge joins it and
/// one on bridge `none` stays a plain tap, through create and an edit that sends the list
/// back; misspellings and a VLAN on none are refused with why, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_none_keeps_a_plain_tap_on_a_node_with_a_default_bridge() {
    let h = Harness::start_with(|c| c.vm_bridge = Some("cairn0".into()))
        .await
        .unwrap();
    let a = h.admin().await;
    let kernel = h.dir.path().join("not-a-kernel.bin");
    std::fs::write(&kernel, [0u8; 4096]).unwrap();
    let r = a
        .post(
            "/api/v1/vms",
            json!({"name": "v", "vcpus": 1, "memory_mib": 64,
                "kernel": kernel.display().to_string(),
                "nics": [{"tap": "t0"}, {"tap": "t1", "bridge": "none"}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let bridges = |v: &Value| -> Vec<Value> {
        v["nics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["bridge"].clone())
            .collect()
    };
    let want = vec![json!("cairn0"), Value::Null];
    assert_eq!(bridges(&r.json), want);
    let t1_mac = r.json["nics"][1]["mac"].clone();

    // Sent back as shown, with none for the plain tap: nothing moves.
    let r = a
        .patch(
            "/api/v1/vms/v",
            json!({"nics": [{"tap": "t0", "bridge": "cairn0"}, {"tap": "t1", "bridge": "none"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(bridges(&r.json), want);
    assert_eq!(r.json["nics"][1]["mac"], t1_mac);
    for (nic, words) in [
        (json!({"tap": "t1", "bridge": "None"}), "in lower case"),
        (
            json!({"tap": "t1", "bridge": "none", "vlan": 10}),
            "its bridge is none",
        ),
    ] {
        let r = a.patch("/api/v1/vms/v", json!({ "nics": [nic] })).await;
        err_has(&r, 400, words);
    }
    assert_eq!(bridges(&a.get("/api/v1/vms/v").await.json), want);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_tokens_and_member_removal() {
    let h = Harness::start().await.unwrap();
    let a = h.admin().await;
    let t = a.post("/api/v1/cluster/tokens", json!({})).await;
    assert_eq!(t.status, 201, "{}", t.text);
    assert_eq!(t.json["role"], "data");
    assert_eq!(t.json["expires_in_secs"], 3600);
    assert!(t.json["token"].as_str().unwrap().len() >= 16);
    assert!(t.json["address"].as_str().unwrap().contains(':'));
    let w = a
        .post(
            "/api/v1/cluster/tokens",
            json!({"witness": true, "ttl_secs": 600}),
        )
        .await;
    assert_eq!(w.status, 201, "{}", w.text);
    assert_eq!(w.json["role"], "witness");
    assert_eq!(w.json["expires_in_secs"], 600);
    assert_ne!(w.json["token"], t.json["token"], "one token per call");
    err_has(
        &a.post("/api/v1/cluster/tokens", json!({"ttl_secs": 0}))
            .await,
        400,
        "token lifetime",
    );
    err_has(
        &a.post("/api/v1/cluster/tokens", json!({"role": "witness"}))
            .await,
        400,
        "unknown field",
    );
    // A join token (like an API token) is never kept for an idempotent replay.
    for path in ["/api/v1/cluster/tokens", "/api/v1/tokens"] {
        let r = a
            .call(
                "POST",
                path,
                Some(json!({"name": "k"})),
                &[("idempotency-key", "tok-1")],
            )
            .await;
        err_has(&r, 400, "cannot be replayed");
    }
    let op = h.user_with_token(&a, "oscar", "operator").await;
    assert_eq!(
        op.post("/api/v1/cluster/tokens", json!({})).await.status,
        403,
        "membership is admin work"
    );
    err_has(
        &a.delete("/api/v1/cluster/members/no-such-node").await,
        404,
        "no member",
    );
    err_has(
        &a.delete("/api/v1/cluster/members/x?force=maybe").await,
        400,
        "force must be",
    );
    // The node refuses to remove a member that owns data, in words the UI shows as they are.
    assert_eq!(
        a.post("/api/v1/vdisks", json!({"name": "keep", "size": "8M"}))
            .await
            .status,
        201
    );
    // Placement is recorded through raft shortly after the create; ask only once it is, so
    // this never removes the node's only member.
    let t0 = Instant::now();
    let my_id = loop {
        let c = a.get("/api/v1/cluster").await;
        let owned = c.json["vdisks"]
            .as_array()
            .is_some_and(|v| v.iter().any(|d| d == "keep"));
        if owned {
            break c.json["me"].as_u64().unwrap();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "keep never reached the cluster state: {}",
            c.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let refusal = a.delete(&format!("/api/v1/cluster/members/{my_id}")).await;
    err_has(&refusal, 409, "still owns virtual disks [keep]");
    let tasks = a.get("/api/v1/tasks?limit=100").await;
    assert!(tasks.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["action"] == "cluster_remove" && t["state"] == "failed"));
    h.stop().await;
}

/// Waits up to 20 s for `f` on the VM's view.
async fn wait_vm(a: &common::Client, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let v = a.get(&format!("/api/v1/vms/{name}")).await;
        if f(&v.json) {
            return v.json;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{name} never {what}: {}",
            v.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_vm_edit_and_a_waiting_detach_block_nothing_else() {
    if !kvm_usable() {
        println!("skipped: no usable /dev/kvm");
        return;
    }
    let h = Harness::start().await.unwrap();
    let a = h.admin().await;
    for d in ["r1", "r2"] {
        let r = a
            .post("/api/v1/vdisks", json!({"name": d, "size": "8M"}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    // This guest only waits for the ACPI power button: it never answers an eject request.
    let r = a
        .post(
            "/api/v1/vms",
            json!({"name": "g", "vcpus": 1, "memory_mib": 64, "disks": ["r1", "r2"],
                "kernel": test_guests::guest_elf_path(), "cmdline": "wait-shutdown"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = a.post("/api/v1/vms/g/start", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["state"], "running");

    // Running: what the machine is built from needs a stop; the description does not.
    for (body, what) in [
        (json!({"vcpus": 2}), "vCPUs"),
        (json!({"memory_mib": 128}), "memory"),
        (json!({"disks": ["r2", "r1"]}), "disk order"),
        (json!({"nics": [{"tap": "t0"}]}), "NICs"),
        (json!({"name": "g2"}), "name"),
    ] {
        err_has(
            &a.patch("/api/v1/vms/g", body).await,
            409,
            &format!("stop it before changing its {what}"),
        );
    }
    let r = a
        .patch(
            "/api/v1/vms/g",
            json!({"description": "live note", "vcpus": 1}),
        )
        .await;
    assert_eq!(r.status, 200, "unchanged vCPUs are no change: {}", r.text);
    assert_eq!(r.json["description"], "live note");
    assert_eq!(r.json["state"], "running");

    // A detach the guest never answers: it waits its timeout, holding no lock.
    let detach_client = a.clone();
    let t_detach = Instant::now();
    let detach = tokio::spawn(async move {
        detach_client
            .delete("/api/v1/vms/g/disks/r2?timeout_ms=15000")
            .await
    });
    wait_vm(&a, "g", "showed the detach", |v| {
        v["operation"] == "detaching disk r2"
    })
    .await;
    let t = Instant::now();
    let v = a.get("/api/v1/vms/g").await;
    assert_eq!(v.status, 200);
    assert_eq!(v.json["state"], "running");
    let con = a.get("/api/v1/vms/g/console").await;
    assert_eq!(con.status, 200, "{}", con.text);
    // The console tail is served from the VMM's counted logs: the guest's words, and a total
    // that counts every byte written (at least what is shown).
    let out = con.json["output"].as_str().unwrap_or_default();
    assert!(out.contains("acpi-waiting"), "{out}");
    assert!(con.json["total_bytes"].as_u64().unwrap() >= out.len() as u64);
    let tail = a.get("/api/v1/vms/g/console?max_bytes=5").await;
    assert_eq!(
        tail.json["output"].as_str().unwrap().len(),
        5,
        "{}",
        tail.text
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "status and console waited for the detach: {:?}",
        t.elapsed()
    );
    // A second change is refused while the first one is under way, in words.
    err_has(
        &a.patch("/api/v1/vms/g", json!({"description": "x"})).await,
        409,
        "busy detaching disk r2",
    );
    err_has(
        &a.post("/api/v1/vms/g/pause", json!({})).await,
        409,
        "busy detaching disk r2",
    );
    err_has(
        &a.delete("/api/v1/vms/g/disks/r1?force=true").await,
        409,
        "busy detaching disk r2",
    );
    // Stop goes through at once and ends the wait: a stopped guest will not answer.
    let t = Instant::now();
    let s = a.post("/api/v1/vms/g/stop", json!({"force": true})).await;
    assert_eq!(s.status, 200, "{}", s.text);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let d = detach.await.unwrap();
    assert_eq!(d.status, 200, "{}", d.text);
    assert_eq!(
        d.json["disks"],
        json!(["r1"]),
        "the stopped VM lost the disk"
    );
    assert!(
        t_detach.elapsed() < Duration::from_secs(12),
        "the detach waited its whole timeout after the stop: {:?}",
        t_detach.elapsed()
    );
    let v = wait_vm(&a, "g", "became idle", |v| v["operation"].is_null()).await;
    assert_eq!(v["state"], "stopped");
    // Idle again: a change and a start are accepted.
    let r = a.patch("/api/v1/vms/g", json!({"vcpus": 2})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = a.post("/api/v1/vms/g/start", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["vcpus"], 2);
    assert_eq!(
        a.post("/api/v1/vms/g/stop", json!({"force": true}))
            .await
            .status,
        200
    );
    h.stop().await;
}
