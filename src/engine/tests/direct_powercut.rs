//! Power cuts under the direct path (`plan_direct_write_len` / `checksum_data` /
//! `finish_direct_write` / `abandon` / `plan_direct_read`): the test plays the VM queue
//! thread, writing each plan's bytes itself to the replicas' descriptors at the planned
//! offsets, mixed with ordinary writes, discards, reads and flushes on a mirrored disk over two
//! io_uring file devices. Then the power goes at a random point: between operations (after a
//! recorded direct write, after a flush), with a direct write planned but its data not
//! written, or written but not recorded.
//!
//! A direct plan needs an io_uring device's descriptor, which the fault device
//! (`blockdev::FaultDevice`, used by powercut.rs) has not, so the cut is made on the files:
//! the test keeps each file's image as of the last completed flush (read right after it
//! returns, nothing else running; a later image is also a state the device may hold), drops
//! the engine where it stands (no shutdown), then every 512-byte sector changed since that
//! image keeps its new or its old contents at random (a device that tears or drops any
//! unflushed write), and the engine reopens on what is left. Should the store's metadata area
//! have changed meanwhile (a flush the test did not make), that image is no floor and the cut
//! keeps everything (counted; none seen so far). Cuts inside a flush are powercut.rs's.
//!
//! Checked after each restart: every block holds what the last completed flush covered or a
//! value acknowledged after it (never an unfinished plan's, never garbage, never a read error);
//! two reads agree; a scrub finds no corrupt block and rewrites every replica it finds
//! differing; the pool's used space is exactly the blocks holding data, on both replicas (the
//! fresh blocks of unfinished and abandoned plans are reclaimed). Within a cycle every read,
//! ordinary or direct, returns the last acknowledged value. Seeded: the engine's own
//! background work may change which writes it plans direct, never what is checked.
//! CAIRN_DIRECT_POWERCUT_CYCLES raises the count, CAIRN_DIRECT_POWERCUT_SEED picks another
//! seed (ci/soak.sh).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engine::{
    DirectRead, DirectWrite, Engine, EngineConfig, VdiskHandle, BLOCK_BYTES, CHUNK_BYTES,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;
const BS: usize = BLOCK_BYTES as usize;
const CHUNK_BLOCKS: u64 = CHUNK_BYTES / BLOCK_BYTES;
const BLOCKS: u64 = 2 * CHUNK_BLOCKS; // two chunks
const FILE_BYTES: u64 = 16 * MIB; // the smallest disk the pool takes
const SECTOR: usize = 512;
/// Where the store's data area starts on a 16 MiB device (`store::layout`: superblock, two
/// metadata slots, two checkpoints, the journal). Everything before it is written only by a
/// flush or a metadata update; the test checks every direct write lands past it.
const META_END: u64 = {
    let total = FILE_BYTES / BLOCK_BYTES;
    let version_cap = total + total / 2;
    let ckpt_blocks = 1 + (version_cap * 44).div_ceil(BLOCK_BYTES);
    let meta_slot = 1 + (1 << 20) / BLOCK_BYTES;
    (2 + 2 * meta_slot + 2 * ckpt_blocks + 256) * BLOCK_BYTES
};

/// Value `tag`'s block (0: a hole, zeros): the tag and the word's place in the block, so a
/// block that mixes two values' sectors or moved within the disk matches neither.
fn content(tag: u64) -> Vec<u8> {
    if tag == 0 {
        return vec![0; BS];
    }
    (0..BS as u64 / 8)
        .flat_map(|i| (tag << 10 | i).to_le_bytes())
        .collect()
}

fn pwrite(fd: i32, off: u64, data: &[u8]) {
    let buf = blockdev::AlignedBuf::from_slice(data);
    // SAFETY: a positional write of `data.len()` bytes from a live buffer of that size.
    let n = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), data.len(), off as libc::off_t) };
    assert_eq!(n, data.len() as isize, "direct write to fd {fd} at {off}");
}

