//! Handing a retired held copy to the node that took its virtual disk over.
//!
//! With three or more data nodes a chunk's two replicas may both sit on nodes other than the
//! one taking the disk over, so the new owner gathers the chunks other holders keep: it lists
//! them ([`PeerLink::held_objects`]) and exports each one with every block version
//! ([`PeerLink::export_held`]), in pages of at most [`MAX_HELD_PART_BYTES`], each version with
//! its CRC32C, checked here before anything is imported. A replica server answers both only for
//! a copy it has retired (epoch maximum: the old owner can never change it again), and, like
//! every request, only to an authenticated member of the cluster (mutual TLS).
//!
//! Must never: hand out a copy that is not retired, or accept a page whose bytes do not match
//! their checksums, whose blocks are out of order or outside the chunk, or that does not move
//! the export forward (a bad peer cannot make the gathering loop or grow without bound).

use store::{BlockVersions, VersionData};

use crate::client::{CallErr, PeerLink};
use crate::error::{MirrorError, Result};
use crate::wire::*;

/// One answer of a held export: the blocks of `versions` from `from_block` on, up to the page
/// bound (at least one block), and where the next page starts.
pub(crate) fn page(versions: Vec<BlockVersions>, from_block: u64) -> (Vec<HeldBlock>, Option<u64>) {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut rest = versions.into_iter().filter(|b| b.block >= from_block);
    for b in rest.by_ref() {
        let size: usize = b
            .versions
            .iter()
            .map(|v| v.data.as_ref().map_or(0, |d| d.len()))
            .sum();
        if !out.is_empty() && bytes + size > MAX_HELD_PART_BYTES {
            return (out, Some(b.block));
        }
        bytes += size;
        out.push(HeldBlock {
            block: b.block,
            versions: b
                .versions
                .into_iter()
                .map(|v| HeldVersion {
                    gen: v.gen,
                    crc: v.crc,
                    data: v.data.map(|d| Bytes(d[..].to_vec())),
                })
                .collect(),
        });
    }
    (out, None)
}

/// Checks one page against what was asked (`from_block`) and turns it into store versions.
fn accept_page(
    node: u64,
    from_block: u64,
    blocks: Vec<HeldBlock>,
    next_block: Option<u64>,
    out: &mut Vec<BlockVersions>,
) -> Result<Option<u64>> {
    let bad = |m: String| {
        Err(MirrorError::Protocol(format!(
            "node {node}: held export: {m}"
        )))
    };
    let mut last: Option<u64> = None;
    for b in &blocks {
        if b.block < from_block
            || b.block >= engine::CHUNK_BLOCKS
            || last.is_some_and(|l| b.block <= l)
        {
            return bad(format!(
                "block {} out of order or outside the chunk",
                b.block
            ));
        }
        last = Some(b.block);
        let mut prev_gen = None;
        for v in &b.versions {
            if prev_gen.is_some_and(|g| v.gen <= g) {
                return bad(format!("block {}: versions out of order", b.block));
            }
            prev_gen = Some(v.gen);
            if let Some(d) = &v.data {
                if d.0.len() != 4096 {
                    return bad(format!("block {}: a version is not one block", b.block));
                }
            }
        }
    }
    if let Some(n) = next_block {
        // The next page must start past this one, inside the chunk: at most one page per
        // block, so a peer cannot keep the gathering going forever.
        if last.is_none_or(|l| n <= l) || n >= engine::CHUNK_BLOCKS {
            return bad(format!("next block {n} does not move forward"));
        }
    }
    for b in blocks {
        let mut versions = Vec::with_capacity(b.versions.len());
        for v in b.versions {
            let data = v.data.map(|d| blockdev::AlignedBuf::from_slice(&d.0));
            let vd = VersionData::new(v.gen, data);
            if vd.data.is_some() && vd.crc != v.crc {
                return bad(format!(
                    "block {} generation {}: checksum {:#x}, the data has {:#x}",
                    b.block, v.gen, v.crc, vd.crc
                ));
            }
            versions.push(vd);
        }
        out.push(BlockVersions {
            block: b.block,
            versions,
        });
    }
    Ok(next_block)
}

fn call_err(node: u64, e: CallErr) -> MirrorError {
    match e {
        CallErr::Net(m) | CallErr::Refused(m) => {
            MirrorError::Protocol(format!("node {node} unreachable: {m}"))
        }
        CallErr::Wire(w) => MirrorError::Peer(w),
    }
}

impl PeerLink {
    /// (disk id, chunk) of every object of the copy the peer holds of node `home`'s virtual
    /// disk `vdisk`, sorted by chunk. The peer answers only once that copy is retired
    /// (`WireError::NotRetired` before).
    pub async fn held_objects(&self, home: u64, vdisk: u64) -> Result<Vec<(String, u64)>> {
        let mut out: Vec<(String, u64)> = Vec::new();
        let mut from_chunk = 0u64;
        loop {
            let req = Req::HeldObjects {
                home,
                vdisk,
                from_chunk,
            };
            let (chunks, more) = match self
                .call(&req, self.cfg.bulk_timeout)
                .await
                .map_err(|e| call_err(self.node_id, e))?
            {
                Body::Held { chunks, more } => (chunks, more),
                other => {
                    return Err(MirrorError::Protocol(format!(
                        "node {}: held objects: unexpected reply {other:?}",
                        self.node_id
                    )))
                }
            };
            let mut last = None;
            for (_, c) in &chunks {
                if *c < from_chunk || last.is_some_and(|l| *c < l) || *c == engine::PRUNE_MARK_CHUNK
                {
                    return Err(MirrorError::Protocol(format!(
                        "node {}: held objects out of order",
                        self.node_id
                    )));
                }
                last = Some(*c);
            }
            out.extend(chunks);
            match (more, last) {
                (false, _) => return Ok(out),
                // Each further answer must start past this one's last chunk.
                (true, Some(l)) if l < u64::MAX => from_chunk = l + 1,
                _ => {
                    return Err(MirrorError::Protocol(format!(
                        "node {}: held objects: `more` without progress",
                        self.node_id
                    )))
                }
            }
        }
    }

