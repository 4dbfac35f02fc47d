//! VMs through the CLI against a real `cairn node`: a test guest boots on KVM with its disk on
//! an engine virtual disk, runs its virtio-blk checks, shows up as running, pauses and resumes,
//! stops gracefully and by force, and is deleted; bad input changes nothing.

mod common;

use common::TestNode;
use std::time::{Duration, Instant};

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Poll `vm show` until `pred` holds (or fail after `secs`).
fn wait_vm(
    n: &TestNode,
    name: &str,
    secs: u64,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let v = n.ok(&["vm", "show", name])["value"].clone();
        if pred(&v) {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "VM {name} never reached the expected state: {v}\nconsole: {}",
            n.cli(&["vm", "console", name]).stdout
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn vm_lifecycle_on_an_engine_vdisk() {
    if !kvm_usable() {
        println!("skipped: /dev/kvm not available");
        return;
    }
    let guest = test_guests::guest_elf_path();
    let n = TestNode::start(2, "256M");
    // The guest checks that the disk serial starts with this (the node uses the vdisk name).
    n.ok(&["vdisk", "create", "cairn-test-disk", "32M"]);

    // Bad input: clear error, nothing created.
    let bad: [(&[&str], i32, &str); 4] = [
        (&["--disk", "ghost", "--kernel", guest], 3, "ghost"),
        (
            &[
                "--vcpus",
                "0",
                "--disk",
                "cairn-test-disk",
                "--kernel",
                guest,
            ],
            2,
            "vCPU",
        ),
        (
            &[
                "--memory",
                "4096G",
                "--disk",
                "cairn-test-disk",
                "--kernel",
                guest,
            ],
            2,
            "memory",
        ),
        (
            &[
                "--disk",
                "cairn-test-disk",
                "--kernel",
                "/nonexistent/guest.elf",
            ],
            2,
            "guest.elf",
        ),
    ];
    for (args, code, words) in bad {
        let mut a = vec!["vm", "create", "bad"];
        a.extend_from_slice(args);
        let err = n.fails(&a, code);
        assert!(err.contains(words), "{args:?}: {err}");
    }
    assert_eq!(n.ok(&["vm", "list"])["value"], serde_json::json!([]));

    // A guest that drives virtio-blk on the engine disk and exits with its verdict.
    let v = n.ok(&[
        "vm",
        "create",
        "blk",
        "--vcpus",
        "1",
        "--memory",
        "64M",
        "--disk",
        "cairn-test-disk",
        "--kernel",
        guest,
        "--cmdline",
        "blk-write seed=9",
    ]);
    assert_eq!(v["value"]["state"], "defined");
    n.ok(&["vm", "start", "blk"]);
    let v = wait_vm(&n, "blk", 120, |v| v["state"] == "stopped");
    let console = n.ok(&["vm", "console", "blk"])["value"]["output"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(console.contains("result pass"), "{console}");
    assert_eq!(v["last_exit"], "exit code 0", "{v}\n{console}");
    let disk = &v["stats"]["disks"][0];
    assert_eq!(disk["id"], "cairn-test-disk");
    assert!(disk["write_ops"].as_u64().unwrap() > 0, "{v}");
    assert!(disk["read_ops"].as_u64().unwrap() > 0, "{v}");
    assert!(disk["write_bytes"].as_u64().unwrap() >= 4096, "{v}");
    // vCPU CPU time is read from live threads (0 once they exited); exits are counted.
    assert!(v["stats"]["vcpu_exits"].as_u64().unwrap() > 0, "{v}");
    // The disk is in use by a defined VM: deleting it is refused.
    let err = n.fails(&["vdisk", "delete", "cairn-test-disk"], 4);
    assert!(err.contains("blk"), "{err}");

    // A guest that idles until the ACPI power button is pressed: running, pause, resume, graceful
    // stop (the guest powers off through S5).
    n.ok(&[
        "vm",
        "create",
        "idle",
        "--memory",
        "32M",
        "--kernel",
        guest,
        "--cmdline",
        "wait-shutdown",
    ]);
    n.ok(&["vm", "start", "idle"]);
    wait_vm(&n, "idle", 30, |v| {
        v["state"] == "running" && v["stats"]["cpu_time_ns"].as_u64().unwrap_or(0) > 0
    });
    n.fails(&["vm", "start", "idle"], 4);
    n.fails(&["vm", "delete", "idle"], 4);
    let v = n.ok(&["vm", "pause", "idle"]);
    assert_eq!(v["value"]["state"], "paused");
    let v = n.ok(&["vm", "resume", "idle"]);
    assert_eq!(v["value"]["state"], "running");
    let listed = n.cli(&["vm", "list"]).stdout;
    assert!(
        listed.contains("idle") && listed.contains("running"),
        "{listed}"
    );
    // Edit: the description changes while it runs; anything else needs it stopped.
    let v = n.ok(&["vm", "edit", "idle", "--description", "kept running"]);
    assert_eq!(v["value"]["description"], "kept running", "{v}");
    n.fails(&["vm", "edit", "idle", "--vcpus", "2"], 4);
    n.fails(&["vm", "edit", "idle", "--memory", "100000"], 2);
    let v = n.ok(&["vm", "stop", "idle", "--timeout-ms", "20000"]);
    assert_eq!(v["value"]["state"], "stopped");
    assert_eq!(v["value"]["last_exit"], "powered off", "{v}");
    let console = n.cli(&["vm", "console", "idle"]).stdout;
    assert!(console.contains("shutdown requested"), "{console}");
    let v = n.ok(&["vm", "edit", "idle", "--memory", "48M"]);
    assert_eq!(v["value"]["memory_mib"], 48, "{v}");
    assert_eq!(v["value"]["description"], "kept running", "{v}");

    // Forced stop: start again and stop at once, without asking the guest.
    n.ok(&["vm", "start", "idle"]);
    let v = n.ok(&["vm", "stop", "idle", "--force"]);
    assert_eq!(v["value"]["state"], "stopped");
    assert_eq!(v["value"]["last_exit"], "stopped", "{v}");

    // Hot-attach: a guest with no disk waits for a PCI change, `vm attach` adds an engine
    // virtual disk to the running VM, and the guest finds it and runs its block checks on it.
    n.ok(&["vdisk", "create", "cairn-test-disk-hot", "32M"]);
    n.ok(&[
        "vm",
        "create",
        "hot",
        "--memory",
        "32M",
        "--kernel",
        guest,
        "--cmdline",
        "hotplug hotunplug blk-write seed=5",
    ]);
    n.fails(&["vm", "attach", "hot", "no-such-disk"], 3);
    n.ok(&["vm", "start", "hot"]);
    let t = Instant::now();
    while !n
        .cli(&["vm", "console", "hot"])
        .stdout
        .contains("hotplug-waiting")
    {
        assert!(t.elapsed() < Duration::from_secs(60), "guest never waited");
        std::thread::sleep(Duration::from_millis(50));
    }
    let v = n.ok(&["vm", "attach", "hot", "cairn-test-disk-hot"]);
    assert_eq!(
        v["value"]["disks"],
        serde_json::json!(["cairn-test-disk-hot"])
    );
    // Attaching it again is refused and changes nothing.
    n.fails(&["vm", "attach", "hot", "cairn-test-disk-hot"], 4);
    // Hot-detach once the guest has used it: the guest releases and ejects it, the definition
    // loses it; then it is attached again and the guest reads back what it wrote before.
    let t = Instant::now();
    while !n
        .cli(&["vm", "console", "hot"])
        .stdout
        .contains("hotunplug-waiting")
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "guest never used the disk"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    n.fails(&["vm", "detach", "hot", "no-such-disk"], 3);
    let v = n.ok(&[
        "vm",
        "detach",
        "hot",
        "cairn-test-disk-hot",
        "--timeout-ms",
        "30000",
    ]);
    assert_eq!(v["value"]["disks"], serde_json::json!([]), "{v}");
    n.ok(&["vm", "attach", "hot", "cairn-test-disk-hot"]);
    let v = wait_vm(&n, "hot", 120, |v| v["state"] == "stopped");
    let console = n.cli(&["vm", "console", "hot"]).stdout;
    assert!(
        console.contains("hotplug-found")
            && console.contains("ok hotunplug-gone")
            && console.contains("ok hotplug-same-slot")
            && console.contains("ok blk-verify-after-reattach")
            && console.contains("result pass"),
        "{console}"
    );
    assert_eq!(v["last_exit"], "exit code 0", "{v}\n{console}");
    assert_eq!(v["disks"], serde_json::json!(["cairn-test-disk-hot"]));
    n.ok(&["vm", "delete", "hot"]);
    n.ok(&["vdisk", "delete", "cairn-test-disk-hot"]);

    // Definitions survive a node restart; nothing runs until started.
    let mut n = n;
    n.stop();
    n.restart();
    let names: Vec<String> = n.ok(&["vm", "list"])["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            format!(
                "{}:{}",
                v["name"].as_str().unwrap(),
                v["state"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(names, ["blk:defined", "idle:defined"]);
    // After the restart the guest verifies the data it wrote before.
    n.ok(&["vm", "delete", "blk"]);
    n.ok(&[
        "vm",
        "create",
        "verify",
        "--memory",
        "64M",
        "--disk",
        "cairn-test-disk",
        "--kernel",
        guest,
        "--cmdline",
        "blk-verify seed=9",
    ]);
    n.ok(&["vm", "start", "verify"]);
    let v = wait_vm(&n, "verify", 120, |v| v["state"] == "stopped");
    let console = n.cli(&["vm", "console", "verify"]).stdout;
    assert!(console.contains("result pass"), "{console}");
    assert_eq!(v["last_exit"], "exit code 0", "{v}\n{console}");

    for vm in ["idle", "verify"] {
        n.ok(&["vm", "delete", vm]);
    }
    n.fails(&["vm", "show", "idle"], 3);
    n.ok(&["vdisk", "delete", "cairn-test-disk"]);
    n.stop();
}
