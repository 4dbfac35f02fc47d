//! The CLI against a real `cairn node` process: every command, bad input with the right exit code
//! and nothing changed, import/export round trips, and disks joining the pool.

mod common;

use common::{pattern, TestNode};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

const G: u64 = 1 << 30;

#[test]
fn vdisk_lifecycle_and_bad_input() {
    let n = TestNode::start(4, "256M");
    let v = n.ok(&["vdisk", "create", "a", "1G"]);
    assert_eq!(v["value"]["size_bytes"], G);
    assert_eq!(n.vdisk_names(), ["a"]);
    assert_eq!(n.ok(&["vdisk", "show", "a"])["value"]["size_bytes"], G);
    // Human output names the disk too.
    assert!(n.cli(&["vdisk", "list"]).stdout.contains("1 GiB"));

    n.ok(&["vdisk", "resize", "a", "2G"]);
    assert_eq!(n.ok(&["vdisk", "show", "a"])["value"]["size_bytes"], 2 * G);

    // Bad input: clear error, documented exit code, nothing changed.
    // A shrink is refused by the disk's current size (its state): a conflict, exit 4.
    let err = n.fails(&["vdisk", "resize", "a", "1G"], 4);
    assert!(err.contains("grow"), "{err}");
    for size in [
        "10X",
        "0",
        "4097",
        "1.5G",
        "-5",
        "G",
        "99999999999999999999P",
    ] {
        n.fails(&["vdisk", "create", "b", size], 2);
    }
    for name in ["a/b", "a b", "ünï", &"x".repeat(65), ".hidden"] {
        n.fails(&["vdisk", "create", name, "1G"], 2);
    }
    n.fails(&["vdisk", "create", "a", "1G"], 4);
    n.fails(&["vdisk", "show", "nope"], 3);
    n.fails(&["vdisk", "delete", "nope"], 3);
    n.fails(&["vdisk", "resize", "nope", "4G"], 3);
    // Larger than the pool's logical limit: the request is the caller's to change (exit 4,
    // a conflict naming the limit and the free space), not the pool out of room (exit 5).
    let o = n.cli(&["vdisk", "create", "huge", "1P"]);
    assert_eq!(o.code, 4, "{}", o.stderr);
    assert!(o.stderr.contains("logical limit"), "{}", o.stderr);
    assert_eq!(n.vdisk_names(), ["a"]);
    assert_eq!(n.ok(&["vdisk", "show", "a"])["value"]["size_bytes"], 2 * G);

    // JSON errors carry the code for scripts.
    let o = n.cli(&["--json", "vdisk", "show", "nope"]);
    assert_eq!(o.json()["error"]["code"], "not_found");

    n.ok(&["vdisk", "delete", "a"]);
    assert!(n.vdisk_names().is_empty());

    // Without a node: exit 7, and a message that says so.
    let dir = tempfile::tempdir().unwrap();
    let o = common::cli_at(dir.path(), &["vdisk", "list"]);
    assert_eq!(o.code, 7, "{}", o.stderr);
    assert!(o.stderr.contains("cannot reach"), "{}", o.stderr);
}

