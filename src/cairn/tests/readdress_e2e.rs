//! A node whose address changes stays in its cluster: two data nodes on 127.0.0.x.
//! - `cairn node` restarted with another `--cluster-listen` adopts it (the member announces it;
//!   the other node's view and raft follow; commands from the moved node commit), and refuses
//!   with a clear error an address peers cannot use (nothing changes: the old one still works).
//! - A running node moved live (`Node::set_cluster_addr`, what the appliance's PID 1 calls on
//!   a DHCP renewal with another address): same checks, no restart.
//! - Every member moved at once (a renumbered site): none can reach another until the admin
//!   tells one where the others are (`cairn cluster locate`), which is checked (the member must
//!   answer there with its own certificate); then every new address is committed.

mod common;

use std::time::Duration;

use common::{cli_at as cli, free_cluster_addr, wait_until, ClusterProc as Proc};

fn member_addr(s: &serde_json::Value, name: &str) -> Option<String> {
    s["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["address"].as_str().map(String::from))
}

#[test]
fn cairn_node_adopts_a_new_cluster_address() {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-readdress-")
        .tempdir()
        .unwrap();
    let root = tmp.path();
    let a = Proc::start(root, "a", "127.0.0.2", false);
    let mut b = Proc::start(root, "b", "127.0.0.3", false);
    b.join(&a);
    let old = b.addr;
    wait_until(60, "a sees b", || {
        member_addr(&a.status(), "b") == Some(old.to_string())
    });

    // An address no peer can connect to: refused, saying why; nothing changes.
    b.stop();
    let bad = format!("0.0.0.0:{}", old.port());
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["node", "--no-api", "--data"])
        .arg(&b.data)
        .args(["--cluster-listen", &bad])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not an address other members can connect to"),
        "{err}"
    );

    // Another host address: adopted and announced.
    b.addr = free_cluster_addr("127.0.0.7");
    let new = b.addr.to_string();
    b.restart();
    wait_until(60, "the moved member's address in a's view", || {
        member_addr(&a.status(), "b").as_deref() == Some(new.as_str())
    });
    wait_until(60, "the moved member's own view", || {
        let s = b.status();
        member_addr(&s, "b").as_deref() == Some(new.as_str()) && !s["leader"].is_null()
    });
    // It takes part at the new address: its definitions commit and a sees them.
    b.ok(&["vdisk", "create", "after-move", "16M"]);
    wait_until(60, "b's vdisk in a's state", || {
        a.status()["vdisks"]
            .as_array()
            .is_some_and(|v| v.iter().any(|n| n == "after-move"))
    });
    assert!(
        b.log().contains("announced this member's new address"),
        "{}",
        b.log()
    );
    // Saved: a plain restart (same flag) keeps it.
    b.stop();
    b.restart();
    assert_eq!(member_addr(&b.status(), "b"), Some(new));
    let o = cli(&b.data, &["cluster", "status"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
}

#[test]
fn members_that_all_moved_find_each_other_once_one_is_told_where_another_is() {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-relocate-")
        .tempdir()
        .unwrap();
    let root = tmp.path();
    let mut a = Proc::start(root, "a", "127.0.0.2", false);
    let mut b = Proc::start(root, "b", "127.0.0.3", false);
    let mut w = Proc::start(root, "w", "127.0.0.4", true);
    b.join(&a);
    w.join(&a);
    let (b_old, w_old) = (b.addr.to_string(), w.addr.to_string());
    wait_until(60, "a sees b and w", || {
        let s = a.status();
        member_addr(&s, "b").as_deref() == Some(b_old.as_str())
            && member_addr(&s, "w").as_deref() == Some(w_old.as_str())
    });
    a.ok(&["vdisk", "create", "before", "16M"]);

    // All three move while stopped: each starts on its new address, the others' old ones dead.
    for p in [&mut a, &mut b, &mut w] {
        p.stop();
    }
    a.addr = free_cluster_addr("127.0.0.12");
    b.addr = free_cluster_addr("127.0.0.13");
    w.addr = free_cluster_addr("127.0.0.15");
    let (a_new, b_new, w_new) = (a.addr.to_string(), b.addr.to_string(), w.addr.to_string());
    for p in [&mut a, &mut b, &mut w] {
        p.restart();
    }
    // None can commit its announce: each still names the others' old addresses.
    std::thread::sleep(Duration::from_secs(3));
    let still_apart = |a: &Proc, b: &Proc| {
        let (sa, sb) = (a.status(), b.status());
        assert_eq!(
            member_addr(&sa, "b").as_deref(),
            Some(b_old.as_str()),
            "{sa}"
        );
        assert_ne!(
            member_addr(&sb, "a").as_deref(),
            Some(a_new.as_str()),
            "{sb}"
        );
        // Reaching no other voter, neither starts an election (its term would only depose a
        // leader later), and says so.
        for s in [&sa, &sb] {
            assert_eq!(s["campaigns"], false, "{s}");
        }
    };
    still_apart(&a, &b);
    let text = cli(&a.data, &["cluster", "status"]).stdout;
    assert!(text.contains("reaches too few voters"), "{text}");
    assert!(text.contains("cairn cluster locate b --address"), "{text}");

    // Told wrong: an address nobody listens on, and a's own (it answers, but not with b's
    // certificate). Refused, saying why; nothing changes.
    let nobody = free_cluster_addr("127.0.0.14").to_string();
    for wrong in [nobody.as_str(), a_new.as_str()] {
        let o = cli(&a.data, &["cluster", "locate", "b", "--address", wrong]);
        assert_ne!(o.code, 0, "locate b at {wrong}: {}", o.stdout);
        assert!(o.stderr.contains("did not answer"), "{}", o.stderr);
    }
    let o = cli(
        &a.data,
        &["cluster", "locate", "b", "--address", "not-an-address"],
    );
    assert_eq!(o.code, 2, "{}", o.stderr);
    let o = cli(
        &a.data,
        &["cluster", "locate", "nosuch", "--address", &b_new],
    );
    assert_ne!(o.code, 0, "{}", o.stdout);
    assert!(o.stderr.contains("no member"), "{}", o.stderr);
    still_apart(&a, &b);

    // Told where b is: a and b reach each other, elect a leader (two votes of three) and
    // commit both new addresses. The witness is still away, and a's status says so.
    let o = cli(&a.data, &["cluster", "locate", "b", "--address", &b_new]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    for p in [&a, &b] {
        wait_until(
            60,
            "a's and b's new addresses and a leader in each view",
            || {
                let s = p.status();
                !s["leader"].is_null()
                    && member_addr(&s, "a").as_deref() == Some(a_new.as_str())
                    && member_addr(&s, "b").as_deref() == Some(b_new.as_str())
            },
        );
    }
    let text = cli(&a.data, &["cluster", "status"]).stdout;
    assert!(
        text.contains("not answering at the address above: w.")
            && text.contains("cairn cluster locate w --address"),
        "{text}"
    );
    // Told where the witness is, on whichever of a and b does not lead: it reaches the witness
    // there and passes the address on to the leader, whose appends bring the witness the
    // others' addresses; then the witness's own announce commits. (Cut off until now, the
    // witness did not campaign, so its term deposes nobody once it is reached.)
    let a_leads = a.status()["members"]
        .as_array()
        .and_then(|m| m.iter().find(|x| x["name"] == "a"))
        .is_some_and(|x| x["leader"] == true);
    let follower = if a_leads { &b } else { &a };
    let o = cli(
        &follower.data,
        &["cluster", "locate", "w", "--address", &w_new],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    for p in [&a, &w] {
        wait_until(60, "every new address in a's and w's views", || {
            let s = p.status();
            !s["leader"].is_null()
                && member_addr(&s, "a").as_deref() == Some(a_new.as_str())
                && member_addr(&s, "b").as_deref() == Some(b_new.as_str())
                && member_addr(&s, "w").as_deref() == Some(w_new.as_str())
        });
    }
    // The hint went to the leader (unless the member told became the leader meanwhile, which
    // then reached the witness itself).
    let follower_leads = follower.status()["members"]
        .as_array()
        .and_then(|m| m.iter().find(|x| x["leader"] == true))
        .is_some_and(|x| x["name"] == follower.name.as_str());
    assert!(
        follower_leads
            || follower
                .log()
                .contains("told the leader where the member is"),
        "no hint to the leader in {}'s log",
        follower.name
    );
    // Every member takes part again: b's definitions commit and a sees them beside its own.
    b.ok(&["vdisk", "create", "after", "16M"]);
    wait_until(60, "b's vdisk in a's view", || {
        a.status()["vdisks"]
            .as_array()
            .is_some_and(|v| v.iter().any(|n| n == "after") && v.iter().any(|n| n == "before"))
    });
    // Kept: a plain restart of all three finds each other at once.
    for p in [&mut a, &mut b, &mut w] {
        p.stop();
    }
    for p in [&mut a, &mut b, &mut w] {
        p.restart();
    }
    wait_until(60, "a leader after restarting all three", || {
        let s = a.status();
        !s["leader"].is_null()
            && s["members"]
                .as_array()
                .is_some_and(|m| m.iter().all(|x| x["health"] == "up"))
    });
}

#[test]
fn a_running_node_moves_its_member_live() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tmp = tempfile::Builder::new()
            .prefix("cairn-readdress-live-")
            .tempdir()
            .unwrap();
        let start = |name: &str, ip: &str| {
            let mut cfg = node::NodeConfig::new(tmp.path().join(name));
            cfg.disk_count = 2;
            cfg.disk_size_bytes = 256 << 20;
            cfg.node_name = Some(name.into());
            cfg.api_listen = None;
            cfg.cluster_listen = Some(free_cluster_addr(ip));
            node::Node::start(cfg)
        };
        let a = start("a", "127.0.0.2").await.unwrap();
        let b = start("b", "127.0.0.3").await.unwrap();
        let admin = || control::Actor {
            user: "test".into(),
            role: control::Role::Admin,
            via: control::Via::Internal,
        };
        let token = match a
            .controller()
            .execute(
                admin(),
                control::Request::ClusterToken {
                    witness: false,
                    ttl_secs: None,
                },
            )
            .await
            .unwrap()
        {
            control::Reply::ClusterToken(t) => t.token,
            other => panic!("token: {other:?}"),
        };
        b.controller()
            .execute(
                admin(),
                control::Request::ClusterJoin {
                    address: a.cluster_addr().to_string(),
                    token,
                },
            )
            .await
            .unwrap();
        let view = |n: &node::Node| {
            let c = n.controller();
            async move {
                match c
                    .execute(admin(), control::Request::ClusterStatus)
                    .await
                    .unwrap()
                {
                    control::Reply::Cluster(v) => *v,
                    other => panic!("status: {other:?}"),
                }
            }
        };
        let addr_of = |v: &control::ClusterView, name: &str| {
            v.members
                .iter()
                .find(|m| m.name == name)
                .map(|m| m.address.clone())
        };
        let wait = |what: &'static str| {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            move || {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what}: not within 60 s"
                );
            }
        };

        // Refused: nothing peers can use; the member stays where it was.
        let before = b.cluster_addr();
        let e = b
            .set_cluster_addr("0.0.0.0:7000".parse().unwrap())
            .await
            .unwrap_err();
        assert!(e.message.contains("not an address"), "{}", e.message);
        assert_eq!(b.cluster_addr(), before);

        // b mirrors to a (and serves a) on its first address before it moves.
        let first = std::net::SocketAddr::new(before.ip(), before.port() + 2).to_string();
        let tick = wait("b's mirror endpoint on its first address");
        while view(&b).await.data.mirror_listen.as_deref() != Some(first.as_str()) {
            tick();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // a's replicas on b's disks are up before b moves.
        let b_id = view(&b).await.me;
        let replicas_on_b_up = |v: &control::ClusterView| {
            let on_b: Vec<_> = v
                .data
                .remote_replicas
                .iter()
                .filter(|r| r.node == b_id)
                .collect();
            !on_b.is_empty()
                && on_b
                    .iter()
                    .all(|r| r.reachability == "up" && r.state == "active")
        };
        let tick = wait("a's replicas on b up");
        while !replicas_on_b_up(&view(&a).await) {
            tick();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let new = free_cluster_addr("127.0.0.8");
        b.set_cluster_addr(new).await.unwrap();
        assert_eq!(b.cluster_addr(), new);
        let tick = wait("a sees b at its new address");
        while addr_of(&view(&a).await, "b") != Some(new.to_string()) {
            tick();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Its mirror endpoint (cluster port + 2) follows, so peers can mirror to it again.
        let want = std::net::SocketAddr::new(new.ip(), new.port() + 2).to_string();
        let tick = wait("b's mirror endpoint on its new address");
        while view(&b).await.data.mirror_listen.as_deref() != Some(want.as_str()) {
            tick();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // a calls b's replicas at the new address: they come back (before, they stayed away
        // until the 5 min grace period gave b's disks up and rebuilt their data elsewhere).
        // Looked at past the heartbeats' notice (0.5 s) of the old address going dark.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let tick = wait("a's replicas on b up again at b's new address");
        while !replicas_on_b_up(&view(&a).await) {
            tick();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Commands from the moved member commit and reach the other.
        let tick = wait("b's vdisk created after the move");
        loop {
            let r = b
                .controller()
                .execute(
                    admin(),
                    control::Request::VdiskCreate {
                        name: "live-moved".into(),
                        size_bytes: 16 << 20,
                    },
                )
                .await;
            if r.is_ok() {
                break;
            }
            tick();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let tick = wait("b's vdisk in a's view");
        while !view(&a).await.vdisks.iter().any(|n| n == "live-moved") {
            tick();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The other one (the leader, which applies its own announce) moves too.
        let a_new = free_cluster_addr("127.0.0.9");
        a.set_cluster_addr(a_new).await.unwrap();
        let tick = wait("b sees a at its new address");
        while addr_of(&view(&b).await, "a") != Some(a_new.to_string()) {
            tick();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        b.shutdown().await.unwrap();
        a.shutdown().await.unwrap();
    });
}
