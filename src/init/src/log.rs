//! The appliance log: every line goes to each active console and into an in-memory ring buffer
//! that the HTTPS API (or the console menu) reads with [`recent`]. Owns the console writers.
//! Must never block boot on a slow or absent console, and never grow without bound.
//!
//! Console output is queued: each console has its own writer thread ([`ConsoleOut`]), and
//! logging only appends to its queue. A write to a tty blocks once the UART's buffer is full,
//! which on a serial line nobody reads (QEMU's serial socket with no reader, a stuck terminal
//! server) is forever; the node's async workers log, so a direct write there stalled the whole
//! node (HTTPS API included) until someone read the serial port. A queue over its bound drops new
//! text (counted, and said on that console once it catches up); the ring keeps every line.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Lines kept in memory; older ones are dropped first.
pub const RING_LINES: usize = 2000;
/// Longest line kept (longer ones are cut, so one bad message cannot eat the ring).
pub const MAX_LINE_BYTES: usize = 1024;

/// One logged line (the API's type: the ring is what `GET /api/v1/system/log` serves).
pub use api::LogLine;

struct Ring {
    lines: VecDeque<LogLine>,
    next_seq: u64,
}

static RING: Mutex<Ring> = Mutex::new(Ring {
    lines: VecDeque::new(),
    next_seq: 1,
});
static CONSOLES: Mutex<Vec<Arc<ConsoleOut>>> = Mutex::new(Vec::new());

/// Text one console may have queued; beyond it new text is dropped until the console catches up.
pub const MAX_PENDING_BYTES: usize = 256 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Item {
    Text(String),
    /// This many writes were dropped here because the queue was full.
    Dropped(u64),
}

#[derive(Default)]
struct Pending {
    items: VecDeque<Item>,
    bytes: usize,
    /// The writer holds an item it has not finished writing.
    busy: bool,
    closed: bool,
}

/// One console's output queue and the thread that drains it (see the module docs).
pub struct ConsoleOut {
    pending: Mutex<Pending>,
    cv: Condvar,
}

impl std::fmt::Debug for ConsoleOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOut").finish_non_exhaustive()
    }
}

impl ConsoleOut {
    /// Starts the writer thread for `w`.
    pub fn start(w: impl Write + Send + 'static, name: &str) -> std::io::Result<Arc<ConsoleOut>> {
        let out = Arc::new(ConsoleOut {
            pending: Mutex::new(Pending::default()),
            cv: Condvar::new(),
        });
        let o = out.clone();
        std::thread::Builder::new()
            .name(format!("console-out-{name}"))
            .spawn(move || o.run(w))?;
        Ok(out)
    }

    /// Queues `text`; never waits for the console. False when it was dropped (queue full).
    pub fn push(&self, text: &str) -> bool {
        let mut p = lock(&self.pending);
        if p.closed {
            return false;
        }
        if p.bytes + text.len() > MAX_PENDING_BYTES {
            match p.items.back_mut() {
                Some(Item::Dropped(n)) => *n += 1,
                _ => p.items.push_back(Item::Dropped(1)),
            }
            self.cv.notify_all();
            return false;
        }
        p.bytes += text.len();
        p.items.push_back(Item::Text(text.to_string()));
        self.cv.notify_all();
        true
    }

