//! The `cairn.*` options of the kernel command line. Owns their parsing and defaults; must never
//! fail on unknown or malformed words (a typo on the boot line cannot stop the node).
//!
//! - `cairn.on_fatal=reboot|halt` — what PID 1 does after a fatal error (default reboot).
//! - `cairn.fail_node=1` — test hook: the node service fails at once (proves PID 1 recovers).
//! - `cairn.wizard=0` — skip the first-boot wizard (the node waits, configured by nothing).
//! - `cairn.watchdog_timeout=S` — the hardware watchdog's timeout in seconds (10..=600, default
//!   30): how long a hung node stays hung before the watchdog resets it.
//! - `cairn.watchdog_starve_after=S` — test hook: PID 1 stops kicking the watchdog after S
//!   seconds (1..=86400), which proves the hardware watchdog really resets a hung node.

/// What to do after a fatal error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFatal {
    Reboot,
    Halt,
}

/// Parsed `cairn.*` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    pub on_fatal: OnFatal,
    pub fail_node: bool,
    pub wizard: bool,
    pub watchdog_timeout: Option<i32>,
    pub watchdog_starve_after: Option<u64>,
}

impl Default for Cmdline {
    fn default() -> Self {
        Cmdline {
            on_fatal: OnFatal::Reboot,
            fail_node: false,
            wizard: true,
            watchdog_timeout: None,
            watchdog_starve_after: None,
        }
    }
}

impl Cmdline {
    pub fn parse(line: &str) -> Cmdline {
        let mut c = Cmdline::default();
        for word in line.split_ascii_whitespace() {
            let (k, v) = word.split_once('=').unwrap_or((word, ""));
            match (k, v) {
                ("cairn.on_fatal", "halt") => c.on_fatal = OnFatal::Halt,
                ("cairn.on_fatal", "reboot") => c.on_fatal = OnFatal::Reboot,
                ("cairn.fail_node", "1" | "") => c.fail_node = true,
                ("cairn.wizard", "0") => c.wizard = false,
                ("cairn.watchdog_timeout", s) => {
                    c.watchdog_timeout = s.parse().ok().filter(|s| (10..=600).contains(s));
                }
                ("cairn.watchdog_starve_after", s) => {
                    c.watchdog_starve_after = s.parse().ok().filter(|s| (1..=86_400).contains(s));
                }
                _ => {}
            }
        }
        c
    }

    /// Reads /proc/cmdline (defaults when it cannot be read).
    pub fn read() -> Cmdline {
        std::fs::read_to_string("/proc/cmdline")
            .map(|s| Cmdline::parse(&s))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_words_and_ignores_the_rest() {
        let c = Cmdline::parse("console=ttyS0 cairn.on_fatal=halt cairn.fail_node=1 junk=");
        assert_eq!(c.on_fatal, OnFatal::Halt);
        assert!(c.fail_node);
        assert!(c.wizard);
        assert_eq!(c.watchdog_starve_after, None);
        assert_eq!(c.watchdog_timeout, None);
        let w = Cmdline::parse("cairn.watchdog_starve_after=75 cairn.watchdog_timeout=15");
        assert_eq!(w.watchdog_starve_after, Some(75));
        assert_eq!(w.watchdog_timeout, Some(15));
        for bad in ["9", "601", "-1", "x", ""] {
            let w = Cmdline::parse(&format!("cairn.watchdog_timeout={bad}"));
            assert_eq!(w.watchdog_timeout, None, "{bad}");
        }
        for bad in ["0", "x", "86401", ""] {
            let w = Cmdline::parse(&format!("cairn.watchdog_starve_after={bad}"));
            assert_eq!(w.watchdog_starve_after, None, "{bad}");
        }
        let d = Cmdline::parse("cairn.on_fatal=explode cairn.wizard=0");
        assert_eq!(d.on_fatal, OnFatal::Reboot);
        assert!(!d.fail_node);
        assert!(!d.wizard);
    }
}
