//! Things the node does by itself, without a request (a takeover, adopting a virtual disk, an
//! HA restart of a VM, a moved VM dropped here): each is written to the node's audit log
//! (`DATA/audit.log`, as `user: system`) and queued for the HTTPS API, which adds it to its
//! event list and audit log (`Controller::take_node_events`).
//!
//! Bounded: at most [`MAX_QUEUED`] wait for the API (the oldest go first; the audit log file
//! has them all). Must never: block the caller or fail it (an event is a record, not a step).

use std::collections::VecDeque;
use std::io::Write;

use control::NodeEvent;

use crate::NodeInner;

/// Events kept for the API at most (a node without the API never takes them).
pub(crate) const MAX_QUEUED: usize = 1000;

#[derive(Default)]
pub(crate) struct NodeEvents {
    queue: parking_lot::Mutex<(u64, VecDeque<NodeEvent>)>,
}

impl NodeEvents {
    fn push(&self, mut e: NodeEvent) {
        let mut q = self.queue.lock();
        q.0 += 1;
        e.id = q.0;
        if q.1.len() >= MAX_QUEUED {
            q.1.pop_front();
        }
        q.1.push_back(e);
    }

    /// Everything queued since the last call, oldest first.
    pub(crate) fn take(&self) -> Vec<NodeEvent> {
        self.queue.lock().1.drain(..).collect()
    }
}

/// Records one thing the node did by itself: `action` (`vdisk_takeover`, `vm_ha_restart`, ...)
/// on `target`, with a sentence for people.
pub(crate) fn record(
    inner: &NodeInner,
    severity: &str,
    action: &str,
    target: &str,
    message: String,
) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let line = serde_json::json!({
        "ts_unix_ms": now.as_millis() as u64, "user": "system", "via": "internal",
        "action": action, "target": target, "ok": true, "message": message,
    });
    if let Some(f) = inner.audit_log.lock().as_mut() {
        let _ = writeln!(f, "{line}");
    }
    inner.events.push(NodeEvent {
        id: 0,
        time_unix: now.as_secs(),
        severity: severity.to_string(),
        action: action.to_string(),
        target: target.to_string(),
        message,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_queue_in_order_bounded_and_are_taken_once() {
        let q = NodeEvents::default();
        for i in 0..MAX_QUEUED + 5 {
            q.push(NodeEvent {
                target: format!("vm{i}"),
                ..Default::default()
            });
        }
        let got = q.take();
        assert_eq!(got.len(), MAX_QUEUED);
        assert_eq!(got[0].target, "vm5", "the oldest went first");
        assert_eq!(got[0].id, 6);
        assert!(got.windows(2).all(|w| w[0].id + 1 == w[1].id));
        assert!(q.take().is_empty(), "taken once");
    }
}