    /// Waits until everything queued before the call is written, for at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut p = lock(&self.pending);
        while !p.items.is_empty() || p.busy {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            p = self
                .cv
                .wait_timeout(p, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Stops the writer once the queue is empty; later pushes are dropped.
    fn close(&self) {
        lock(&self.pending).closed = true;
        self.cv.notify_all();
    }

    fn run(&self, mut w: impl Write) {
        loop {
            let item = {
                let mut p = lock(&self.pending);
                loop {
                    if let Some(item) = p.items.pop_front() {
                        if let Item::Text(t) = &item {
                            p.bytes -= t.len();
                        }
                        p.busy = true;
                        break item;
                    }
                    if p.closed {
                        return;
                    }
                    p = self.cv.wait(p).unwrap_or_else(|e| e.into_inner());
                }
            };
            // Errors are ignored: there is nowhere else to report a console failure.
            let _ = match item {
                Item::Text(t) => w.write_all(t.as_bytes()),
                Item::Dropped(n) => w.write_all(
                    format!(
                        "\n[cairn: {n} console writes dropped: this console was not keeping up; the log (menu 2, or the API) has every line]\n"
                    )
                    .as_bytes(),
                ),
            };
            let _ = w.flush();
            lock(&self.pending).busy = false;
            self.cv.notify_all();
        }
    }
}

/// Sets the files console output goes to (replacing earlier ones), each with its own writer.
pub fn set_consoles(files: Vec<File>) {
    let mut outs = Vec::new();
    for (i, f) in files.into_iter().enumerate() {
        match ConsoleOut::start(f, &i.to_string()) {
            Ok(o) => outs.push(o),
            Err(e) => eprintln!("cairn: console writer {i}: {e}"),
        }
    }
    let old = std::mem::replace(&mut *lock(&CONSOLES), outs);
    for o in old {
        o.close();
    }
}

/// Writes raw text to every console without logging it (prompts, menus). Never waits for a
/// console (see the module docs); before any console is set up it goes to stderr.
pub fn console_write(text: &str) {
    let cons = lock(&CONSOLES);
    if cons.is_empty() {
        let _ = std::io::stderr().write_all(text.as_bytes());
        return;
    }
    for c in cons.iter() {
        c.push(text);
    }
}

/// From now on, what anything prints to stdout or stderr (a library's `println!`, a panic
/// message) is logged like any line: console writes through stdio would block on a stuck
/// serial line (stdio is /dev/console there). Call once the consoles are set up.
pub fn capture_stdio() {
    let r = match crate::sys::stdio_to_pipe() {
        Ok(r) => r,
        Err(e) => {
            log(&format!("stdout/stderr stay on the console: {e}"));
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("stdio-log".into())
        .spawn(move || {
            use std::io::{BufRead, Read};
            let mut r = std::io::BufReader::new(r);
            let mut line = Vec::new();
            loop {
                line.clear();
                // Bounded: a longer "line" comes out in pieces.
                match r
                    .by_ref()
                    .take(MAX_LINE_BYTES as u64)
                    .read_until(b'\n', &mut line)
                {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        let text = text.trim_end();
                        record(text);
                        // Never console_write's stderr fallback: that is this pipe.
                        for c in lock(&CONSOLES).iter() {
                            c.push(&format!("{text}\n"));
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log(&format!("stdout/stderr capture thread: {e}"));
    }
}

/// Waits (at most `timeout` in all) until every console has written what was queued: before a
/// reboot, so its last lines are seen.
pub fn flush_consoles(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let cons: Vec<Arc<ConsoleOut>> = lock(&CONSOLES).clone();
    for c in cons {
        c.flush(deadline.saturating_duration_since(Instant::now()));
    }
}

fn truncate(s: &str) -> &str {
    if s.len() <= MAX_LINE_BYTES {
        return s;
    }
    let mut end = MAX_LINE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Records one line in the ring (without printing it).
pub fn record(text: &str) -> u64 {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut ring = RING.lock().unwrap_or_else(|p| p.into_inner());
    let seq = ring.next_seq;
    ring.next_seq += 1;
    if ring.lines.len() == RING_LINES {
        ring.lines.pop_front();
    }
    ring.lines.push_back(LogLine {
        seq,
        unix_ms,
        text: truncate(text.trim_end()).to_string(),
    });
    seq
}

/// Logs one line: console and ring.
pub fn log(text: &str) {
    for line in text.lines() {
        record(line);
        console_write(&format!("cairn: {line}\n"));
    }
}

/// The newest `max` lines with a sequence number above `after_seq`, oldest first.
pub fn recent(after_seq: u64, max: usize) -> Vec<LogLine> {
    between(after_seq, u64::MAX, max).0
}

/// The newest `max` lines with `after_seq < seq < before_seq`, oldest first, and how many kept
/// lines are older than the first of them (than `before_seq` when there are none).
pub fn between(after_seq: u64, before_seq: u64, max: usize) -> (Vec<LogLine>, u64) {
    let read = read_ring(api::LogRange {
        after: after_seq,
        before: before_seq,
        max,
    });
    (read.lines, read.older)
}

fn read_ring(r: api::LogRange) -> api::LogRead {
    api::LogSource::read_slice(lock(&RING).lines.make_contiguous(), r)
}

/// The ring as the HTTPS API reads it (`GET /api/v1/system/log`).
pub fn api_source() -> api::LogSource {
    api::LogSource::new(read_ring)
}

/// `log!`-style formatting helper.
#[macro_export]
macro_rules! logln {
    ($($arg:tt)*) => { $crate::log::log(&format!($($arg)*)) };
}

/// A `std::io::Write` that sends whole lines to [`log`]: lets the node's tracing output reach
/// the console and the ring ([`LineWriter::ring_only`]: the ring alone, for a process whose
/// console gets its own copy).
#[derive(Debug, Default)]
pub struct LineWriter {
    buf: Vec<u8>,
    ring_only: bool,
}

impl LineWriter {
    /// A writer that keeps its lines in the ring without printing them.
    pub fn ring_only() -> Self {
        LineWriter {
            buf: Vec::new(),
            ring_only: true,
        }
    }

    fn line(&self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        if self.ring_only {
            // (tracing pads the level on the left: " INFO")
            record(text.trim());
        } else {
            log(text.trim_end());
        }
    }
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            self.line(&line);
        }
        if self.buf.len() > MAX_LINE_BYTES {
            let line = std::mem::take(&mut self.buf);
            self.line(&line);
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.line(&line);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by a test that fills the ring, and by one that reads its own line back from it.
    static RING_FLOOD: Mutex<()> = Mutex::new(());

    #[test]
    fn ring_keeps_order_bounds_and_cuts_long_lines() {
        let _flood = lock(&RING_FLOOD);
        let first = record("alpha");
        let long = "x".repeat(MAX_LINE_BYTES * 2);
        record(&long);
        let got = recent(first - 1, 10);
        assert!(got.len() >= 2);
        assert_eq!(got[0].text, "alpha");
        assert_eq!(got[1].text.len(), MAX_LINE_BYTES);
        for i in 0..RING_LINES + 5 {
            record(&format!("n{i}"));
        }
        let all = recent(0, usize::MAX);
        assert_eq!(all.len(), RING_LINES);
        assert_eq!(
            all.last().map(|l| l.text.as_str()),
            Some(format!("n{}", RING_LINES + 4).as_str())
        );
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(recent(0, 3).len(), 3);
    }

    #[test]
    fn the_ring_is_read_forward_and_back() {
        // Lines 11..=20 kept (1..=10 dropped).
        let ring: Vec<LogLine> = (11..=20)
            .map(|seq| LogLine {
                seq,
                unix_ms: seq,
                text: seq.to_string(),
            })
            .collect();
        let read_ring = |ring: &[LogLine], after, before, max| {
            let r = api::LogSource::read_slice(ring, api::LogRange { after, before, max });
            (r.lines, r.older)
        };
        let read = |after, before, max| {
            let (lines, older) = read_ring(&ring, after, before, max);
            (lines.iter().map(|l| l.seq).collect::<Vec<_>>(), older)
        };
        // (after, before, max) -> (seqs, older than the first of them)
        type Case = ((u64, u64, usize), (Vec<u64>, u64));
        let cases: [Case; 11] = [
            ((0, u64::MAX, 100), ((11..=20).collect(), 0)),
            ((0, u64::MAX, 3), (vec![18, 19, 20], 7)),
            ((15, u64::MAX, 100), ((16..=20).collect(), 5)),
            ((20, u64::MAX, 100), (vec![], 10)),
            ((u64::MAX, u64::MAX, 100), (vec![], 10)),
            ((0, 15, 2), (vec![13, 14], 2)),
            ((0, 15, 100), ((11..=14).collect(), 0)),
            ((0, 11, 100), (vec![], 0)),
            ((0, 3, 100), (vec![], 0)),
            ((0, 21, 1), (vec![20], 9)),
            ((0, 0, 100), (vec![], 0)),
        ];
        for (q, want) in cases {
            assert_eq!(read(q.0, q.1, q.2), want, "{q:?}");
        }
        assert_eq!(read_ring(&[], 0, u64::MAX, 5), (vec![], 0));
    }

    /// Reads `r` until `want` shows up (or fails after a bound).
    fn read_until(r: &mut std::os::unix::net::UnixStream, got: &mut Vec<u8>, want: &str) {
        use std::io::Read;
        r.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        while !String::from_utf8_lossy(got).contains(want) {
            let n = r.read(&mut buf).expect("console output stopped");
            assert!(n > 0, "console writer closed before {want:?}");
            got.extend_from_slice(&buf[..n]);
        }
    }

    /// The appliance's stall: a serial console nobody reads (QEMU's serial socket while the
    /// test talks HTTPS) filled up, and every thread that logged, the node's async workers
    /// included, blocked in write(2) until someone read it. Logging must return regardless.
    #[test]
    fn logging_never_waits_for_a_console_nobody_reads() {
        let (mut reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let out = ConsoleOut::start(writer, "test").unwrap();
        // 8 MiB: far beyond what the socket buffer and the queue hold together.
        let (tx, rx) = std::sync::mpsc::channel();
        let o = out.clone();
        std::thread::spawn(move || {
            let line = format!("{}\n", "x".repeat(1023));
            let accepted = (0..8192).filter(|_| o.push(&line)).count();
            let _ = tx.send(accepted);
        });
        let accepted = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("logging blocked on a console nobody reads");
        assert!(accepted > 0 && accepted < 8192, "accepted {accepted}");
        assert!(
            !out.flush(Duration::from_millis(50)),
            "nothing can be flushed yet"
        );
        // Once read, the console gets what was queued, then says how much it lost.
        let mut got = Vec::new();
        read_until(&mut reader, &mut got, "console writes dropped");
        assert!(out.push("tail\n"));
        read_until(&mut reader, &mut got, "tail\n");
        assert!(out.flush(Duration::from_secs(30)));
        let text = String::from_utf8_lossy(&got);
        // Every dropped write is counted in a note at the place it was lost.
        let dropped: usize = text
            .split("[cairn: ")
            .skip(1)
            .map(|s| {
                s.split(' ')
                    .next()
                    .and_then(|n| n.parse::<usize>().ok())
                    .expect("the note says how many")
            })
            .sum();
        assert_eq!(dropped, 8192 - accepted);
        assert_eq!(text.matches('x').count(), accepted * 1023);
        assert!(text.ends_with("tail\n"));
    }

    #[test]
    fn console_write_goes_through_the_queue() {
        // The global path: set_consoles + console_write + flush_consoles.
        let (mut reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let f = File::from(std::os::fd::OwnedFd::from(writer));
        set_consoles(vec![f]);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for i in 0..4096 {
                console_write(&format!("{i:01000}\n"));
            }
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("console_write blocked on a console nobody reads");
        let mut got = Vec::new();
        read_until(&mut reader, &mut got, "dropped");
        console_write("end\n");
        read_until(&mut reader, &mut got, "end\n");
        flush_consoles(Duration::from_secs(10));
        set_consoles(Vec::new());
    }
}
