//! Admission: asking for more than the pool allows is the caller's to change, so it is a 409
//! naming the limit and the free space, never a 507 (a server error that the soak fuzz run
//! flagged on `PATCH /vdisks/{name}`); and the names the routes take (`/vdisks/import`) are
//! refused at creation so every virtual disk stays readable at `/vdisks/{name}`.

mod common;
use common::Harness;
use serde_json::json;

fn conflict_naming(r: &common::Resp, words: &[&str]) {
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.json["error"]["code"], "conflict", "{}", r.text);
    let m = r.json["error"]["message"].as_str().unwrap_or_default();
    for w in words {
        assert!(m.contains(w), "want {w:?} in {m:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_past_the_logical_limit_are_conflicts_naming_limit_and_free_space() {
    let h = Harness::start().await.unwrap();
    let a = h.admin().await;
    let pool = a.get("/api/v1/pool").await;
    assert_eq!(pool.status, 200, "{}", pool.text);
    let limit = pool.json["logical_limit_bytes"].as_u64().unwrap();
    assert!(limit > 0 && limit.is_multiple_of(4096), "{}", pool.text);
    let too_big = limit + 4096;

    let r = a
        .post(
            "/api/v1/vdisks",
            json!({"name": "big", "size_bytes": too_big}),
        )
        .await;
    conflict_naming(&r, &["logical limit", "free now", "big"]);
    assert_eq!(
        a.get("/api/v1/vdisks/big").await.status,
        404,
        "nothing created"
    );

    // The soak run's finding: PATCH past the limit answered 507.
    let ok = a
        .post(
            "/api/v1/vdisks",
            json!({"name": "small", "size_bytes": 1 << 20}),
        )
        .await;
    assert_eq!(ok.status, 201, "{}", ok.text);
    let r = a
        .patch("/api/v1/vdisks/small", json!({"size_bytes": too_big}))
        .await;
    conflict_naming(&r, &["logical limit", "free now", "small"]);
    let after = a.get("/api/v1/vdisks/small").await;
    assert_eq!(
        after.json["size_bytes"],
        1 << 20,
        "unchanged: {}",
        after.text
    );

    // Exactly the limit is accepted (thin: nothing is allocated).
    let r = a
        .patch("/api/v1/vdisks/small", json!({"size_bytes": limit}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["size_bytes"], limit);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_names_are_reserved_and_literal_routes_answer_exactly() {
    let h = Harness::start().await.unwrap();
    let a = h.admin().await;
    let r = a
        .post(
            "/api/v1/vdisks",
            json!({"name": "import", "size_bytes": 1 << 20}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.text.contains("reserved"), "{}", r.text);

    let src = a
        .post(
            "/api/v1/vdisks",
            json!({"name": "src", "size_bytes": 1 << 20}),
        )
        .await;
    assert_eq!(src.status, 201, "{}", src.text);
    // Clone and import are tasks: the reserved target is refused before a task starts.
    let r = a
        .post("/api/v1/vdisks/src/clone", json!({"name": "import"}))
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.text.contains("reserved"), "{}", r.text);
    let list = a.get("/api/v1/vdisks").await;
    let names: Vec<&str> = list.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["src"], "{}", list.text);

    // A literal route's 405 lists only its own methods, not those of the {x} pattern beside it.
    for (method, path, allow) in [
        ("GET", "/api/v1/vdisks/import", "POST"),
        ("DELETE", "/api/v1/disks/probe", "POST"),
        ("GET", "/api/v1/disks/scrub", "POST"),
    ] {
        let r = a.call(method, path, None, &[]).await;
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text);
        let got = r
            .headers
            .get("allow")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(got.as_deref(), Some(allow), "{method} {path}");
    }
    // The pattern routes still answer for other names.
    let r = a.call("OPTIONS", "/api/v1/vdisks/src", None, &[]).await;
    assert_eq!(r.status, 405, "{}", r.text);
    let got = r
        .headers
        .get("allow")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(got.as_deref(), Some("GET, PATCH, DELETE"));
    h.stop().await;
}

/// What schemathesis' "schema-valid input accepted" check found: input the document allows is
/// taken, and refusals that depend on the objects' state are conflicts, not bad input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_valid_input_is_accepted_and_state_refusals_are_conflicts() {
    let h = Harness::start().await.unwrap();
    let a = h.admin().await;
    // JSON Schema counts 8388608.0 as an integer.
    let r = a
        .post(
            "/api/v1/vdisks",
            json!({"name": "d", "size_bytes": 8388608.0}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["size_bytes"], 8 << 20);
    let r = a
        .post("/api/v1/vdisks", json!({"name": "e", "size_bytes": 4096.5}))
        .await;
    assert_eq!(
        r.status, 400,
        "a real fraction is still refused: {}",
        r.text
    );

    // Size text: exactly the documented pattern; past any pool (1 PiB) a conflict.
    let r = a.patch("/api/v1/vdisks/d", json!({"size": "6K"})).await;
    assert_eq!(r.status, 400, "not whole 4 KiB blocks: {}", r.text);
    let r = a.patch("/api/v1/vdisks/d", json!({"size": "2P"})).await;
    assert_eq!(r.status, 409, "{}", r.text);
    let r = a.patch("/api/v1/vdisks/d", json!({"size": "16M"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A shrink is refused by the disk's current size: a conflict.
    let r = a.patch("/api/v1/vdisks/d", json!({"size": "8M"})).await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.text.contains("grow"), "{}", r.text);

    // Diff: the same snapshot twice has no changes; a newer `from` says which way round.
    for s in ["s1", "s2"] {
        let r = a
            .post("/api/v1/vdisks/d/snapshots", json!({"name": s}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let r = a.get("/api/v1/vdisks/d/diff?from=s1&to=s1").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["ranges"], json!([]));
    let r = a.get("/api/v1/vdisks/d/diff?from=s2&to=s1").await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.text.contains("from=s1, to=s2"), "{}", r.text);
    let r = a.get("/api/v1/vdisks/d/diff?from=s1&to=nope").await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = a.get("/api/v1/vdisks/d/diff?from=s1&to=s2").await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Numeric cursors of the id lists; an empty one is the first page.
    assert_eq!(a.get("/api/v1/audit?cursor=").await.status, 200);
    assert_eq!(a.get("/api/v1/audit?cursor=123").await.status, 200);
    assert_eq!(a.get("/api/v1/audit?cursor=x").await.status, 400);
    h.stop().await;
}
