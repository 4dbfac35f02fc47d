//! Starting a VM whose memory would overcommit what the node gives VMs is a conflict (409)
//! that says how much is needed and held; stopping a VM makes room again.

mod common;

use common::kvm_usable;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_beyond_the_nodes_vm_memory_is_a_conflict() {
    // VMs may hold 100 MiB together on this node.
    let h = common::Harness::start_with(|c| c.vm_ram_limit_mib = Some(100))
        .await
        .expect("harness");
    let a = h.admin().await;
    for (name, mib) in [("big", 128), ("g1", 64), ("g2", 64)] {
        let r = a
            .post(
                "/api/v1/vms",
                json!({"name": name, "vcpus": 1, "memory_mib": mib,
                    "kernel": test_guests::guest_elf_path(), "cmdline": "wait-shutdown"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    // Alone it does not fit: refused before any machine is built (so with or without KVM).
    let r = a.post("/api/v1/vms/big/start", json!({})).await;
    assert_eq!(r.status, 409, "{}", r.text);
    let msg = r.json["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("needs 128 MiB") && msg.contains("100 MiB this node gives VMs"),
        "{msg}"
    );
    assert_eq!(a.get("/api/v1/vms/big").await.json["state"], "defined");

    if !kvm_usable() {
        println!("skipped: the two-guest part (no usable /dev/kvm)");
        h.stop().await;
        return;
    }
    let r = a.post("/api/v1/vms/g1/start", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // 64 + 64 > 100: the second guest waits for room, and the message names who holds it.
    let r = a.post("/api/v1/vms/g2/start", json!({})).await;
    assert_eq!(r.status, 409, "{}", r.text);
    let msg = r.json["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("running VMs hold 64 MiB") && msg.contains("g1 (64 MiB)"),
        "{msg}"
    );
    assert_eq!(a.get("/api/v1/vms/g2").await.json["state"], "defined");
    // The same through the CLI's pass-through.
    let r = a
        .post(
            "/api/v1/control",
            json!({"action": "vm_start", "name": "g2"}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text);

    let r = a.post("/api/v1/vms/g1/stop", json!({"force": true})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = a.post("/api/v1/vms/g2/start", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = a.post("/api/v1/vms/g2/stop", json!({"force": true})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    h.stop().await;
}
