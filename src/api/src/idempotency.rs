//! `Idempotency-Key` on mutations: the same key from the same user with the same request returns
//! the stored response instead of acting twice; the same key with a different request is refused.
//! Entries live 24 h; at most `MAX_ENTRIES` are kept (oldest evicted). In memory only.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub const TTL: Duration = Duration::from_secs(24 * 3600);
pub const MAX_ENTRIES: usize = 10_000;
pub const MAX_KEY_LEN: usize = 128;

#[derive(Debug, Clone)]
pub struct Stored {
    pub fingerprint: String,
    pub status: u16,
    pub body: bytes::Bytes,
}

/// (user, key) -> (first seen, stored answer; None while the first request runs).
type Entries = HashMap<(String, String), (Instant, Option<Stored>)>;

#[derive(Debug, Default)]
pub struct IdempotencyCache {
    map: Mutex<Entries>,
}

pub enum Lookup {
    /// Not seen: the caller runs the request and then calls `finish` (or `abandon`).
    Fresh,
    Replay(Stored),
    /// Same key, different request.
    Mismatch,
    /// Same key, the first request is still running.
    InFlight,
}

impl IdempotencyCache {
    pub fn begin(&self, user: &str, key: &str, fingerprint: &str) -> Lookup {
        let mut m = self.map.lock();
        let now = Instant::now();
        if m.len() >= MAX_ENTRIES {
            m.retain(|_, (t, _)| now.duration_since(*t) < TTL);
            while m.len() >= MAX_ENTRIES {
                let Some(k) = m
                    .iter()
                    .min_by_key(|(_, (t, _))| *t)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                m.remove(&k);
            }
        }
        let k = (user.to_string(), key.to_string());
        match m.get(&k) {
            Some((t, _)) if now.duration_since(*t) >= TTL => {}
            Some((_, None)) => return Lookup::InFlight,
            Some((_, Some(s))) if s.fingerprint == fingerprint => return Lookup::Replay(s.clone()),
            Some((_, Some(_))) => return Lookup::Mismatch,
            None => {}
        }
        m.insert(k, (now, None));
        Lookup::Fresh
    }

    pub fn finish(&self, user: &str, key: &str, stored: Stored) {
        let mut m = self.map.lock();
        if let Some(e) = m.get_mut(&(user.to_string(), key.to_string())) {
            e.1 = Some(stored);
        }
    }

    pub fn abandon(&self, user: &str, key: &str) {
        self.map.lock().remove(&(user.to_string(), key.to_string()));
    }
}
