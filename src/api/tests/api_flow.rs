//! End-to-end API tests against a real node over TLS on 127.0.0.1: every storage endpoint's
//! success, validation, not-found and conflict answers; sessions, CSRF, tokens, rate limiting,
//! idempotency, pagination, tasks, certificate upload.

mod common;
use common::Harness;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_endpoints_end_to_end() {
    let h = Harness::start().await.unwrap();
    let a = h.admin().await;

    // Public endpoints.
    let c = h.client();
    assert_eq!(c.get("/api/v1/health").await.status, 200);
    let doc = c.get("/api/v1/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert!(doc.json["openapi"].as_str().unwrap().starts_with("3."));
    // Everything else needs credentials.
    let r = c.get("/api/v1/vdisks").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json["error"]["code"], "unauthorized");

    // Nodes, disks, pool.
    let n = a.get("/api/v1/nodes").await;
    assert_eq!(n.status, 200, "{}", n.text);
    assert_eq!(n.json["items"][0]["name"], "test-node");
    let id = n.json["items"][0]["id"].to_string();
    assert_eq!(a.get(&format!("/api/v1/nodes/{id}")).await.status, 200);
    assert_eq!(a.get("/api/v1/nodes/999").await.status, 404);
    let d = a.get("/api/v1/disks").await;
    assert_eq!(d.status, 200);
    assert_eq!(d.json["items"].as_array().unwrap().len(), 2);
    let p = a.get("/api/v1/pool").await;
    assert_eq!(p.status, 200);
    assert!(p.json["raw_bytes"].as_u64().unwrap() > 0);

    // Virtual disks: create, validation, conflict, get, list with paging, grow, shrink refused.
    let r = a
        .post("/api/v1/vdisks", json!({"name": "vm1", "size": "64M"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["size_bytes"], 64 << 20);
    let r = a
        .post("/api/v1/vdisks", json!({"name": "vm1", "size_bytes": 4096}))
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    let r = a
        .post(
            "/api/v1/vdisks",
            json!({"name": "bad name", "size_bytes": 4096}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["error"]["code"], "invalid_argument");
    let r = a
        .post(
            "/api/v1/vdisks",
            json!({"name": "x", "size_bytes": 4096, "colour": 1}),
        )
        .await;
    assert_eq!(r.status, 400, "unknown fields are refused");
    let r = a
        .post("/api/v1/vdisks", json!({"name": "x", "size": "10X"}))
        .await;
    assert_eq!(r.status, 400);
    let r = a
        .raw("POST", "/api/v1/vdisks", Some(b"{not json".to_vec()), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let big = vec![b' '; 300 * 1024];
    let r = a
        .raw("POST", "/api/v1/vdisks", Some(big), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 400, "body limit");
    assert_eq!(
        a.post("/api/v1/vdisks", json!({"name": "vm2", "size": "32M"}))
            .await
            .status,
        201
    );
    let g = a.get("/api/v1/vdisks/vm1").await;
    assert_eq!(g.status, 200);
    assert_eq!(g.json["name"], "vm1");
    assert_eq!(a.get("/api/v1/vdisks/nope").await.status, 404);
    let l = a.get("/api/v1/vdisks?limit=1").await;
    assert_eq!(l.json["items"].as_array().unwrap().len(), 1);
    let cur = l.json["next_cursor"].as_str().unwrap().to_string();
    let l2 = a.get(&format!("/api/v1/vdisks?limit=1&cursor={cur}")).await;
    assert_eq!(l2.json["items"][0]["name"], "vm2");
    assert!(l2.json["next_cursor"].is_null());
    assert_eq!(a.get("/api/v1/vdisks?limit=0").await.status, 400);
    let r = a.patch("/api/v1/vdisks/vm1", json!({"size": "128M"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["size_bytes"], 128 << 20);
    // Lists and gets come from the api's cache (filled just above); a change shows at once.
    assert_eq!(
        a.get("/api/v1/vdisks/vm1").await.json["size_bytes"],
        128 << 20
    );
    let l = a.get("/api/v1/vdisks?limit=10").await;
    assert_eq!(l.json["items"][0]["name"], "vm1");
    assert_eq!(l.json["items"][0]["size_bytes"], 128 << 20);
    let r = a.patch("/api/v1/vdisks/vm1", json!({"size": "1M"})).await;
    assert!(
        r.status == 400 || r.status == 409,
        "shrink refused: {}",
        r.text
    );
    assert_eq!(
        a.patch("/api/v1/vdisks/nope", json!({"size": "1G"}))
            .await
            .status,
        404
    );

    // Snapshots.
    let r = a
        .post("/api/v1/vdisks/vm1/snapshots", json!({"name": "s1"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        a.post("/api/v1/vdisks/vm1/snapshots", json!({"name": "s1"}))
            .await
            .status,
        409
    );
    assert_eq!(
        a.post("/api/v1/vdisks/nope/snapshots", json!({"name": "s1"}))
            .await
            .status,
        404
    );
    let s = a.get("/api/v1/vdisks/vm1/snapshots").await;
    assert_eq!(s.json["items"][0]["name"], "s1");
    let diff = a.get("/api/v1/vdisks/vm1/diff?from=s1").await;
    assert_eq!(diff.status, 200, "{}", diff.text);
    assert!(diff.json["ranges"].is_array());
    assert_eq!(a.get("/api/v1/vdisks/vm1/diff").await.status, 400);

    // Long operations return a task.
    let r = a
        .post(
            "/api/v1/vdisks/vm1/clone",
            json!({"name": "vm1-clone", "snapshot": "s1"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let t = a.wait_task(r.json["id"].as_u64().unwrap()).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(a.get("/api/v1/vdisks/vm1-clone").await.status, 200);
    assert_eq!(
        a.post("/api/v1/vdisks/nope/clone", json!({"name": "c2"}))
            .await
            .status,
        404
    );
    let r = a
        .post("/api/v1/vdisks/vm1/snapshots/s1/rollback", json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(
        a.wait_task(r.json["id"].as_u64().unwrap()).await["state"],
        "succeeded"
    );
    let r = a
        .post("/api/v1/vdisks/vm1/snapshots/zz/rollback", json!({}))
        .await;
    if r.status == 202 {
        assert_eq!(
            a.wait_task(r.json["id"].as_u64().unwrap()).await["state"],
            "failed"
        );
    } else {
        assert_eq!(r.status, 404);
    }
    let img = h.dir.path().join("vm2.img");
    let r = a
        .post(
            "/api/v1/vdisks/vm2/export",
            json!({"file": img.to_str().unwrap()}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(
        a.wait_task(r.json["id"].as_u64().unwrap()).await["state"],
        "succeeded"
    );
    let r = a
        .post(
            "/api/v1/vdisks/import",
            json!({"name": "imported", "file": img.to_str().unwrap()}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let t = a.wait_task(r.json["id"].as_u64().unwrap()).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(
        a.get("/api/v1/vdisks/imported").await.json["size_bytes"],
        32 << 20
    );
    let r = a.post("/api/v1/disks/scrub", json!({})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let tasks = a.get("/api/v1/tasks?limit=2").await;
    assert_eq!(tasks.json["items"].as_array().unwrap().len(), 2);
    assert!(tasks.json["next_cursor"].is_string());
    assert_eq!(a.get("/api/v1/tasks/99999").await.status, 404);
    assert_eq!(a.get("/api/v1/tasks/abc").await.status, 400);

    // NBD exports (the node answers 503 while it has no NBD server).
    let r = a
        .post("/api/v1/nbd", json!({"vdisk": "vm2", "read_only": true}))
        .await;
    if r.status == 503 {
        println!(
            "skipped: nbd endpoints (node has no NBD server yet: {})",
            r.json["error"]["message"]
        );
    } else {
        assert_eq!(r.status, 201, "{}", r.text);
        let nid = r.json["id"].as_u64().unwrap();
        assert!(r.json["listen"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert_eq!(
            a.get("/api/v1/nbd").await.json["items"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(a.delete(&format!("/api/v1/nbd/{nid}")).await.status, 204);
        assert_eq!(a.delete(&format!("/api/v1/nbd/{nid}")).await.status, 404);
        assert_eq!(
            a.post("/api/v1/nbd", json!({"vdisk": "nope"})).await.status,
            404
        );
    }
    assert_eq!(a.get("/api/v1/nbd").await.status, 200);

    // Deletes.
    assert_eq!(
        a.delete("/api/v1/vdisks/vm1/snapshots/s1").await.status,
        204
    );
    assert_eq!(
        a.delete("/api/v1/vdisks/vm1/snapshots/s1").await.status,
        404
    );
    let l = a.get("/api/v1/vdisks?limit=1000").await;
    assert!(l.text.contains("\"vm1\""), "{}", l.text);
    assert_eq!(a.delete("/api/v1/vdisks/vm1").await.status, 204);
    assert_eq!(a.delete("/api/v1/vdisks/vm1").await.status, 404);
    assert_eq!(a.get("/api/v1/vdisks/vm1").await.status, 404);
    let l = a.get("/api/v1/vdisks?limit=1000").await;
    assert!(
        !l.text.contains("\"vm1\""),
        "deleted, still listed: {}",
        l.text
    );
    assert_eq!(
        a.get("/api/v1/vdisks/vm1-clone").await.status,
        200,
        "clone outlives its source"
    );

    // Wrong method and unknown paths.
    let r = a.call("PUT", "/api/v1/vdisks", Some(json!({})), &[]).await;
    assert_eq!(r.status, 405);
    assert!(r.headers.get("allow").is_some());
    assert_eq!(a.get("/api/v1/nothing").await.status, 404);

    // Stats, events, alerts, audit.
    let s = a.get("/api/v1/stats").await;
    assert_eq!(s.status, 200);
    assert!(s.json["mem_total_bytes"].as_u64().unwrap() > 0);
    // The sampler records every 200 ms here; wait for two samples rather than a fixed pause
    // (a loaded machine can delay the sampler's first ticks).
    let t = std::time::Instant::now();
    let hist = loop {
        let h = a.get("/api/v1/stats/history?limit=2").await;
        if h.json["items"].as_array().is_some_and(|i| i.len() >= 2) {
            break h;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "fewer than two stats samples after 30 s: {}",
            h.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(hist.json["items"].as_array().unwrap().len(), 2);
    assert_eq!(a.get("/api/v1/stats/history?since_ms=x").await.status, 400);
    assert!(
        a.get("/api/v1/events").await.json["items"]
            .as_array()
            .unwrap()
            .len()
            >= 2
    );
    assert_eq!(a.get("/api/v1/alerts").await.status, 200);
    let audit = a.get("/api/v1/audit?limit=1000").await;
    let acts: Vec<&str> = audit.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for want in [
        "vdisk_create",
        "snapshot_create",
        "vdisk_clone",
        "vdisk_delete",
        "vdisk_import",
        "login",
    ] {
        assert!(acts.contains(&want), "audit lacks {want}: {acts:?}");
    }
    let failed = audit.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "vdisk_create" && e["result"] == "already_exists");
    assert!(failed, "failed mutations are audited with their error code");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_csrf_idempotency_and_rate_limit() {
    let mut h = Harness::start().await.unwrap();
    let a = h.admin().await;

    // A session mutation without the CSRF header is refused; with it, allowed.
    let mut no_csrf = a.clone();
    no_csrf.csrf = None;
    let r = no_csrf
        .post("/api/v1/vdisks", json!({"name": "c", "size": "8M"}))
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(
        a.post("/api/v1/vdisks", json!({"name": "c", "size": "8M"}))
            .await
            .status,
        201
    );
    let me = a.get("/api/v1/auth/me").await;
    assert_eq!(me.json["user"], "admin");
    assert_eq!(me.json["role"], "admin");

    // Idempotency: same key + body -> same answer without acting twice; other body -> 409.
    let body = json!({"name": "idem", "size": "8M"});
    let hdr = [("idempotency-key", "k-1")];
    let r1 = a
        .call("POST", "/api/v1/vdisks", Some(body.clone()), &hdr)
        .await;
    assert_eq!(r1.status, 201);
    let r2 = a.call("POST", "/api/v1/vdisks", Some(body), &hdr).await;
    assert_eq!(r2.status, 201, "replayed, not 409: {}", r2.text);
    assert_eq!(r2.json, r1.json);
    assert_eq!(r2.headers.get("idempotent-replayed").unwrap(), "true");
    let r3 = a
        .call(
            "POST",
            "/api/v1/vdisks",
            Some(json!({"name": "other", "size": "8M"})),
            &hdr,
        )
        .await;
    assert_eq!(r3.status, 409);
    let n = a.get("/api/v1/audit?limit=1000").await.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == "idem")
        .count();
    assert_eq!(n, 1, "the replay did not act again");

    // The answer outlives an api restart: the retry is replayed, not run again.
    h.api.take().unwrap().shutdown().await;
    let state = h.dir.path().join("api");
    let node = h.node.as_ref().unwrap();
    let api2 = api::serve(
        api::ApiConfig::new("127.0.0.1:0".parse().unwrap(), state),
        node.controller(),
    )
    .await
    .unwrap();
    h.addr = api2.local_addr;
    h.api = Some(api2);
    let a = h.admin().await;
    let r4 = a
        .call(
            "POST",
            "/api/v1/vdisks",
            Some(json!({"name": "idem", "size": "8M"})),
            &hdr,
        )
        .await;
    assert_eq!(r4.status, 201, "replayed after the restart: {}", r4.text);
    assert_eq!(r4.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(r4.json, r1.json);

    // Logout ends the session.
    assert_eq!(a.post("/api/v1/auth/logout", json!({})).await.status, 204);
    assert_eq!(a.get("/api/v1/vdisks").await.status, 401);

    // Failed logins from one address are limited (429 + Retry-After); another address is not.
    let mut bad = h.client();
    bad.ip = Some("127.0.0.7".parse().unwrap());
    for _ in 0..5 {
        let r = bad
            .post(
                "/api/v1/auth/login",
                json!({"user": "admin", "password": "wrong-password-1"}),
            )
            .await;
        assert_eq!(r.status, 401);
    }
    let r = bad
        .post(
            "/api/v1/auth/login",
            json!({"user": "admin", "password": h.admin_password.clone()}),
        )
        .await;
    assert_eq!(r.status, 429);
    let retry: u64 = r
        .headers
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let mut other = h.client();
    other.ip = Some("127.0.0.8".parse().unwrap());
    assert!(other.login("admin", &h.admin_password).await.is_ok());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_users_and_certificate() {
    let h = Harness::start().await.unwrap();
    let a = h.admin().await;
    let op = h.user_with_token(&a, "olga", "operator").await;
    assert_eq!(op.get("/api/v1/auth/me").await.json["role"], "operator");
    // A token may not outrank its creator.
    assert_eq!(
        op.post("/api/v1/tokens", json!({"name": "x", "role": "admin"}))
            .await
            .status,
        403
    );
    let ro = op
        .post(
            "/api/v1/tokens",
            json!({"name": "ro", "role": "read_only", "expires_in_secs": 60}),
        )
        .await;
    assert_eq!(ro.status, 201);
    let secret = ro.json["token"].as_str().unwrap().to_string();
    let listed = op.get("/api/v1/tokens").await;
    assert!(
        listed.text.find(&secret).is_none(),
        "secrets are shown once only"
    );
    let mut roc = h.client();
    roc.bearer = Some(secret);
    assert_eq!(roc.get("/api/v1/vdisks").await.status, 200);
    assert_eq!(
        roc.post("/api/v1/vdisks", json!({"name": "n", "size": "8M"}))
            .await
            .status,
        403
    );
    // Revoke: the token stops working at once.
    let id = ro.json["id"].as_str().unwrap();
    assert_eq!(op.delete(&format!("/api/v1/tokens/{id}")).await.status, 200);
    assert_eq!(roc.get("/api/v1/vdisks").await.status, 401);
    assert_eq!(
        op.post("/api/v1/tokens", json!({"name": "x", "expires_in_secs": 0}))
            .await
            .status,
        400
    );
    let mut garbage = h.client();
    garbage.bearer = Some("cairn_0000000000000000_".to_string() + &"0".repeat(64));
    assert_eq!(garbage.get("/api/v1/vdisks").await.status, 401);

    // Users: validation, conflict, not found, last admin protected, demotion caps tokens.
    assert_eq!(
        a.post(
            "/api/v1/users",
            json!({"name": "olga", "role": "operator", "password": "long enough password"})
        )
        .await
        .status,
        409
    );
    assert_eq!(
        a.post(
            "/api/v1/users",
            json!({"name": "p", "role": "operator", "password": "short"})
        )
        .await
        .status,
        400
    );
    assert_eq!(
        a.post(
            "/api/v1/users",
            json!({"name": "p", "role": "god", "password": "long enough password"})
        )
        .await
        .status,
        400
    );
    assert_eq!(a.get("/api/v1/users/nobody").await.status, 404);
    assert_eq!(
        a.patch("/api/v1/users/admin", json!({"role": "operator"}))
            .await
            .status,
        409
    );
    assert_eq!(a.delete("/api/v1/users/admin").await.status, 409);
    assert_eq!(
        a.patch("/api/v1/users/olga", json!({"role": "read_only"}))
            .await
            .status,
        200
    );
    assert_eq!(
        op.post("/api/v1/vdisks", json!({"name": "n", "size": "8M"}))
            .await
            .status,
        403,
        "demoted token"
    );
    assert_eq!(
        a.get("/api/v1/users").await.json["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(a.delete("/api/v1/users/olga").await.status, 204);
    assert_eq!(
        op.get("/api/v1/vdisks").await.status,
        401,
        "deleted user's tokens are dead"
    );

    // Certificate: bad uploads refused and the old one kept; a good one is live at once.
    let before = a.get("/api/v1/certificate").await;
    assert_eq!(before.status, 200);
    let r = a
        .put(
            "/api/v1/certificate",
            json!({"cert_pem": "junk", "key_pem": "junk"}),
        )
        .await;
    assert_eq!(r.status, 400);
    let (c1, _) = api::tls::self_signed().unwrap();
    let (_, k2) = api::tls::self_signed().unwrap();
    let r = a
        .put(
            "/api/v1/certificate",
            json!({"cert_pem": c1, "key_pem": k2}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("does not belong"));
    assert_eq!(
        a.get("/api/v1/certificate").await.json["sha256_fingerprint"],
        before.json["sha256_fingerprint"]
    );
    let (c3, k3) = api::tls::self_signed().unwrap();
    let r = a
        .put(
            "/api/v1/certificate",
            json!({"cert_pem": c3, "key_pem": k3}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A client that trusts only the new certificate can now connect (no restart).
    let state = h.dir.path().join("api");
    let mut fresh = a.clone();
    fresh.tls = common::connector(&state).unwrap();
    assert_eq!(fresh.get("/api/v1/health").await.status, 200);
    assert!(
        a.raw("GET", "/api/v1/health", None, &[]).await.is_err(),
        "old certificate is gone"
    );
    assert_ne!(
        fresh.get("/api/v1/certificate").await.json["sha256_fingerprint"],
        before.json["sha256_fingerprint"]
    );
    h.stop().await;
}
