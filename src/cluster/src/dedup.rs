//! Exactly-once proposals: the results of the most recent request-tagged commands
//! ([`crate::Command::Once`]), so a proposal retried after an unknown outcome (a forward that
//! timed out, a leader that lost its quorum) is applied at most once and answers with the first
//! application's result.
//!
//! Part of the replicated state (it travels in snapshots) and updated only by `apply`, in log
//! order, so every replica dedups alike. Bounded: the oldest ids are forgotten first, so a
//! duplicate must commit within [`MAX_REMEMBERED`] other tagged commands of the first copy (the
//! proposer gives up retrying after a few seconds). Must never: read a clock or randomness.
use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::state::CommandResult;

/// How many request ids are remembered.
pub const MAX_REMEMBERED: usize = 8192;
/// Longest request id accepted (the proposer uses 32 hex digits).
pub const MAX_REQUEST_ID_BYTES: usize = 64;

/// Recent request ids and their results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLog {
    results: BTreeMap<String, CommandResult>,
    /// Ids in apply order (the oldest first), for eviction.
    order: VecDeque<String>,
}

impl RequestLog {
    pub fn get(&self, id: &str) -> Option<&CommandResult> {
        self.results.get(id)
    }

    pub fn len(&self) -> usize {
        self.results.len()
    }

    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// Records the result of the first application of `id`.
    pub fn insert(&mut self, id: &str, r: CommandResult) {
        if let std::collections::btree_map::Entry::Vacant(v) = self.results.entry(id.to_string()) {
            v.insert(r);
            self.order.push_back(id.to_string());
        }
        while self.order.len() > MAX_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.results.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_first_result_and_forgets_the_oldest() {
        let mut l = RequestLog::default();
        l.insert("a", CommandResult::Ok);
        l.insert("a", CommandResult::Rejected("x".into()));
        assert_eq!(l.get("a"), Some(&CommandResult::Ok));
        for i in 0..MAX_REMEMBERED {
            l.insert(&format!("r{i}"), CommandResult::Ok);
        }
        assert_eq!(l.len(), MAX_REMEMBERED);
        assert_eq!(l.get("a"), None, "the oldest id was evicted");
        assert!(l.get("r0").is_some());
    }
}
