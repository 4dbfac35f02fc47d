//! Fault rules: which calls the fault device makes fail, tear or corrupt.
//!
//! Rules are pure decisions over (operation, byte range, seeded generator); they never touch data.

use super::rng::SplitMix64;

/// The operation a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultOp {
    Read,
    Write,
    Flush,
    Discard,
}

/// When a rule fires.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// The next `n` matching calls, then the rule is spent.
    Next(u32),
    /// Each matching call independently with this probability (`0.0..=1.0`).
    Probability(f64),
    /// Every call whose byte range overlaps `[offset, offset + len)`. Flushes have no range and
    /// never match.
    Range { offset: u64, len: u64 },
    /// Every matching call.
    Always,
}

/// What happens when a rule fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Return EIO without touching the device.
    Fail(FaultOp),
    /// A write lands only partly (some 512-byte sectors) and returns EIO.
    Tear,
    /// A read returns its data with one bit flipped per 4 KiB block (data at rest is intact).
    FlipRead,
}

#[derive(Clone, Debug)]
pub(crate) struct Rule {
    pub(crate) effect: Effect,
    pub(crate) trigger: Trigger,
}

#[derive(Default, Debug)]
pub(crate) struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    pub(crate) fn add(&mut self, effect: Effect, trigger: Trigger) {
        self.rules.push(Rule { effect, trigger });
    }

    pub(crate) fn clear(&mut self) {
        self.rules.clear();
    }

    /// Whether a rule with `effect` fires for a call on `range` (`None` for flush); spends one
    /// use of a `Next(n)` rule when it fires.
    pub(crate) fn fires(
        &mut self,
        effect: Effect,
        range: Option<(u64, u64)>,
        rng: &mut SplitMix64,
    ) -> bool {
        let mut fired = false;
        for rule in self.rules.iter_mut().filter(|r| r.effect == effect) {
            let hit = match &mut rule.trigger {
                Trigger::Next(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                Trigger::Next(_) => false,
                Trigger::Probability(p) => rng.chance(*p),
                Trigger::Range { offset, len } => range.is_some_and(|(o, l)| {
                    let end = offset.saturating_add(*len);
                    o < end && *offset < o.saturating_add(l)
                }),
                Trigger::Always => true,
            };
            if hit {
                fired = true;
                break;
            }
        }
        self.rules
            .retain(|r| !matches!(r.trigger, Trigger::Next(0)));
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_range_probability() {
        let mut rng = SplitMix64::new(1);
        let mut r = Rules::default();
        r.add(Effect::Fail(FaultOp::Read), Trigger::Next(2));
        assert!(r.fires(Effect::Fail(FaultOp::Read), Some((0, 4096)), &mut rng));
        assert!(!r.fires(Effect::Fail(FaultOp::Write), Some((0, 4096)), &mut rng));
        assert!(r.fires(Effect::Fail(FaultOp::Read), Some((0, 4096)), &mut rng));
        assert!(!r.fires(Effect::Fail(FaultOp::Read), Some((0, 4096)), &mut rng));
        r.add(
            Effect::Tear,
            Trigger::Range {
                offset: 8192,
                len: 4096,
            },
        );
        assert!(!r.fires(Effect::Tear, Some((0, 8192)), &mut rng));
        assert!(r.fires(Effect::Tear, Some((4096, 8192)), &mut rng));
        assert!(!r.fires(Effect::Tear, None, &mut rng));
        r.clear();
        r.add(Effect::FlipRead, Trigger::Probability(0.5));
        let n = (0..1000)
            .filter(|_| r.fires(Effect::FlipRead, Some((0, 1)), &mut rng))
            .count();
        assert!((400..600).contains(&n), "{n}");
    }
}