fn pread(fd: i32, off: u64, len: usize) -> Vec<u8> {
    let mut buf = blockdev::AlignedBuf::zeroed(len);
    // SAFETY: a positional read of `len` bytes into a live buffer of that size.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), len, off as libc::off_t) };
    assert_eq!(n, len as isize, "direct read from fd {fd} at {off}");
    buf.to_vec()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An engine on the device files (made on first use); None if io_uring devices cannot be
/// opened here.
fn start(rt: &tokio::runtime::Runtime, paths: &[PathBuf]) -> anyhow::Result<Option<Engine>> {
    rt.block_on(async {
        let e = Engine::open(EngineConfig {
            node_id: 1,
            node_name: "direct-powercut".into(),
        })
        .await?;
        for p in paths {
            if !p.exists() {
                blockdev::create_sparse_file(p, FILE_BYTES)?;
            }
            match blockdev::open_device(p) {
                Ok(d) => {
                    e.add_disk(d).await?;
                }
                Err(err) => {
                    println!("skipped: io_uring device unavailable here: {err}");
                    return Ok(None);
                }
            }
        }
        Ok(Some(e))
    })
}

fn images(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// The power cut on one file: every sector changed since `durable` keeps its new contents
/// with probability `keep`, else its old. Returns how many changed sectors were kept/lost;
/// None (and the file as it is) if the store's metadata changed since `durable`.
fn cut_file(path: &Path, durable: &[u8], rng: &mut StdRng, keep: f64) -> Option<(u64, u64)> {
    let now = std::fs::read(path).unwrap();
    assert_eq!(now.len(), durable.len());
    let meta = META_END as usize;
    if now[..meta] != durable[..meta] {
        // The engine flushed on its own since the test's last flush (a background flush or
        // a maintenance pass): the image taken then is no longer a floor. Keep everything.
        return None;
    }
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let (mut kept, mut lost) = (0, 0);
    for (i, (old4k, new4k)) in durable.chunks(BS).zip(now.chunks(BS)).enumerate() {
        if old4k == new4k {
            continue;
        }
        for (j, (old, new)) in old4k.chunks(SECTOR).zip(new4k.chunks(SECTOR)).enumerate() {
            if old == new {
                continue;
            }
            if rng.gen_bool(keep) {
                kept += 1;
            } else {
                lost += 1;
                f.write_all_at(old, (i * BS + j * SECTOR) as u64).unwrap();
            }
        }
    }
    Some((kept, lost))
}

/// What the model knows of each block.
struct Model {
    /// The value the last completed flush covered (or one a restart found on the media).
    durable: Vec<u64>,
    /// Values acknowledged since that flush (any one may have survived a cut).
    pending: Vec<Vec<u64>>,
    /// The last acknowledged value: what every read must return until the cut.
    cur: Vec<u64>,
    next_tag: u64,
}

impl Model {
    fn tags(&mut self, n: u64) -> Vec<u64> {
        let t: Vec<u64> = (self.next_tag..self.next_tag + n).collect();
        self.next_tag += n;
        t
    }

    fn data(tags: &[u64]) -> Vec<u8> {
        tags.iter().flat_map(|&t| content(t)).collect()
    }

    fn acked(&mut self, b: u64, tags: &[u64]) {
        for (i, &t) in tags.iter().enumerate() {
            let k = b as usize + i;
            self.pending[k].push(t);
            self.cur[k] = t;
        }
    }

    fn flushed(&mut self) {
        self.durable.clone_from(&self.cur);
        for p in &mut self.pending {
            p.clear();
        }
    }
}

/// A random range of 1..=8 blocks inside one chunk.
fn range(rng: &mut StdRng) -> (u64, u64) {
    let n = rng.gen_range(1..=8u64);
    let chunk = rng.gen_range(0..BLOCKS / CHUNK_BLOCKS);
    let b = chunk * CHUNK_BLOCKS + rng.gen_range(0..CHUNK_BLOCKS - n + 1);
    (b, n)
}

/// Plans a direct write of `n` blocks at block `b` the way the VMM's queue thread does (the
/// length first, then the data copied and checksummed); None if refused.
fn plan(h: &VdiskHandle, b: u64, data: &[u8]) -> Option<DirectWrite> {
    let mut p = DirectWrite::new();
    if !h.plan_direct_write_len(b * BLOCK_BYTES, data.len() as u64, &mut p) {
        return None;
    }
    assert!(p.checksum_data(data));
    assert_eq!(p.replicas(), 2, "both local replicas");
    Some(p)
}

fn write_targets(p: &DirectWrite, data: &[u8]) {
    for i in 0..p.replicas() {
        let (fd, at, _) = p.target(i).unwrap();
        assert!(
            at >= META_END,
            "a direct write planned at {at}, in the store's metadata"
        );
        pwrite(fd, at, data);
    }
}

#[derive(Default, Debug)]
struct Counts {
    direct_writes: u64,
    refused: u64,
    direct_reads: u64,
    cut_planned: u64,
    cut_written: u64,
    abandoned: u64,
    flush_under_plan: u64,
    sectors_kept: u64,
    sectors_lost: u64,
    unflushed_survived: u64,
    unseen_flushes: u64,
    replicas_rewritten: u64,
}

fn check_read(rt: &tokio::runtime::Runtime, h: &VdiskHandle, m: &Model, b: u64, n: u64) {
    let mut got = vec![0u8; (n * BLOCK_BYTES) as usize];
    rt.block_on(h.read(b * BLOCK_BYTES, &mut got)).unwrap();
    for i in 0..n {
        let k = (b + i) as usize;
        assert!(
            got[i as usize * BS..(i as usize + 1) * BS] == content(m.cur[k]),
            "block {k} does not read its last acknowledged value {}",
            m.cur[k]
        );
    }
}

fn cycles(n: u64, seed: u64) -> anyhow::Result<()> {
    // On tmpfs when there is one: the engine's flushes are then cheap (the test cuts power on
    // the files itself; the device's own durability plays no part).
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("engine-direct-powercut-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let paths: Vec<PathBuf> = (0..2).map(|i| dir.join(format!("d{i}.img"))).collect();
    let r = run(n, seed, &paths);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn run(n: u64, seed: u64, paths: &[PathBuf]) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut m = Model {
        durable: vec![0; BLOCKS as usize],
        pending: vec![Vec::new(); BLOCKS as usize],
        cur: vec![0; BLOCKS as usize],
        next_tag: 1,
    };
    {
        // Every chunk placed and written in full by the ordinary path (a chunk's first write
        // is never planned direct).
        let rt = runtime();
        let Some(e) = start(&rt, paths)? else {
            return Ok(());
        };
        rt.block_on(e.create_vdisk("v", BLOCKS * BLOCK_BYTES))?;
        let h = e.open_vdisk("v")?;
        let tags = m.tags(BLOCKS);
        rt.block_on(h.write(0, &Model::data(&tags)))?;
        rt.block_on(h.flush())?;
        m.acked(0, &tags);
        m.flushed();
        drop(h);
        rt.block_on(e.shutdown())?;
    }
    let mut c = Counts::default();
    for cycle in 0..n {
        let rt = runtime();
        let Some(e) = start(&rt, paths).map_err(|err| err.context(format!("restart {cycle}")))?
        else {
            anyhow::bail!("io_uring devices went away");
        };
        let h = e.open_vdisk("v")?;
        // Verify: each block holds its durable value or one acknowledged since.
        let mut img = vec![0u8; (BLOCKS * BLOCK_BYTES) as usize];
        rt.block_on(h.read(0, &mut img))
            .map_err(|err| anyhow::anyhow!("cycle {cycle}: read after restart: {err}"))?;
        let mut again = vec![0u8; img.len()];
        rt.block_on(h.read(0, &mut again))?;
        anyhow::ensure!(img == again, "cycle {cycle}: two reads differ");
        for b in 0..BLOCKS as usize {
            let got = &img[b * BS..(b + 1) * BS];
            let tag = std::iter::once(m.durable[b])
                .chain(m.pending[b].iter().copied())
                .find(|t| content(*t) == got)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "cycle {cycle}: block {b} holds neither its flushed value {} nor one \
                         acknowledged since {:?}",
                        m.durable[b],
                        m.pending[b]
                    )
                })?;
            if tag != m.durable[b] {
                c.unflushed_survived += 1;
            }
            m.durable[b] = tag;
            m.cur[b] = tag;
            m.pending[b].clear();
        }
        // The replicas agree (or the scrub rewrites the one that differs), nothing is corrupt.
        let before = e.stats().scrub;
        {
            let _rt = rt.enter();
            e.start_scrub()?;
        }
        anyhow::ensure!(
            rt.block_on(e.wait_scrub(Duration::from_secs(60))),
            "scrub did not end"
        );
        let s = e.stats().scrub;
        anyhow::ensure!(
            s.corrupt_found == before.corrupt_found && s.unrepairable == before.unrepairable,
            "cycle {cycle}: scrub found corrupt blocks: {s:?}"
        );
        anyhow::ensure!(
            s.replicas_differed - before.replicas_differed
                == s.replicas_rewritten - before.replicas_rewritten,
            "cycle {cycle}: replicas differ after the scrub: {s:?}"
        );
        c.replicas_rewritten += s.replicas_rewritten - before.replicas_rewritten;
        // Space: exactly the blocks holding data, on two replicas.
        let data_blocks = m.cur.iter().filter(|&&t| t != 0).count() as u64;
        let used = e.pool().used_raw_bytes;
        anyhow::ensure!(
            used == 2 * data_blocks * BLOCK_BYTES,
            "cycle {cycle}: {used} bytes used, {data_blocks} blocks hold data on 2 replicas"
        );
        // Mostly, as a running VM would, an ordinary write to each chunk first: after an
        // unclean restart nothing is planned direct before the pool is marked in use and the
        // chunk reconciled, both the ordinary path's job. Otherwise the first direct writes
        // are refused and go the ordinary way.
        if rng.gen_bool(0.75) {
            for chunk in 0..BLOCKS / CHUNK_BLOCKS {
                let b = chunk * CHUNK_BLOCKS + rng.gen_range(0..CHUNK_BLOCKS);
                let tags = m.tags(1);
                rt.block_on(h.write(b * BLOCK_BYTES, &Model::data(&tags)))?;
                m.acked(b, &tags);
            }
        }
        // The durable floor: what is on the files now (a restart's reads may repair).
        let mut durable_img = images(paths);

        for _ in 0..rng.gen_range(1..14) {
            match rng.gen_range(0..20) {
                0..=8 => {
                    // A direct write, written and recorded (or the ordinary path if refused).
                    let (b, nb) = range(&mut rng);
                    let tags = m.tags(nb);
                    let data = Model::data(&tags);
                    match plan(&h, b, &data) {
                        Some(mut p) => {
                            write_targets(&p, &data);
                            anyhow::ensure!(
                                h.finish_direct_write(&mut p, true, Instant::now()),
                                "cycle {cycle}: a written direct write was not recorded"
                            );
                            c.direct_writes += 1;
                        }
                        None => {
                            c.refused += 1;
                            rt.block_on(h.write(b * BLOCK_BYTES, &data))?;
                        }
                    }
                    m.acked(b, &tags);
                }
                9..=10 => {
                    let (b, nb) = range(&mut rng);
                    let tags = m.tags(nb);
                    rt.block_on(h.write(b * BLOCK_BYTES, &Model::data(&tags)))?;
                    m.acked(b, &tags);
                }
                11 => {
                    let (b, nb) = range(&mut rng);
                    rt.block_on(h.discard(b * BLOCK_BYTES, nb * BLOCK_BYTES))?;
                    m.acked(b, &vec![0; nb as usize]);
                }
                12 => {
                    // A direct write whose ring failed: data maybe written, the plan given up.
                    let (b, nb) = range(&mut rng);
                    let tags = m.tags(nb);
                    let data = Model::data(&tags);
                    if let Some(mut p) = plan(&h, b, &data) {
                        if rng.gen_bool(0.5) {
                            write_targets(&p, &data);
                        }
                        // Each abandon keeps a store (and its descriptor) open for good.
                        if c.abandoned < 100 {
                            p.abandon();
                            c.abandoned += 1;
                        } else {
                            drop(p);
                        }
                    }
                }
                13 => {
                    // A flush while a direct write is planned and written but not recorded:
                    // it covers the writes acknowledged before it, not this one.
                    let (b, nb) = range(&mut rng);
                    let tags = m.tags(nb);
                    let data = Model::data(&tags);
                    if let Some(mut p) = plan(&h, b, &data) {
                        write_targets(&p, &data);
                        rt.block_on(h.flush())?;
                        m.flushed();
                        durable_img = images(paths);
                        anyhow::ensure!(h.finish_direct_write(&mut p, true, Instant::now()));
                        m.acked(b, &tags);
                        c.flush_under_plan += 1;
                    }
                }
                14..=15 => {
                    // A direct read: every block verifies and is the last acknowledged value.
                    let (b, nb) = range(&mut rng);
                    let mut r = DirectRead::new();
                    if h.plan_direct_read(b * BLOCK_BYTES, nb * BLOCK_BYTES, &mut r) {
                        let got = pread(r.fd(), r.offset(), (nb * BLOCK_BYTES) as usize);
                        for i in 0..nb as usize {
                            let blk = &got[i * BS..(i + 1) * BS];
                            anyhow::ensure!(
                                r.block_ok(i, blk) && blk == content(m.cur[b as usize + i]),
                                "cycle {cycle}: direct read of block {} is not its last value",
                                b as usize + i
                            );
                        }
                        r.release();
                        c.direct_reads += 1;
                    } else {
                        check_read(&rt, &h, &m, b, nb);
                    }
                }
                16 => {
                    let (b, nb) = range(&mut rng);
                    check_read(&rt, &h, &m, b, nb);
                }
                _ => {
                    rt.block_on(h.flush())?;
                    m.flushed();
                    durable_img = images(paths);
                }
            }
        }
        // The cut: between operations, or with a direct write planned (data not yet written,
        // or written but not recorded). Its values are never acknowledged.
        let mut unfinished = None;
        match rng.gen_range(0..3) {
            0 => {}
            stage => {
                let (b, nb) = range(&mut rng);
                let tags = m.tags(nb);
                let data = Model::data(&tags);
                if let Some(p) = plan(&h, b, &data) {
                    if stage == 2 {
                        write_targets(&p, &data);
                        c.cut_written += 1;
                    } else {
                        c.cut_planned += 1;
                    }
                    unfinished = Some(p);
                }
            }
        }
        // The engine stops where it stands (no shutdown; an unfinished plan's blocks go back
        // in memory only), then the files lose what no completed flush covered.
        drop(unfinished);
        drop(h);
        drop(e);
        drop(rt);
        let keep = f64::from(rng.gen_range(0..=4u32)) / 4.0;
        for (p, d) in paths.iter().zip(&durable_img) {
            match cut_file(p, d, &mut rng, keep) {
                Some((k, l)) => {
                    c.sectors_kept += k;
                    c.sectors_lost += l;
                }
                None => c.unseen_flushes += 1,
            }
        }
    }
    eprintln!("direct power cuts: {n}, {c:?}");
    anyhow::ensure!(
        // Not more: the share planned falls as the pool's free space fragments over many
        // cycles (a plan needs its blocks in one run), so a soak plans fewer per cycle.
        c.direct_writes >= n.min(40) / 2 && c.cut_written > 0 && c.flush_under_plan > 0,
        "too few direct writes were planned: {c:?}"
    );
    anyhow::ensure!(
        c.sectors_lost > 0 && c.sectors_kept > 0,
        "cuts changed nothing: {c:?}"
    );
    Ok(())
}

#[test]
fn direct_writes_survive_power_cuts() -> anyhow::Result<()> {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let n = env("CAIRN_DIRECT_POWERCUT_CYCLES").unwrap_or(40);
    let seed = env("CAIRN_DIRECT_POWERCUT_SEED").unwrap_or(0xd1ec7);
    eprintln!("seed {seed} (CAIRN_DIRECT_POWERCUT_SEED)");
    cycles(n, seed)
}
