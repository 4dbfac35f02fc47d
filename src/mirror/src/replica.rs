//! `RemoteReplica`'s implementation of the engine's `Replica` trait: each operation becomes
//! one request (mutations through `mutate`, which degrades to dirty tracking while the peer is
//! away; reads through `query`, which fails fast). See `client` for the failure model.

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{AlignedBuf, BoxFuture, WriteBuf};
use engine::{Reachability, Replica, PRUNE_MARK_CHUNK};
use store::{BlockVersions, ObjectId, ScrubReport, Space, StoreError, VersionRecord};

use crate::client::{wire_to_store, CallErr, Outgoing, RemoteReplica};
use crate::server::{from_wire, to_wire};
use crate::wire::*;

type R<T> = std::result::Result<T, StoreError>;

impl Replica for RemoteReplica {
    fn write_with_crcs(
        &self,
        obj: ObjectId,
        block: u64,
        data: WriteBuf,
        crcs: Arc<[u32]>,
        gen: u64,
        pin: u64,
    ) -> BoxFuture<'_, R<()>> {
        Box::pin(async move {
            // Encoded straight from the caller's buffer: the hot path's one copy of the data
            // before TLS is the transport's batch buffer.
            let req = WriteRef {
                disk: &self.disk.id,
                fence: self.fence(obj.vdisk),
                obj,
                block,
                data: data.as_slice(),
                crcs: &crcs,
                gen,
                pin,
            };
            let payload = self.link.encode(&req)?;
            let out = Outgoing {
                payload,
                session: req.fence.session,
                timeout: self.link.cfg.call_timeout,
            };
            self.mutate_encoded(&[obj], &[obj], out).await
        })
    }

    fn read(
        &self,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        at_gen: u64,
    ) -> BoxFuture<'_, R<AlignedBuf>> {
        Box::pin(async move {
            let req = Req::Read {
                disk: self.disk.id.clone(),
                obj,
                block,
                nblocks,
                at_gen,
            };
            match self
                .query(Some(obj), req, self.link.cfg.call_timeout)
                .await?
            {
                Body::Data(d) if d.0.len() == nblocks as usize * 4096 => {
                    Ok(AlignedBuf::from_slice(&d.0))
                }
                other => Err(self.bad_reply("read", other)),
            }
        })
    }

    fn discard(
        &self,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        gen: u64,
        pin: u64,
    ) -> BoxFuture<'_, R<()>> {
        Box::pin(async move {
            let req = Req::Discard {
                disk: self.disk.id.clone(),
                fence: self.fence(obj.vdisk),
                obj,
                block,
                nblocks,
                gen,
                pin,
            };
            self.mutate(&[obj], &[obj], req).await
        })
    }

    fn flush(&self) -> BoxFuture<'_, R<()>> {
        Box::pin(async move {
            let upto = {
                let st = self.st.lock();
                if st.mode == Reachability::Away {
                    return Ok(());
                }
                st.seq
            };
            let r = self
                .link
                .call(
                    &Req::Flush {
                        disk: self.disk.id.clone(),
                    },
                    self.link.cfg.call_timeout,
                )
                .await;
            let mut st = self.st.lock();
            self.note_restart(&mut st);
            match r {
                Ok(_) => {
                    st.unflushed.retain(|_, s| *s > upto);
                    Ok(())
                }
                Err(CallErr::Net(_) | CallErr::Refused(_)) => {
                    self.went_away(&mut st);
                    Ok(())
                }
                Err(CallErr::Wire(w)) => Err(wire_to_store(self.link.node_id, w)),
            }
        })
    }

    fn clone_object(
        &self,
        src: ObjectId,
        at_gen: u64,
        dst: ObjectId,
        dst_gen: u64,
    ) -> BoxFuture<'_, R<()>> {
        Box::pin(async move {
            let req = Req::Clone {
                disk: self.disk.id.clone(),
                fence: self.fence(dst.vdisk),
                src,
                at_gen,
                dst,
                dst_gen,
            };
            self.mutate(&[src, dst], &[dst], req).await
        })
    }

    fn rollback_object(
        &self,
        obj: ObjectId,
        snap_gen: u64,
        gen: u64,
        pin: u64,
    ) -> BoxFuture<'_, R<()>> {
        Box::pin(async move {
            let req = Req::Rollback {
                disk: self.disk.id.clone(),
                fence: self.fence(obj.vdisk),
                obj,
                snap_gen,
                gen,
                pin,
            };
            self.mutate(&[obj], &[obj], req).await
        })
    }

    fn delete_object(&self, obj: ObjectId) -> BoxFuture<'_, R<()>> {
        Box::pin(async move {
            let req = Req::Delete {
                disk: self.disk.id.clone(),
                fence: self.fence(obj.vdisk),
                obj,
            };
            self.mutate(&[obj], &[obj], req).await
        })
    }

    fn prune(&self, vdisk: u64, snap_gens: Vec<u64>) -> BoxFuture<'_, R<()>> {
        Box::pin(async move {
            let mark = ObjectId {
                vdisk,
                chunk: PRUNE_MARK_CHUNK,
            };
            let req = Req::Prune {
                disk: self.disk.id.clone(),
                fence: self.fence(vdisk),
                snap_gens,
            };
            self.mutate(&[mark], &[mark], req).await?;
            // A prune is durable with the next flush like any change; nothing to track.
            self.st.lock().unflushed.remove(&mark);
            Ok(())
        })
    }

    fn export_object(&self, obj: ObjectId) -> BoxFuture<'_, R<Vec<BlockVersions>>> {
        Box::pin(async move {
            let req = Req::Export {
                disk: self.disk.id.clone(),
                obj,
            };
            match self
                .query(Some(obj), req, self.link.cfg.bulk_timeout)
                .await?
            {
                Body::Versions(v) => {
                    if v.iter().any(|b| {
                        b.versions
                            .iter()
                            .any(|x| x.data.as_ref().is_some_and(|d| d.0.len() != 4096))
                    }) {
                        return Err(StoreError::InvalidArgument(format!(
                            "node {}: export with a version that is not one block",
                            self.link.node_id
                        )));
                    }
                    Ok(from_wire(v))
                }
                other => Err(self.bad_reply("export", other)),
            }
        })
    }

    fn import_object(&self, obj: ObjectId, versions: Vec<BlockVersions>) -> BoxFuture<'_, R<()>> {
        Box::pin(async move {
            let req = Req::Import {
                disk: self.disk.id.clone(),
                fence: self.fence(obj.vdisk),
                obj,
                versions: to_wire(versions),
            };
            self.mutate(&[obj], &[obj], req).await
        })
    }

    fn repair(&self, obj: ObjectId, block: u64, gen: u64, good: WriteBuf) -> BoxFuture<'_, R<()>> {
        Box::pin(async move {
            let req = Req::Repair {
                disk: self.disk.id.clone(),
                fence: self.fence(obj.vdisk),
                obj,
                block,
                gen,
                data: Bytes(good.as_slice().to_vec()),
            };
            self.mutate(&[obj], &[obj], req).await
        })
    }

    fn scrub(&self) -> BoxFuture<'_, R<ScrubReport>> {
        Box::pin(async move {
            let req = Req::Scrub {
                disk: self.disk.id.clone(),
            };
            // Unreachable is not a disk failure: report it as a refused request.
            match self.query(None, req, Duration::from_secs(3600)).await {
                Ok(Body::Scrub {
                    checked_blocks,
                    corrupt,
                }) => Ok(ScrubReport {
                    checked_blocks,
                    corrupt,
                }),
                Ok(other) => Err(self.bad_reply("scrub", other)),
                Err(e) if matches!(e.kind(), store::ErrorKind::Io) => {
                    Err(StoreError::InvalidArgument(format!(
                        "scrub of node {} skipped: {e}",
                        self.link.node_id
                    )))
                }
                Err(e) => Err(e),
            }
        })
    }

    fn version_records(&self, obj: ObjectId) -> BoxFuture<'_, R<Option<Vec<VersionRecord>>>> {
        Box::pin(async move {
            let req = Req::VersionRecords {
                disk: self.disk.id.clone(),
                obj,
            };
            // Metadata only (no data crosses): bounded like any other call. Whatever keeps an
            // answer from coming (the peer away or restarting, a peer too old to know the
            // request) leaves the chunk uncompared, never a failed disk: listing reads no
            // device.
            match self.query(Some(obj), req, self.link.cfg.call_timeout).await {
                Ok(Body::Records(r)) => Ok(Some(
                    r.into_iter()
                        .map(|(block, gen, crc)| VersionRecord { block, gen, crc })
                        .collect(),
                )),
                Ok(other) => {
                    tracing::warn!(node = self.link.node_id, %obj, reply = ?other, "scrub: a peer answered a version listing with something else");
                    Ok(None)
                }
                // Per chunk, so not a warning: against an older peer every chunk of every scrub
                // lands here; scrub counts them (`replicas_not_compared`).
                Err(e) => {
                    tracing::debug!(node = self.link.node_id, %obj, error = %e, "scrub: a peer did not list a chunk's versions; not compared");
                    Ok(None)
                }
            }
        })
    }

    fn put_meta(&self, _blob: Vec<u8>) -> BoxFuture<'_, R<()>> {
        // The peer's metadata slot belongs to the peer's own engine; this node's pool metadata
        // lives on its own disks (and the cluster's in raft).
        Box::pin(async { Ok(()) })
    }

    fn close(&self) -> BoxFuture<'_, R<()>> {
        // The peer's store is the peer's to close.
        Box::pin(async { Ok(()) })
    }

    fn objects(&self) -> Vec<ObjectId> {
        self.objects.clone()
    }

    fn changed_blocks(&self, obj: ObjectId, from_gen: u64, to_gen: u64) -> Vec<u64> {
        let all = || (0..engine::CHUNK_BLOCKS).collect();
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi {
            return all(); // conservative, as the contract allows
        }
        let req = Req::Changed {
            disk: self.disk.id.clone(),
            obj,
            from_gen,
            to_gen,
        };
        let r = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(self.query(
                Some(obj),
                req,
                self.link.cfg.call_timeout,
            ))
        });
        match r {
            Ok(Body::Blocks(b)) => b
                .into_iter()
                .filter(|b| *b < engine::CHUNK_BLOCKS)
                .collect(),
            _ => all(),
        }
    }

    fn space(&self) -> Space {
        *self.space.lock()
    }

    fn reachability(&self) -> Reachability {
        self.st.lock().mode
    }

    fn away_since(&self) -> Option<Instant> {
        let st = self.st.lock();
        (st.mode == Reachability::Away)
            .then_some(st.since)
            .flatten()
    }

    fn dirty_objects(&self) -> Vec<ObjectId> {
        let mut v: Vec<ObjectId> = self.st.lock().dirty.iter().copied().collect();
        v.sort();
        v
    }

    fn mark_clean(&self, obj: ObjectId) {
        self.st.lock().dirty.remove(&obj);
    }

    fn mark_dirty(&self, obj: ObjectId) {
        let mut st = self.st.lock();
        st.dirty.insert(obj);
        if st.mode == Reachability::Up {
            st.mode = Reachability::Back;
        }
    }

    fn resync_done(&self) {
        let mut st = self.st.lock();
        if st.mode == Reachability::Back && st.dirty.is_empty() {
            st.mode = Reachability::Up;
            st.since = None;
        }
    }
}
