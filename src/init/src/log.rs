//! The appliance log: every line goes to each active console and into an in-memory ring buffer
//! that the HTTPS API (or the console menu) reads with [`recent`]. Owns the console writers.
//! Must never block boot on a slow or absent console, and never grow without bound.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines kept in memory; older ones are dropped first.
pub const RING_LINES: usize = 2000;
/// Longest line kept (longer ones are cut, so one bad message cannot eat the ring).
pub const MAX_LINE_BYTES: usize = 1024;

/// One logged line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    /// Sequence number, increasing from 1 since boot: readers poll "everything after N".
    pub seq: u64,
    pub unix_ms: u64,
    pub text: String,
}

struct Ring {
    lines: VecDeque<LogLine>,
    next_seq: u64,
}

static RING: Mutex<Ring> = Mutex::new(Ring {
    lines: VecDeque::new(),
    next_seq: 1,
});
static CONSOLES: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// Sets the files console output goes to (replacing earlier ones).
pub fn set_consoles(files: Vec<File>) {
    *CONSOLES.lock().unwrap_or_else(|p| p.into_inner()) = files;
}

/// Writes raw text to every console without logging it (prompts, menus).
pub fn console_write(text: &str) {
    let mut cons = CONSOLES.lock().unwrap_or_else(|p| p.into_inner());
    if cons.is_empty() {
        let _ = std::io::stderr().write_all(text.as_bytes());
        return;
    }
    for c in cons.iter_mut() {
        let _ = c.write_all(text.as_bytes());
        let _ = c.flush();
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
    let ring = RING.lock().unwrap_or_else(|p| p.into_inner());
    let newer: Vec<&LogLine> = ring.lines.iter().filter(|l| l.seq > after_seq).collect();
    let skip = newer.len().saturating_sub(max);
    newer.into_iter().skip(skip).cloned().collect()
}

/// `log!`-style formatting helper.
#[macro_export]
macro_rules! logln {
    ($($arg:tt)*) => { $crate::log::log(&format!($($arg)*)) };
}

/// A `std::io::Write` that sends whole lines to [`log`]: lets the node's tracing output reach
/// the console and the ring.
#[derive(Debug, Default)]
pub struct LineWriter {
    buf: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            log(String::from_utf8_lossy(&line).trim_end());
        }
        if self.buf.len() > MAX_LINE_BYTES {
            let line = std::mem::take(&mut self.buf);
            log(&String::from_utf8_lossy(&line));
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            log(&String::from_utf8_lossy(&line));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_order_bounds_and_cuts_long_lines() {
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
}
