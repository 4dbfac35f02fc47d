//! A real peer process (`mirror-peer`, file disk, io_uring) killed with SIGKILL in the middle of
//! mirrored writes, then restarted on the same data: writes never fail, the restarted peer's
//! store recovers, only the chunks touched meanwhile are resynced, and both replicas end
//! byte-identical.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use engine::Replica;
use mirror::{attach_peer, EpochBook};
use store::ObjectId;
use transport::ClusterCa;

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the peer; returns it and the address it serves on (None if it cannot run here).
fn spawn_peer(
    ca_file: &std::path::Path,
    dir: &std::path::Path,
    addr: &str,
) -> Result<(Peer, String), String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mirror-peer"))
        .args([
            "--ca",
            ca_file.to_str().unwrap(),
            "--node",
            "2",
            "--addr",
            addr,
        ])
        .args(["--dir", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let out = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    match line.trim().strip_prefix("listening ") {
        Some(a) => Ok((Peer(child), a.to_string())),
        None => {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            Err(err)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_of_the_peer_process_loses_nothing() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let ca = ClusterCa::generate("t").unwrap();
    let ca_file = dir.path().join("ca.json");
    std::fs::write(&ca_file, serde_json::to_vec(&ca).unwrap()).unwrap();
    let peer_dir = dir.path().join("peer");
    let (peer, addr) = match spawn_peer(&ca_file, &peer_dir, "127.0.0.7:0") {
        Ok(p) => p,
        Err(e) => {
            println!("skipped: the peer process cannot run here: {e}");
            return;
        }
    };
    let n1 = Node::start(&ca, 1, "127.0.0.6", 1, dir.path()).await;
    let link = mirror::PeerLink::new(
        2,
        addr.parse().unwrap(),
        &n1.identity,
        Arc::new(EpochBook::new(1)),
        fast_cfg(),
    )
    .unwrap();
    attach_peer(&n1.engine, &link).await.unwrap();
    const SIZE: u64 = 12 * MIB;
    let v = n1.engine.create_vdisk("v", SIZE).await.unwrap();
    let h = n1.engine.open_vdisk("v").unwrap();
    let mut model = vec![0u8; SIZE as usize];
    for c in 0..12u64 {
        let d = pattern(1, c * MIB, MIB as usize);
        h.write(c * MIB, &d).await.unwrap();
        model[(c * MIB) as usize..((c + 1) * MIB) as usize].copy_from_slice(&d);
    }
    h.flush().await.unwrap();

    // Writes to chunks 0..4 only (some unflushed) while the peer is killed.
    let writer = {
        let h = h.clone();
        tokio::spawn(async move {
            let mut done = Vec::new();
            let mut worst = Duration::ZERO;
            for i in 0..300u64 {
                let off = (i * 53 % 1024) * 4096; // chunks 0..4
                let d = pattern(10 + i, off, 4096);
                let t = Instant::now();
                h.write(off, &d).await.unwrap();
                worst = worst.max(t.elapsed());
                done.push((off, d));
                if i % 40 == 0 {
                    h.flush().await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            h.flush().await.unwrap();
            (done, worst)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut peer = peer;
    peer.0.kill().unwrap(); // SIGKILL
    peer.0.wait().unwrap();
    let (done, worst) = writer.await.unwrap();
    assert!(worst < Duration::from_secs(4), "a write stalled {worst:?}");
    for (off, d) in done {
        model[off as usize..off as usize + d.len()].copy_from_slice(&d);
    }
    let dirty = n1.engine.remote_disks()[0].dirty_chunks;
    assert!(
        (1..=4).contains(&dirty),
        "{dirty} dirty chunks; the writer touched 4"
    );

    // Same data directory, same address: the store recovers, the replica comes back.
    let (_peer2, addr2) = spawn_peer(&ca_file, &peer_dir, &addr).expect("restarting the peer");
    assert_eq!(addr2, addr);
    wait_for("resync after restart", Duration::from_secs(30), || {
        n1.engine.remotes_in_sync()
    })
    .await;
    assert_eq!(n1.engine.remote_disks()[0].resynced_chunks, dirty);

    // Every chunk: the owner's local copy equals the restarted peer's copy.
    let local = n1.engine.local_replicas()[0].1.clone();
    let disks = link.disks().await.unwrap();
    let remote = link.open_disk(&disks[0]).await.unwrap();
    for chunk in 0..12 {
        let obj = ObjectId { vdisk: v.id, chunk };
        let a = local.read(obj, 0, 256, u64::MAX).await.unwrap();
        let b = remote.read(obj, 0, 256, u64::MAX).await.unwrap();
        assert!(a[..] == b[..], "chunk {chunk} differs after resync");
        assert!(
            a[..] == model[(chunk * MIB) as usize..((chunk + 1) * MIB) as usize],
            "chunk {chunk}: acknowledged data lost"
        );
    }
    n1.engine.shutdown().await.unwrap();
}
