//! The `cairn.*` options of the kernel command line. Owns their parsing and defaults; must never
//! fail on unknown or malformed words (a typo on the boot line cannot stop the node).
//!
//! - `cairn.on_fatal=reboot|halt` — what PID 1 does after a fatal error (default reboot).
//! - `cairn.fail_node=1` — test hook: the node service fails at once (proves PID 1 recovers).
//! - `cairn.wizard=0` — skip the first-boot wizard (the node waits, configured by nothing).

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
}

impl Default for Cmdline {
    fn default() -> Self {
        Cmdline {
            on_fatal: OnFatal::Reboot,
            fail_node: false,
            wizard: true,
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
        let d = Cmdline::parse("cairn.on_fatal=explode cairn.wizard=0");
        assert_eq!(d.on_fatal, OnFatal::Reboot);
        assert!(!d.fail_node);
        assert!(!d.wizard);
    }
}
