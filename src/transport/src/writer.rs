//! The one writer task of a connection (client and server side alike): frames queued by many
//! tasks go out in order, many per TLS write.
//!
//! Must never: reorder frames (a stream's chunks and its end follow their request), hold a
//! frame back waiting for frames that are not already on their way, or report a batch written
//! when the write failed (the connection is then closed and every call on it fails).
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Semaphore};

use crate::frame::Frame;
use crate::Error;

/// Stop adding frames to a batch past this many bytes (one `write_all` + flush).
const BATCH_BYTES: usize = 1024 * 1024;
/// Scheduler passes a writer waits for more frames before writing what it has.
const GATHER_ROUNDS: usize = 2;

/// Payload buffers handed back by the writer once their frame is in its batch, for the next
/// requests (client) or replies (server) to encode into (a request's few KiB cost malloc's slow
/// path each time: too big for its per-thread cache). Bounded in count and in the size of what
/// it keeps.
#[derive(Default)]
pub(crate) struct Spare(std::sync::Mutex<Vec<Vec<u8>>>);

/// Buffers kept at most, and the largest capacity kept.
const SPARE_COUNT: usize = 64;
const SPARE_MAX_BYTES: usize = 64 * 1024;

impl Spare {
    /// An empty buffer, reused when one is at hand.
    pub(crate) fn take(&self) -> Vec<u8> {
        lock(&self.0).pop().unwrap_or_default()
    }

