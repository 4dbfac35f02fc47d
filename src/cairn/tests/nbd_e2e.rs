//! NBD exports of engine-backed disks checked with real clients: nbdinfo, nbdcopy, qemu-io and
//! fio's nbd engine with crc32c verification; snapshots, diff and rollback with data written
//! through NBD.

mod common;

use common::{have, pattern, TestNode};
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn uri(x: &serde_json::Value) -> String {
    format!(
        "nbd://{}/{}",
        x["value"]["listen"].as_str().unwrap(),
        x["value"]["export_name"].as_str().unwrap()
    )
}

#[test]
fn nbd_with_real_clients_snapshots_and_rollback() {
    for tool in ["nbdinfo", "nbdcopy", "qemu-io", "fio"] {
        if !have(tool) {
            println!("skipped: {tool} is not installed (ci/setup.sh installs it)");
            return;
        }
    }
    let n = TestNode::start(4, "256M");
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).display().to_string();
    n.ok(&["vdisk", "create", "d", "64M"]);
    let x = n.ok(&["vdisk", "nbd", "d"]);
    let id = x["value"]["id"].as_u64().unwrap().to_string();
    let u = uri(&x);
    assert!(u.starts_with("nbd://127.0.0.1:"), "{u}");
    let listed = n.ok(&["nbd", "list"]);
    assert_eq!(listed["value"].as_array().unwrap().len(), 1);

    let info: serde_json::Value =
        serde_json::from_str(&run(Command::new("nbdinfo").args(["--json", &u]))).unwrap();
    assert_eq!(info["exports"][0]["export-size"], 64u64 << 20, "{info}");
    assert_eq!(info["exports"][0]["is_read_only"], false, "{info}");

    // Write an image through NBD, flushed.
    let img = pattern(5, 16 << 20);
    std::fs::write(p("img.raw"), &img).unwrap();
    run(Command::new("nbdcopy").args(["--flush", &p("img.raw"), &u]));
    n.ok(&["snapshot", "create", "d", "s1"]);
    let d = n.ok(&["snapshot", "diff", "d", "s1"]);
    assert!(d["value"].as_array().unwrap().is_empty(), "{d}");

    // Change 1 MiB at 32 MiB after the snapshot: the diff names exactly that.
    run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0xab 32M 1M",
        "-c",
        "flush",
        &u,
    ]));
    let d = n.ok(&["snapshot", "diff", "d", "s1"]);
    let ranges = d["value"].as_array().unwrap();
    let covered: u64 = ranges.iter().map(|r| r["len"].as_u64().unwrap()).sum();
    let first = ranges[0]["offset"].as_u64().unwrap();
    let last = ranges.last().unwrap();
    let end = last["offset"].as_u64().unwrap() + last["len"].as_u64().unwrap();
    assert!(first <= 32 << 20 && end >= 33 << 20, "{d}");
    assert!(covered < 4 << 20, "diff too coarse: {d}");

    // The snapshot over NBD (read-only) still holds the image.
    let xs = n.ok(&["vdisk", "nbd", "d", "--snapshot", "s1"]);
    assert_eq!(xs["value"]["read_only"], true);
    run(Command::new("nbdcopy").args([&uri(&xs), &p("s1.raw")]));
    let s1 = std::fs::read(p("s1.raw")).unwrap();
    assert!(s1[..16 << 20] == img[..] && s1[16 << 20..].iter().all(|&b| b == 0));
    let o = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4k", &uri(&xs)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() || text.contains("denied") || text.contains("only"),
        "write to a snapshot export succeeded: {text}"
    );

    // Exported disks cannot be rolled back or deleted under their clients.
    n.fails(&["snapshot", "rollback", "d", "s1"], 4);
    n.fails(&["vdisk", "delete", "d"], 4);
    n.fails(&["snapshot", "delete", "d", "s1"], 4);

    // fio with data verification over the live export.
    let fio = run(Command::new("fio").args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={u}"),
        "--rw=randwrite",
        "--bs=4k",
        "--size=8M",
        "--offset=40M",
        "--iodepth=8",
        "--verify=crc32c",
        "--do_verify=1",
        "--output-format=json",
    ]));
    let start = fio.find('{').unwrap();
    let v: serde_json::Value = serde_json::from_str(&fio[start..]).unwrap();
    assert_eq!(v["jobs"][0]["error"], 0, "{fio}");
    assert!(v["jobs"][0]["write"]["io_bytes"].as_u64().unwrap() >= 8 << 20);

    // Stop exports, roll back: the disk is the snapshot again.
    for e in n.ok(&["nbd", "list"])["value"].as_array().unwrap() {
        n.ok(&["nbd", "stop", &e["id"].as_u64().unwrap().to_string()]);
    }
    n.fails(&["nbd", "stop", &id], 3);
    n.ok(&["snapshot", "rollback", "d", "s1"]);
    n.ok(&["vdisk", "export", "d", &p("after.raw")]);
    assert!(
        std::fs::read(p("after.raw")).unwrap() == s1,
        "rollback did not restore s1"
    );
    n.ok(&["snapshot", "delete", "d", "s1"]);
    n.ok(&["vdisk", "delete", "d"]);
}
