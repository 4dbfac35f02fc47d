//! A linearizability checker for recorded histories (the algorithm of Wing & Gong with Lowe's
//! memoisation, as in porcupine), and a model of the metadata operations we check with it.
//!
//! A history is a list of operations with call and return times. An operation whose outcome is
//! unknown (the client saw a timeout or a broken connection) has no return time and no output:
//! it may have taken effect at any point after its call, or never. Must never: report a history
//! linearizable without having found a linearization (too large a search returns `Unknown`).
use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;

/// One recorded operation. Times are in any monotonic unit (nanoseconds since the start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op<I, O> {
    pub client: usize,
    pub call: u64,
    /// `None`: the client never learned the outcome.
    pub ret: Option<u64>,
    pub input: I,
    /// `None`: unknown outcome (then `ret` is `None` too).
    pub output: Option<O>,
}

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash;
    type Input;
    type Output;
    fn init(&self) -> Self::State;
    /// The states the operation can lead to from `state` given what it returned (`None`:
    /// unknown). Empty if that output is impossible in `state`.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Vec<Self::State>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Linearizable,
    NotLinearizable,
    /// The search exceeded its step budget.
    Unknown,
}

const NIL: usize = usize::MAX;

/// Checks one history against `model`, exploring at most `max_steps` search steps.
pub fn check<M: Model>(model: &M, ops: &[Op<M::Input, M::Output>], max_steps: u64) -> Outcome {
    let n = ops.len();
    if n == 0 {
        return Outcome::Linearizable;
    }
    // Events: (time, is_return, op). Calls sort before returns at equal times (overlap).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        let ret = op.ret.unwrap_or(u64::MAX).max(op.call);
        events.push((op.call, false, i));
        events.push((ret, true, i));
    }
    events.sort();
    // Doubly linked list over events; node 0 is the head sentinel, event k is node k + 1.
    let len = events.len() + 1;
    let mut next: Vec<usize> = (1..=len).collect();
    next[len - 1] = NIL;
    let mut prev: Vec<usize> = (0..len).map(|i| i.wrapping_sub(1)).collect();
    prev[0] = NIL;
    let mut call_node = vec![0usize; n];
    let mut ret_node = vec![0usize; n];
    for (k, (_, is_ret, op)) in events.iter().enumerate() {
        if *is_ret {
            ret_node[*op] = k + 1;
        } else {
            call_node[*op] = k + 1;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, nx) = (prev[x], next[x]);
        next[p] = nx;
        if nx != NIL {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, nx) = (prev[x], next[x]);
        next[p] = x;
        if nx != NIL {
            prev[nx] = x;
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut state = model.init();
    // (op, state before, alternative taken)
    let mut stack: Vec<(usize, M::State, usize)> = Vec::new();
    let mut entry = next[0];
    let mut first_alt = 0usize;
    let mut steps = 0u64;
    while next[0] != NIL {
        steps += 1;
        if steps > max_steps {
            return Outcome::Unknown;
        }
        if entry == NIL {
            // Every remaining call was tried and failed at this level.
            return Outcome::NotLinearizable;
        }
        let (_, is_ret, op) = events[entry - 1];
        if !is_ret {
            let succs = model.step(&state, &ops[op].input, ops[op].output.as_ref());
            let mut advanced = false;
            for (j, s) in succs.into_iter().enumerate().skip(first_alt) {
                let mut lin = linearized.clone();
                lin[op / 64] |= 1 << (op % 64);
                if cache.insert((lin.clone(), s.clone())) {
                    stack.push((op, std::mem::replace(&mut state, s), j));
                    linearized = lin;
                    unlink(&mut next, &mut prev, call_node[op]);
                    unlink(&mut next, &mut prev, ret_node[op]);
                    entry = next[0];
                    advanced = true;
                    break;
                }
            }
            first_alt = 0;
            if !advanced {
                entry = next[entry];
            }
        } else {
            // A return whose call is still pending: backtrack.
            let Some((op, old, j)) = stack.pop() else {
                return Outcome::NotLinearizable;
            };
            state = old;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, ret_node[op]);
            relink(&mut next, &mut prev, call_node[op]);
            entry = call_node[op];
            first_alt = j + 1;
        }
    }
    Outcome::Linearizable
}

/// Metadata operations on named objects (virtual disks), checked per name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MetaInput {
    Create(String),
    Delete(String),
    Exists(String),
}

impl MetaInput {
    pub fn key(&self) -> &str {
        match self {
            MetaInput::Create(k) | MetaInput::Delete(k) | MetaInput::Exists(k) => k,
        }
    }
}

/// `Done(true)`: applied; `Done(false)`: rejected (exists / does not exist); `Seen(b)`: a read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MetaOutput {
    Done(bool),
    Seen(bool),
}

/// One object: does it exist.
#[derive(Debug, Default)]
pub struct ObjectModel;

impl Model for ObjectModel {
    type State = bool;
    type Input = MetaInput;
    type Output = MetaOutput;

    fn init(&self) -> bool {
        false
    }