#[test]
fn import_export_round_trip_and_bad_files() {
    let n = TestNode::start(4, "256M");
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).display().to_string();

    // 10 MiB + 1000 bytes: random data with zero holes (which must stay holes).
    let len = (10 << 20) + 1000;
    let mut img = pattern(7, len);
    img[1 << 20..3 << 20].fill(0);
    img[8 << 20..9 << 20].fill(0);
    std::fs::write(p("in.raw"), &img).unwrap();
    let t = n.ok(&["vdisk", "import", "img", &p("in.raw")]);
    assert_eq!(t["value"]["size_bytes"], len as u64);
    let written = t["value"]["written_bytes"].as_u64().unwrap();
    assert!(
        written < len as u64 - (2 << 20),
        "zero blocks were written: {written}"
    );
    let size = n.ok(&["vdisk", "show", "img"])["value"]["size_bytes"]
        .as_u64()
        .unwrap();
    assert_eq!(size, (len as u64).div_ceil(4096) * 4096);

    n.ok(&["vdisk", "export", "img", &p("out.raw")]);
    let out = std::fs::read(p("out.raw")).unwrap();
    assert_eq!(out.len() as u64, size);
    assert!(
        out[..len] == img[..],
        "exported bytes differ from the imported image"
    );
    assert!(out[len..].iter().all(|&b| b == 0));
    let allocated = std::fs::metadata(p("out.raw")).unwrap().blocks() * 512;
    assert!(
        allocated < size - (2 << 20),
        "export is not sparse: {allocated} of {size}"
    );

    // Bad files: clear error, right code, no disk created, nothing written.
    std::fs::write(p("empty.raw"), b"").unwrap();
    let mut qcow = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    qcow.resize(65536, 0);
    std::fs::write(p("disk.qcow2"), &qcow).unwrap();
    let e = n.fails(&["vdisk", "import", "x", &p("empty.raw")], 2);
    assert!(e.contains("empty"), "{e}");
    let e = n.fails(&["vdisk", "import", "x", &p("disk.qcow2")], 2);
    assert!(e.contains("qcow2"), "{e}");
    let e = n.fails(
        &["vdisk", "import", "x", &dir.path().display().to_string()],
        4,
    );
    assert!(e.contains("not a regular file"), "{e}");
    n.fails(&["vdisk", "import", "x", &p("missing.raw")], 3);
    let pool_disk = n.data().join("disks/disk0.img").display().to_string();
    n.fails(&["vdisk", "import", "x", &pool_disk], 2);
    n.fails(&["vdisk", "import", "img", &p("in.raw")], 4);
    // Export never overwrites a file, never writes into the disk directory.
    n.fails(&["vdisk", "export", "img", &p("in.raw")], 4);
    assert!(std::fs::read(p("in.raw")).unwrap() == img);
    let into_pool = n.data().join("disks/new.img").display().to_string();
    n.fails(&["vdisk", "export", "img", &into_pool], 2);
    assert!(!n.data().join("disks/new.img").exists());
    n.fails(&["vdisk", "export", "nope", &p("nope.raw")], 3);
    assert!(!dir.path().join("nope.raw").exists());
    assert_eq!(n.vdisk_names(), ["img"]);
}

#[test]
fn snapshots_clones_and_diff() {
    let n = TestNode::start(4, "256M");
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).display().to_string();
    let img = pattern(11, 4 << 20);
    std::fs::write(p("a.raw"), &img).unwrap();
    n.ok(&["vdisk", "import", "a", &p("a.raw")]);

    let s = n.ok(&["snapshot", "create", "a", "s1"]);
    assert_eq!(s["value"]["name"], "s1");
    n.fails(&["snapshot", "create", "a", "s1"], 4);
    n.fails(&["snapshot", "create", "nope", "s1"], 3);
    n.fails(&["snapshot", "create", "a", "bad/name"], 2);
    let list = n.ok(&["snapshot", "list", "a"]);
    assert_eq!(list["value"].as_array().unwrap().len(), 1);
    assert_eq!(n.ok(&["vdisk", "show", "a"])["value"]["snapshots"], 1);

    // Nothing changed since s1.
    let d = n.ok(&["snapshot", "diff", "a", "s1"]);
    assert!(d["value"].as_array().unwrap().is_empty(), "{d}");
    n.fails(&["snapshot", "diff", "a", "nope"], 3);

    // Clones of the disk and of the snapshot; both independent of the source.
    n.ok(&["vdisk", "clone", "a", "c-live"]);
    n.ok(&["vdisk", "clone", "a", "c-snap", "--snapshot", "s1"]);
    n.fails(&["vdisk", "clone", "a", "c-live"], 4);
    n.fails(&["vdisk", "clone", "nope", "c2"], 3);
    n.fails(&["vdisk", "clone", "a", "c3", "--snapshot", "nope"], 3);

    n.ok(&["vdisk", "export", "a", &p("a-s1.raw"), "--snapshot", "s1"]);
    assert!(std::fs::read(p("a-s1.raw")).unwrap() == img);

    n.ok(&["snapshot", "rollback", "a", "s1"]);
    n.fails(&["snapshot", "rollback", "a", "nope"], 3);
    n.ok(&["snapshot", "delete", "a", "s1"]);
    n.fails(&["snapshot", "delete", "a", "s1"], 3);
    n.ok(&["vdisk", "delete", "a"]);

    for c in ["c-live", "c-snap"] {
        let f = p(&format!("{c}.raw"));
        n.ok(&["vdisk", "export", c, &f]);
        assert!(std::fs::read(&f).unwrap() == img, "clone {c} lost data");
    }
    let mut names = n.vdisk_names();
    names.sort();
    assert_eq!(names, ["c-live", "c-snap"]);
}

