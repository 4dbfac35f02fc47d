//! `Versions`: one block's versions, oldest first. Behaves like the `Vec<Version>` it replaces,
//! but keeps a lone version inline: almost every block of a live disk has exactly one, and a
//! 4 KiB random read then finds it in the block-table slot itself instead of following a
//! pointer to a separate allocation (one dependent cache miss less per read).
//!
//! Owns only the container; the version rules live in `maps`. The checkpoint encodes the
//! slice it derefs to, so the on-disk format is unchanged.

use std::ops::{Deref, DerefMut};

use crate::maps::Version;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Versions {
    #[default]
    Empty,
    One(Version),
    /// Two or more (or, after removals, possibly fewer: every operation accepts any length).
    Many(Vec<Version>),
}

impl Versions {
    pub fn push(&mut self, v: Version) {
        match self {
            Versions::Empty => *self = Versions::One(v),
            Versions::One(a) => *self = Versions::Many(vec![*a, v]),
            Versions::Many(m) => m.push(v),
        }
    }

    pub fn pop(&mut self) -> Option<Version> {
        match self {
            Versions::Empty => None,
            Versions::One(a) => {
                let a = *a;
                *self = Versions::Empty;
                Some(a)
            }
            Versions::Many(m) => {
                let r = m.pop();
                self.compact();
                r
            }
        }
    }

    /// Remove and return the version at `i` (panics when out of range, like `Vec::remove`).
    pub fn remove(&mut self, i: usize) -> Version {
        match self {
            Versions::One(a) if i == 0 => {
                let a = *a;
                *self = Versions::Empty;
                a
            }
            Versions::Many(m) => {
                let r = m.remove(i);
                self.compact();
                r
            }
            _ => panic!("version index {i} out of range ({} held)", self.len()),
        }
    }

    pub fn retain(&mut self, f: impl FnMut(&Version) -> bool) {
        let mut v = std::mem::take(self).into_vec();
        v.retain(f);
        *self = Versions::from(v);
    }

    fn into_vec(self) -> Vec<Version> {
        match self {
            Versions::Empty => Vec::new(),
            Versions::One(a) => vec![a],
            Versions::Many(m) => m,
        }
    }

    /// Back to the inline form when at most one version is left.
    fn compact(&mut self) {
        if let Versions::Many(m) = self {
            match m.len() {
                0 => *self = Versions::Empty,
                1 => *self = Versions::One(m[0]),
                _ => {}
            }
        }
    }
}

impl From<Vec<Version>> for Versions {
    fn from(v: Vec<Version>) -> Self {
        let mut s = Versions::Many(v);
        s.compact();
        s
    }
}

impl Deref for Versions {
    type Target = [Version];
    fn deref(&self) -> &[Version] {
        match self {
            Versions::Empty => &[],
            Versions::One(a) => std::slice::from_ref(a),
            Versions::Many(m) => m,
        }
    }
}

impl DerefMut for Versions {
    fn deref_mut(&mut self) -> &mut [Version] {
        match self {
            Versions::Empty => &mut [],
            Versions::One(a) => std::slice::from_mut(a),
            Versions::Many(m) => m,
        }
    }
}

impl<'a> IntoIterator for &'a Versions {
    type Item = &'a Version;
    type IntoIter = std::slice::Iter<'a, Version>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(gen: u64) -> Version {
        Version {
            gen,
            phys: gen * 10,
            crc: gen as u32,
        }
    }

    #[test]
    fn behaves_like_a_vec() {
        // Random operations against a Vec model, checking contents and the inline form.
        let mut ours = Versions::default();
        let mut model: Vec<Version> = Vec::new();
        let mut x = 12345u64;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 6 {
                0 | 1 => {
                    ours.push(v(step));
                    model.push(v(step));
                }
                2 => assert_eq!(ours.pop(), model.pop()),
                3 if !model.is_empty() => {
                    let i = (x >> 8) as usize % model.len();
                    assert_eq!(ours.remove(i), model.remove(i));
                }
                4 => {
                    let keep = |w: &Version| !(w.gen ^ step).is_multiple_of(3);
                    ours.retain(keep);
                    model.retain(keep);
                }
                _ if !model.is_empty() => {
                    let i = (x >> 8) as usize % model.len();
                    ours[i].crc = step as u32;
                    model[i].crc = step as u32;
                }
                _ => {}
            }
            assert_eq!(&ours[..], &model[..], "step {step}");
            let many = matches!(ours, Versions::Many(_));
            assert_eq!(
                many,
                model.len() > 1,
                "step {step}: inline form when at most one"
            );
        }
        assert_eq!(Versions::from(vec![v(1)]), Versions::One(v(1)));
        assert_eq!(Versions::from(Vec::new()), Versions::Empty);
        assert_eq!((&Versions::One(v(3))).into_iter().count(), 1);
    }
}