    /// Every version of every block of chunk `chunk` of the copy the peer holds of `home`'s
    /// `vdisk` on its disk `disk`, fetched page by page and checked (see the module docs).
    pub async fn export_held(
        &self,
        disk: &str,
        home: u64,
        vdisk: u64,
        chunk: u64,
    ) -> Result<Vec<BlockVersions>> {
        let mut out = Vec::new();
        let mut from_block = 0u64;
        loop {
            let req = Req::HeldExport {
                disk: disk.to_string(),
                home,
                vdisk,
                chunk,
                from_block,
            };
            let (blocks, next_block) = match self
                .call(&req, self.cfg.bulk_timeout)
                .await
                .map_err(|e| call_err(self.node_id, e))?
            {
                Body::HeldPart { blocks, next_block } => (blocks, next_block),
                other => {
                    return Err(MirrorError::Protocol(format!(
                        "node {}: held export: unexpected reply {other:?}",
                        self.node_id
                    )))
                }
            };
            match accept_page(self.node_id, from_block, blocks, next_block, &mut out)? {
                Some(n) => from_block = n,
                None => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(gen: u64, byte: u8) -> VersionData {
        VersionData::new(gen, Some(blockdev::AlignedBuf::from_slice(&[byte; 4096])))
    }

    fn chunk(blocks: u64, versions: u64) -> Vec<BlockVersions> {
        (0..blocks)
            .map(|b| BlockVersions {
                block: b,
                versions: (1..=versions).map(|g| version(g, (b + g) as u8)).collect(),
            })
            .collect()
    }

    /// Pages a whole chunk the way the server does and gathers it the way the client does.
    fn roundtrip(v: Vec<BlockVersions>) -> (Vec<BlockVersions>, usize) {
        let mut out = Vec::new();
        let mut from = 0;
        let mut pages = 0;
        loop {
            let (blocks, next) = page(v.clone(), from);
            let bytes: usize = blocks
                .iter()
                .flat_map(|b| b.versions.iter())
                .map(|x| x.data.as_ref().map_or(0, |d| d.0.len()))
                .sum();
            assert!(bytes <= MAX_HELD_PART_BYTES || blocks.len() == 1);
            pages += 1;
            match accept_page(9, from, blocks, next, &mut out).unwrap() {
                Some(n) => from = n,
                None => return (out, pages),
            }
        }
    }

    #[test]
    fn a_large_history_comes_in_bounded_pages_and_whole() {
        // 256 blocks x 12 versions = 12 MiB: more than one page.
        let v = chunk(256, 12);
        let (got, pages) = roundtrip(v.clone());
        assert!(pages >= 2, "{pages} pages");
        assert_eq!(got.len(), v.len());
        for (a, b) in got.iter().zip(&v) {
            assert_eq!(a.block, b.block);
            assert_eq!(a.versions.len(), b.versions.len());
            for (x, y) in a.versions.iter().zip(&b.versions) {
                assert_eq!((x.gen, x.crc), (y.gen, y.crc));
                assert_eq!(x.data.as_deref(), y.data.as_deref());
            }
        }
        let (small, pages) = roundtrip(chunk(3, 1));
        assert_eq!((small.len(), pages), (3, 1));
    }

    #[test]
    fn bad_pages_are_refused() {
        let (mut blocks, _) = page(chunk(4, 2), 0);
        // A flipped byte no longer matches its checksum.
        if let Some(d) = blocks[1].versions[0].data.as_mut() {
            d.0[17] ^= 1;
        }
        let e = accept_page(9, 0, blocks, None, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");

        let (blocks, _) = page(chunk(4, 1), 0);
        let e = accept_page(9, 2, blocks.clone(), None, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("out of order"), "{e}");
        let e = accept_page(9, 0, blocks.clone(), Some(2), &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("does not move forward"), "{e}");
        let e = accept_page(9, 0, vec![], Some(0), &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("does not move forward"), "{e}");
        let mut reordered = blocks.clone();
        reordered.swap(0, 1);
        assert!(accept_page(9, 0, reordered, None, &mut Vec::new()).is_err());
        let mut past = blocks.clone();
        past[3].block = engine::CHUNK_BLOCKS;
        assert!(accept_page(9, 0, past, None, &mut Vec::new()).is_err());
        let mut gens = page(chunk(1, 3), 0).0;
        gens[0].versions.swap(0, 2);
        assert!(accept_page(9, 0, gens, None, &mut Vec::new()).is_err());
        let mut short = blocks;
        short[0].versions[0].data = Some(Bytes(vec![0; 100]));
        assert!(accept_page(9, 0, short, None, &mut Vec::new()).is_err());
    }
}