#[test]
fn disks_join_foreign_data_is_refused_and_state_survives_restart() {
    let mut n = TestNode::start(2, "256M");
    let dir = tempfile::tempdir().unwrap();
    let disks = |n: &TestNode| n.ok(&["disk", "list"])["value"].as_array().unwrap().len();
    assert_eq!(disks(&n), 2);

    // A file with someone else's data: refused with exit 9, not one byte changed.
    let foreign = dir.path().join("foreign.img");
    let mut data = pattern(3, 1 << 20);
    data.resize(128 << 20, 0);
    std::fs::write(&foreign, &data).unwrap();
    let e = n.fails(&["disk", "add", &foreign.display().to_string()], 9);
    assert!(e.contains("not Cairn") || e.contains("not ours"), "{e}");
    assert!(
        std::fs::read(&foreign).unwrap() == data,
        "foreign disk was modified"
    );
    let probe = n.ok(&["disk", "probe", &foreign.display().to_string()]);
    assert_eq!(probe["value"]["kind"], "foreign");

    // Bad disk paths.
    n.fails(&["disk", "add", "/nonexistent/disk.img"], 3);
    // A directory is a well-formed path to the wrong kind of object: a conflict, exit 4.
    n.fails(&["disk", "add", &dir.path().display().to_string()], 4);
    let small = dir.path().join("small.img");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    n.fails(&["disk", "add", &small.display().to_string()], 2);
    let d0 = n.data().join("disks/disk0.img").display().to_string();
    n.fails(&["disk", "add", &d0], 4);
    assert_eq!(disks(&n), 2);

    // Explicit add of a blank file outside the data directory.
    let extra = dir.path().join("extra.img");
    std::fs::File::create(&extra)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    assert_eq!(
        n.ok(&["disk", "probe", &extra.display().to_string()])["value"]["kind"],
        "blank"
    );
    n.ok(&["disk", "add", &extra.display().to_string()]);
    assert_eq!(disks(&n), 3);

    // A foreign file dropped into the disk directory is left alone; a blank one joins.
    let dropped_foreign = n.data().join("disks/zz-foreign.img");
    std::fs::write(&dropped_foreign, &data).unwrap();
    let dropped = n.data().join("disks/new.img.part");
    std::fs::File::create(&dropped)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    std::fs::rename(&dropped, n.data().join("disks/new.img")).unwrap();
    let t = Instant::now();
    while disks(&n) < 4 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "dropped disk did not join"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(disks(&n), 4);
    assert!(std::fs::read(&dropped_foreign).unwrap() == data);

    n.ok(&["vdisk", "create", "keep", "1G"]);
    n.ok(&["snapshot", "create", "keep", "s"]);
    n.stop();
    n.restart();
    assert_eq!(disks(&n), 4, "{}", n.log());
    assert_eq!(n.vdisk_names(), ["keep"]);
    assert_eq!(n.ok(&["snapshot", "list", "keep"])["value"][0]["name"], "s");
    let pool = n.ok(&["pool"]);
    assert_eq!(pool["value"]["disks"], 4);
    let stats = n.ok(&["stats"]);
    assert_eq!(stats["value"]["vdisks"], 1);
    // Per-vdisk I/O counters ride along for the live charts (internal vdisks left out).
    let io = &stats["value"]["engine"]["vdisk_io"];
    assert_eq!(io.as_array().map(|a| a.len()), Some(1), "{stats}");
    assert_eq!(io[0]["name"], "keep");
    assert!(io[0]["write"]["ops"].is_u64(), "{stats}");
    let text = n.cli(&["stats"]).stdout;
    assert!(
        text.contains("keep") && !text.contains("vdisk_io"),
        "{text}"
    );
    n.ok(&["disk", "scrub"]);

    // Removing a disk drains it first; data stays readable throughout and after.
    let img = pattern(9, 8 << 20);
    let img_path = dir.path().join("r.raw");
    std::fs::write(&img_path, &img).unwrap();
    n.ok(&["vdisk", "import", "r", &img_path.display().to_string()]);
    let list = n.ok(&["disk", "list"]);
    let id = list["value"][0]["id"].as_str().unwrap().to_string();
    n.fails(&["disk", "remove", "no-such-disk"], 3);
    n.ok(&["disk", "remove", &id]);
    let t = Instant::now();
    loop {
        let list = n.ok(&["disk", "list"]);
        let d = list["value"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id.as_str())
            .cloned();
        if d.is_none() || d.as_ref().unwrap()["state"] == "removed" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "disk never drained: {list}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = dir.path().join("r-out.raw");
    n.ok(&["vdisk", "export", "r", &out.display().to_string()]);
    assert!(
        std::fs::read(&out).unwrap() == img,
        "data lost by draining a disk"
    );
    // The audit log has every mutation with its actor.
    let audit = std::fs::read_to_string(n.data().join("audit.log")).unwrap();
    assert!(
        audit.contains("\"action\":\"snapshot_create\"") && audit.contains("\"user\":\"local\"")
    );
}

#[test]
fn import_that_runs_out_of_space_leaves_nothing_behind() {
    let n = TestNode::start(2, "128M");
    let dir = tempfile::tempdir().unwrap();
    // Random data larger than the pool's usable space: the import fails midway.
    let img = dir.path().join("big.raw");
    std::fs::write(&img, pattern(21, 200 << 20)).unwrap();
    let o = n.cli(&["vdisk", "import", "big", &img.display().to_string()]);
    assert_eq!(o.code, 5, "expected no space: {}{}", o.stdout, o.stderr);
    assert!(n.vdisk_names().is_empty(), "half-imported disk left behind");
    // The space is given back: a small import still fits.
    let small = dir.path().join("small.raw");
    std::fs::write(&small, pattern(22, 4 << 20)).unwrap();
    n.ok(&["vdisk", "import", "small", &small.display().to_string()]);
}

#[test]
fn control_socket_answers_bad_frames_with_errors() {
    use std::io::{BufRead, BufReader, Write};
    type Reader = BufReader<std::os::unix::net::UnixStream>;
    let n = TestNode::start(2, "128M");
    let sock = std::os::unix::net::UnixStream::connect(n.data().join("cairn.sock")).unwrap();
    let mut w = sock.try_clone().unwrap();
    let mut r = BufReader::new(sock);
    let answer = |r: &mut Reader, w: &mut std::os::unix::net::UnixStream, line: &[u8]| {
        w.write_all(line).unwrap();
        let mut a = String::new();
        r.read_line(&mut a).unwrap();
        serde_json::from_str::<serde_json::Value>(&a).unwrap()
    };
    let a = answer(&mut r, &mut w, b"this is not json\n");
    assert_eq!(a["error"]["code"], "invalid_argument", "{a}");
    let a = answer(
        &mut r,
        &mut w,
        b"{\"action\":\"vdisk_create\",\"name\":\"x\"}\n",
    );
    assert_eq!(a["error"]["code"], "invalid_argument", "{a}");
    let a = answer(
        &mut r,
        &mut w,
        b"{\"action\":\"vdisk_create\",\"name\":\"../x\",\"size_bytes\":4096}\n",
    );
    assert_eq!(a["error"]["code"], "invalid_argument", "{a}");
    // The same connection still serves good requests.
    let a = answer(&mut r, &mut w, b"{\"action\":\"vdisk_list\"}\n");
    assert_eq!(a["ok"]["kind"], "vdisks", "{a}");
    // An oversized frame gets an error and the connection is closed.
    let big = vec![b'x'; 2 << 20];
    let _ = w.write_all(&big);
    let mut last = String::new();
    r.read_line(&mut last).unwrap();
    let a: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(a["error"]["code"], "invalid_argument", "{a}");
    assert!(
        a["error"]["message"].as_str().unwrap().contains("longer"),
        "{a}"
    );
    assert!(n.vdisk_names().is_empty());
}

/// `cairn bench vmm` measures its VMM's memory in a child process holding one idle VM (the
/// cairn binary re-run with `vmm::bench::CHILD_ENV` set), which starts before the CLI is parsed
/// (the parser's code and heap would be counted as the VMM's). With the child's variable set, an
/// argument the CLI would refuse (exit 2, "unexpected argument") never reaches it: the child
/// itself answers, here with its error about a guest file that does not exist.
#[test]
fn the_memory_child_starts_before_the_cli_is_parsed() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--no-such-option")
        .env(vmm::bench::CHILD_ENV, "/nonexistent/cairn-guest.elf")
        .output()
        .expect("run cairn");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("memory child"), "stderr: {err}");
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
}
