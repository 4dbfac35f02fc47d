//! Browser sessions and the failed-login limiter. Both live in memory only: a restart logs
//! everyone out, which is the safe direction. Bounded: old sessions and limiter entries are
//! evicted first.

use crate::files::{ct_eq, random_hex, sha256_hex};
use control::Role;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub const SESSION_COOKIE: &str = "cairn_session";
pub const CSRF_COOKIE: &str = "cairn_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
pub const MAX_SESSIONS: usize = 4096;

#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    pub csrf: String,
    last_seen: Instant,
}

/// Sessions keyed by SHA-256 of the cookie value (a leaked map dump does not leak cookies).
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Start a session; returns (cookie value, csrf token).
    pub fn create(&self, user: &str, role: Role) -> (String, String) {
        let cookie = random_hex(32);
        let csrf = random_hex(16);
        let mut m = self.map.lock();
        let now = Instant::now();
        m.retain(|_, s| now.duration_since(s.last_seen) < SESSION_IDLE);
        if m.len() >= MAX_SESSIONS {
            if let Some(oldest) = m
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
            {
                m.remove(&oldest);
            }
        }
        m.insert(
            sha256_hex(cookie.as_bytes()),
            Session {
                user: user.into(),
                role,
                csrf: csrf.clone(),
                last_seen: now,
            },
        );
        (cookie, csrf)
    }

    /// Look a cookie up, refreshing its idle timer.
    pub fn get(&self, cookie: &str) -> Option<Session> {
        let key = sha256_hex(cookie.as_bytes());
        let mut m = self.map.lock();
        let s = m.get_mut(&key)?;
        if s.last_seen.elapsed() >= SESSION_IDLE {
            m.remove(&key);
            return None;
        }
        s.last_seen = Instant::now();
        Some(s.clone())
    }

    pub fn remove(&self, cookie: &str) {
        self.map.lock().remove(&sha256_hex(cookie.as_bytes()));
    }

    /// Drop every session of a user (deleted, role changed, password changed).
    pub fn remove_user(&self, user: &str) {
        self.map.lock().retain(|_, s| s.user != user);
    }
}

/// Double-submit check: header, cookie and session must carry the same token.
pub fn csrf_ok(expected: &str, header: Option<&str>, cookie: Option<&str>) -> bool {
    match (header, cookie) {
        (Some(h), Some(c)) => {
            ct_eq(h.as_bytes(), c.as_bytes()) && ct_eq(h.as_bytes(), expected.as_bytes())
        }
        _ => false,
    }
}

/// Failed logins allowed per source address per window before answering 429.
pub const MAX_FAILURES: u32 = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Default)]
pub struct LoginLimiter {
    map: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl LoginLimiter {
    /// `Err(retry_after_secs)` if `ip` is locked out now.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let m = self.map.lock();
        match m.get(&ip) {
            Some((n, start)) if *n >= MAX_FAILURES && start.elapsed() < FAILURE_WINDOW => {
                Err((FAILURE_WINDOW - start.elapsed()).as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    pub fn failed(&self, ip: IpAddr) {
        let mut m = self.map.lock();
        if m.len() >= MAX_TRACKED && !m.contains_key(&ip) {
            m.retain(|_, (_, s)| s.elapsed() < FAILURE_WINDOW);
            if m.len() >= MAX_TRACKED {
                if let Some(k) = m.iter().min_by_key(|(_, (_, s))| *s).map(|(k, _)| *k) {
                    m.remove(&k);
                }
            }
        }
        let e = m.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.map.lock().remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_locks_out_after_failures_per_source() {
        let l = LoginLimiter::default();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(l.check(a).is_ok());
            l.failed(a);
        }
        let retry = l.check(a).unwrap_err();
        assert!((1..=60).contains(&retry));
        assert!(l.check(b).is_ok());
    }

    #[test]
    fn sessions_and_csrf() {
        let s = Sessions::default();
        let (cookie, csrf) = s.create("alice", Role::Operator);
        let sess = s.get(&cookie).unwrap();
        assert_eq!(sess.user, "alice");
        assert!(csrf_ok(&sess.csrf, Some(&csrf), Some(&csrf)));
        assert!(!csrf_ok(&sess.csrf, Some("x"), Some("x")));
        assert!(!csrf_ok(&sess.csrf, None, Some(&csrf)));
        s.remove_user("alice");
        assert!(s.get(&cookie).is_none());
    }
}
