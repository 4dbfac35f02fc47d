//! `cairn node`: run a node in the foreground on this host.
//!
//! Its log lines and start-up text go through bounded queues drained by writer threads
//! (`init::log::ConsoleOut`, the appliance consoles' writer), never straight to stdout/stderr:
//! a terminal or pipe that stops reading would otherwise block whichever async worker logged,
//! and with it the node (API, raft heartbeats). Over the bound new text is dropped and
//! counted; the count is said in the stream once it drains, and at exit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use init::log::ConsoleOut;

use crate::cli::NodeArgs;

/// The queued stdout and stderr of `cairn node`.
struct Outs {
    stdout: Arc<ConsoleOut>,
    stderr: Arc<ConsoleOut>,
}

static OUTS: OnceLock<Option<Outs>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

fn outs() -> Option<&'static Outs> {
    OUTS.get_or_init(|| {
        let stdout = ConsoleOut::start(std::io::stdout(), "stdout").ok()?;
        let stderr = ConsoleOut::start(std::io::stderr(), "stderr").ok()?;
        Some(Outs { stdout, stderr })
    })
    .as_ref()
}

/// Keeps each line of `text` in the system log the API serves (`init::log`'s ring).
fn keep(text: &str) {
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        init::log::record(line);
    }
}

/// Writes `text` to stdout without waiting for the reader (queued; counted when dropped).
fn say(text: &str) {
    keep(text);
    match outs() {
        Some(o) => {
            if !o.stdout.push(text) {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        None => print!("{text}"),
    }
}

/// A tracing writer onto the queued stderr.
struct QueuedStderr;

impl std::io::Write for QueuedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match outs() {
            Some(o) => {
                if !o.stderr.push(&String::from_utf8_lossy(buf)) {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => std::io::Write::write_all(&mut std::io::stderr(), buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Lets queued text out before the process ends (bounded: a reader that never comes back
/// does not keep the node from exiting).
fn drain() {
    if let Some(o) = outs() {
        let dropped = DROPPED.load(Ordering::Relaxed);
        if dropped > 0 {
            o.stderr.push(&format!(
                "cairn node: {dropped} log writes were dropped while the output was not read\n"
            ));
        }
        o.stdout.flush(Duration::from_secs(2));
        o.stderr.flush(Duration::from_secs(2));
    }
}

pub fn run(a: NodeArgs) -> i32 {
    init_queued_tracing();
    let mut cfg = node::NodeConfig::new(&a.data);
    cfg.disk_count = a.disks;
    cfg.disk_size_bytes = a.disk_size;
    cfg.node_name = a.name;
    cfg.nbd_bind_ip = a.nbd_bind;
    cfg.api_listen = if a.no_api { None } else { Some(a.api_listen) };
    cfg.cluster_listen = a.cluster_listen;
    cfg.system_log = Some(init::log::api_source());
    let result = node::run(cfg, |n| {
        let pool = n.engine().pool();
        say(&format!(
            "cairn node {} (id {:016x}) running: data {}, {} disks, {} usable\n",
            n.node_name(),
            n.node_id(),
            n.config().data_dir.display(),
            pool.disks,
            control::format_size(pool.usable_bytes),
        ));
        say(&format!(
            "CLI: cairn --data {} <command>   (socket {})\n",
            n.config().data_dir.display(),
            n.socket_path().display()
        ));
        say(&format!("Cluster address: {}\n", n.cluster_addr()));
        say("Ctrl-C stops the node.\n");
    });
    drain();
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cairn node: {e}");
            match e {
                node::NodeError::AlreadyRunning(_) => 4,
                node::NodeError::Config(_) => 2,
                _ => 1,
            }
        }
    }
}

/// Tracing to stderr through the queue (see the module docs), and to the system log the API
/// serves.
fn init_queued_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(|| QueuedStderr))
        .with(ring_layer())
        .try_init();
}

/// The system log's copy of the tracing output: the ring keeps each line's time in its own
/// field and shows no terminal colours, so neither is written into the text.
fn ring_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .without_time()
        .with_writer(init::log::LineWriter::ring_only)
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_log_has_each_line_without_colours_or_its_time() {
        use tracing_subscriber::layer::SubscriberExt;
        let seq = init::log::record("before");
        keep("one\n\ntwo\n");
        let subscriber = tracing_subscriber::registry().with(ring_layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(disk = "d1", "kept-line-check");
        });
        // (Other tests of this binary may log meanwhile: only ours.)
        let kept: Vec<String> = init::log::recent(seq, 1000)
            .into_iter()
            .map(|l| l.text)
            .filter(|t| t == "one" || t == "two" || t.contains("kept-line-check"))
            .collect();
        assert_eq!(kept.len(), 3, "{kept:?}");
        assert_eq!(kept[..2], ["one", "two"]);
        // No escape code, and the level first: no time before it.
        assert!(!kept[2].contains('\u{1b}'), "{:?}", kept[2]);
        assert!(kept[2].starts_with("WARN "), "{:?}", kept[2]);
        assert!(
            kept[2].ends_with("kept-line-check disk=\"d1\""),
            "{:?}",
            kept[2]
        );
    }
}