    fn step(&self, s: &bool, input: &MetaInput, output: Option<&MetaOutput>) -> Vec<bool> {
        let (after, ok_when) = match input {
            MetaInput::Create(_) => (true, false),
            MetaInput::Delete(_) => (false, true),
            MetaInput::Exists(_) => {
                return match output {
                    Some(MetaOutput::Seen(b)) if b == s => vec![*s],
                    None => vec![*s],
                    _ => vec![],
                };
            }
        };
        match output {
            Some(MetaOutput::Done(true)) if *s == ok_when => vec![after],
            Some(MetaOutput::Done(false)) if *s != ok_when => vec![*s],
            // Unknown: it happened (if it could) or it did not.
            None if *s == ok_when => vec![after, *s],
            None => vec![*s],
            _ => vec![],
        }
    }
}

/// Checks a metadata history one object at a time (objects are independent, so the history is
/// linearizable iff every per-object history is).
pub fn check_metadata(ops: &[Op<MetaInput, MetaOutput>], max_steps: u64) -> Outcome {
    let mut by_key: BTreeMap<&str, Vec<Op<MetaInput, MetaOutput>>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.input.key()).or_default().push(op.clone());
    }
    let mut result = Outcome::Linearizable;
    for part in by_key.values() {
        match check(&ObjectModel, part, max_steps) {
            Outcome::NotLinearizable => return Outcome::NotLinearizable,
            Outcome::Unknown => result = Outcome::Unknown,
            Outcome::Linearizable => {}
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use MetaInput::*;
    use MetaOutput::*;

    fn op(
        call: u64,
        ret: Option<u64>,
        input: MetaInput,
        output: Option<MetaOutput>,
    ) -> Op<MetaInput, MetaOutput> {
        Op {
            client: 0,
            call,
            ret,
            input,
            output,
        }
    }
    fn k() -> String {
        "k".into()
    }

    #[test]
    fn sequential_history() {
        let h = vec![
            op(0, Some(1), Create(k()), Some(Done(true))),
            op(2, Some(3), Exists(k()), Some(Seen(true))),
            op(4, Some(5), Create(k()), Some(Done(false))),
            op(6, Some(7), Delete(k()), Some(Done(true))),
            op(8, Some(9), Exists(k()), Some(Seen(false))),
        ];
        assert_eq!(check_metadata(&h, 10_000), Outcome::Linearizable);
    }

    #[test]
    fn stale_read_after_acknowledged_create_is_caught() {
        let h = vec![
            op(0, Some(1), Create(k()), Some(Done(true))),
            op(2, Some(3), Exists(k()), Some(Seen(false))),
        ];
        assert_eq!(check_metadata(&h, 10_000), Outcome::NotLinearizable);
    }

    #[test]
    fn two_successful_creates_without_delete_are_caught() {
        let h = vec![
            op(0, Some(10), Create(k()), Some(Done(true))),
            op(1, Some(11), Create(k()), Some(Done(true))),
        ];
        assert_eq!(check_metadata(&h, 10_000), Outcome::NotLinearizable);
        // With an overlapping delete it is fine: create, delete, create.
        let mut h2 = h.clone();
        h2.push(op(2, Some(12), Delete(k()), Some(Done(true))));
        assert_eq!(check_metadata(&h2, 10_000), Outcome::Linearizable);
    }

    #[test]
    fn concurrent_ops_may_reorder() {
        // Read overlaps the create: either answer is fine.
        for seen in [true, false] {
            let h = vec![
                op(0, Some(10), Create(k()), Some(Done(true))),
                op(5, Some(6), Exists(k()), Some(Seen(seen))),
            ];
            assert_eq!(check_metadata(&h, 10_000), Outcome::Linearizable);
        }
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_apply() {
        // Unknown create, later read sees it: it happened.
        let h = vec![
            op(0, None, Create(k()), None),
            op(5, Some(6), Exists(k()), Some(Seen(true))),
        ];
        assert_eq!(check_metadata(&h, 10_000), Outcome::Linearizable);
        // Unknown create, later read does not see it: it did not (yet) happen.
        let h = vec![
            op(0, None, Create(k()), None),
            op(5, Some(6), Exists(k()), Some(Seen(false))),
        ];
        assert_eq!(check_metadata(&h, 10_000), Outcome::Linearizable);
        // But it cannot un-happen: seen, then not seen, with no delete.
        let h = vec![
            op(0, None, Create(k()), None),
            op(5, Some(6), Exists(k()), Some(Seen(true))),
            op(7, Some(8), Exists(k()), Some(Seen(false))),
        ];
        assert_eq!(check_metadata(&h, 10_000), Outcome::NotLinearizable);
    }

    #[test]
    fn keys_are_independent_and_budget_is_respected() {
        let mut h = Vec::new();
        for i in 0..20u64 {
            h.push(Op {
                client: i as usize,
                call: 0,
                ret: Some(100),
                input: Create(format!("k{}", i % 2)),
                output: Some(Done(i < 2)),
            });
        }
        assert_eq!(check_metadata(&h, 1_000_000), Outcome::Linearizable);
        assert_eq!(check_metadata(&h, 3), Outcome::Unknown);
    }
}