    fn give(&self, mut v: Vec<u8>) {
        if v.capacity() == 0 || v.capacity() > SPARE_MAX_BYTES {
            return;
        }
        v.clear();
        let mut s = lock(&self.0);
        if s.len() < SPARE_COUNT {
            s.push(v);
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only pushes and pops under it: a panic elsewhere cannot leave it inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The connection's requests in flight: a semaphore each holds a permit of while it runs.
pub(crate) struct InFlight {
    pub(crate) sem: Arc<Semaphore>,
    pub(crate) max: usize,
}

impl InFlight {
    /// Whether requests other than one are running (so more frames may be on their way).
    fn others(&self) -> bool {
        self.max.saturating_sub(self.sem.available_permits()) > 1
    }
}

/// Writes queued frames, many per write: whatever is queued, and — before writing, while other
/// requests are in flight — whatever the tasks running beside this one queue next.
///
/// Why the yield: with many requests in flight, replies (or completions) arrive in bursts that
/// wake many tasks at once, and each queues one frame. Writing as soon as the first arrives
/// would cost one TLS record and one `writev` (and, on the peer, one wake-up and one read) per
/// frame. `yield_now` lets every task that is already runnable on this worker run first, so
/// the burst's frames go out together. With one request in flight there is nothing to wait
/// for and the frame is written at once (queue depth 1 latency unchanged). Nothing is held
/// back waiting for frames that are not already on their way.
pub(crate) async fn write_frames<W: tokio::io::AsyncWrite + Unpin>(
    mut wr: W,
    rx: &mut mpsc::Receiver<Frame>,
    max_frame_bytes: u32,
    inflight: InFlight,
    spare: Option<&Spare>,
) -> Result<(), Error> {
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        buf.clear();
        add(&mut buf, first, max_frame_bytes, spare)?;
        drain_into(&mut buf, rx, max_frame_bytes, spare)?;
        // Gather while the burst keeps coming: each round must add frames, and a few rounds at
        // most, so a steady stream still goes out in pieces instead of waiting for a full batch.
        for _ in 0..GATHER_ROUNDS {
            if buf.len() >= BATCH_BYTES || !inflight.others() {
                break;
            }
            tokio::task::yield_now().await;
            let before = buf.len();
            drain_into(&mut buf, rx, max_frame_bytes, spare)?;
            if buf.len() == before {
                break;
            }
        }
        wr.write_all(&buf).await?;
        wr.flush().await?;
        if buf.capacity() > 4 * BATCH_BYTES {
            // One huge frame (a chunk export) must not pin its buffer for the connection's life.
            buf = Vec::with_capacity(64 * 1024);
        }
    }
    let _ = wr.shutdown().await;
    Ok(())
}

/// Appends every frame already queued to `buf`, up to about [`BATCH_BYTES`].
fn drain_into(
    buf: &mut Vec<u8>,
    rx: &mut mpsc::Receiver<Frame>,
    max_frame_bytes: u32,
    spare: Option<&Spare>,
) -> Result<(), Error> {
    while buf.len() < BATCH_BYTES {
        match rx.try_recv() {
            Ok(f) => add(buf, f, max_frame_bytes, spare)?,
            Err(_) => break,
        }
    }
    Ok(())
}

/// Appends `f` to `buf`; its payload buffer goes to `spare` when there is one.
fn add(
    buf: &mut Vec<u8>,
    f: Frame,
    max_frame_bytes: u32,
    spare: Option<&Spare>,
) -> Result<(), Error> {
    f.encode_into(buf, max_frame_bytes)?;
    if let Some(s) = spare {
        s.give(f.payload);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameKind;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll};

    /// Records every write; fails once `fail_after` bytes were taken.
    #[derive(Clone, Default)]
    struct Recorder {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        fail_after: Option<usize>,
    }

    impl Recorder {
        fn bytes(&self) -> Vec<u8> {
            self.writes.lock().unwrap().concat()
        }
        fn count(&self) -> usize {
            self.writes.lock().unwrap().len()
        }
    }

    impl tokio::io::AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let mut w = self.writes.lock().unwrap();
            let so_far: usize = w.iter().map(Vec::len).sum();
            let n = match self.fail_after {
                Some(limit) if so_far >= limit => {
                    return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
                }
                Some(limit) => buf.len().min(limit - so_far),
                None => buf.len(),
            };
            w.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A request, a streamed request with its chunks and end, and plain requests between.
    fn frames() -> Vec<Frame> {
        let mut v = Vec::new();
        for i in 0..40u64 {
            let kind = match i % 5 {
                0 => FrameKind::StreamRequest,
                1 | 2 => FrameKind::Chunk,
                3 => FrameKind::End,
                _ => FrameKind::Request,
            };
            v.push(Frame::new(
                kind,
                i / 5,
                vec![i as u8; (i as usize * 97) % 5000],
            ));
        }
        v
    }

    /// `n` requests in flight on a connection allowing 64.
    fn busy(n: u32) -> InFlight {
        let sem = Arc::new(Semaphore::new(64));
        sem.try_acquire_many(n).unwrap().forget();
        InFlight { sem, max: 64 }
    }

    fn decode_all(mut b: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some((f, used)) = Frame::decode(b, 1 << 20).unwrap() {
            out.push(f);
            b = &b[used..];
        }
        assert!(b.is_empty(), "a partial frame was written");
        out
    }

    #[tokio::test(flavor = "current_thread")]
    async fn queued_frames_go_out_in_order_in_one_write() {
        let (tx, mut rx) = mpsc::channel(128);
        for f in frames() {
            tx.send(f).await.unwrap();
        }
        drop(tx);
        let rec = Recorder::default();
        write_frames(rec.clone(), &mut rx, 1 << 20, busy(1), None)
            .await
            .unwrap();
        assert_eq!(decode_all(&rec.bytes()), frames());
        assert_eq!(rec.count(), 1, "40 queued frames, one write");
    }

    /// Frames sent by tasks that become runnable only after the writer was woken join the
    /// writer's batch while requests are in flight (the writer lets them run before it
    /// writes); alone, the first frame goes out at once. Returns the writes made.
    async fn burst(inflight: InFlight) -> usize {
        let (tx, mut rx) = mpsc::channel(128);
        let rec = Recorder::default();
        let writer = tokio::spawn({
            let rec = rec.clone();
            async move { write_frames(rec, &mut rx, 1 << 20, inflight, None).await }
        });
        tokio::task::yield_now().await; // the writer now waits for its first frame
        let all = frames();
        let (go, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut tasks = Vec::new();
        for f in all.iter().skip(1).cloned() {
            let (tx, mut go) = (tx.clone(), go.subscribe());
            tasks.push(tokio::spawn(async move {
                go.recv().await.unwrap();
                tx.send(f).await.unwrap();
            }));
        }
        tokio::task::yield_now().await; // every sender now waits for the signal
                                        // First frame: wakes the writer. Then the others are released, behind the writer in
                                        // the run queue.
        tx.send(all[0].clone()).await.unwrap();
        go.send(()).unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        drop(tx);
        writer.await.unwrap().unwrap();
        let got = decode_all(&rec.bytes());
        assert_eq!(got.len(), all.len());
        assert_eq!(got[0], all[0], "the first frame leads");
        let mut rest: Vec<_> = got[1..]
            .iter()
            .map(|f| (f.id, f.kind as u8, f.payload.clone()))
            .collect();
        let mut want: Vec<_> = all[1..]
            .iter()
            .map(|f| (f.id, f.kind as u8, f.payload.clone()))
            .collect();
        rest.sort();
        want.sort();
        assert_eq!(rest, want);
        rec.count()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_burst_of_senders_shares_one_write() {
        assert_eq!(burst(busy(32)).await, 1, "one write for the whole burst");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_lone_request_is_written_without_waiting() {
        assert_eq!(
            burst(busy(1)).await,
            2,
            "the first frame alone, then the rest"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn written_payloads_come_back_empty_and_bounded() {
        // Every frame's payload is handed back once its bytes are in the batch; only buffers
        // of a reusable size are kept, at most SPARE_COUNT of them.
        let (tx, mut rx) = mpsc::channel(256);
        for i in 0..(SPARE_COUNT as u64 + 10) {
            tx.send(Frame::new(FrameKind::Request, i, vec![7; 4096]))
                .await
                .unwrap();
        }
        tx.send(Frame::new(
            FrameKind::Request,
            999,
            vec![1; SPARE_MAX_BYTES + 1],
        ))
        .await
        .unwrap();
        drop(tx);
        let spare = Spare::default();
        let rec = Recorder::default();
        write_frames(rec.clone(), &mut rx, 1 << 20, busy(1), Some(&spare))
            .await
            .unwrap();
        assert_eq!(decode_all(&rec.bytes()).len(), SPARE_COUNT + 11);
        let kept = std::mem::take(&mut *lock(&spare.0));
        assert_eq!(kept.len(), SPARE_COUNT);
        assert!(kept.iter().all(|v| v.is_empty() && v.capacity() == 4096));
        assert!(spare.take().is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_failing_mid_batch_is_an_error() {
        let (tx, mut rx) = mpsc::channel(128);
        for f in frames() {
            tx.send(f).await.unwrap();
        }
        let rec = Recorder {
            fail_after: Some(10_000),
            ..Recorder::default()
        };
        let r = write_frames(rec.clone(), &mut rx, 1 << 20, busy(8), None).await;
        assert!(matches!(r, Err(Error::Io(_))), "{r:?}");
        assert_eq!(rec.bytes().len(), 10_000);
    }
}
