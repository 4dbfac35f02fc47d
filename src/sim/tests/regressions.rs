//! Every seed that ever failed, as a named test (the list is `sim::REGRESSIONS`), run in the
//! configuration it failed in. A seed whose bug is reported and not yet fixed is ignored with
//! the reason.

use sim::{run_seed, SimConfig};

fn seed(n: u64) {
    let r = sim::REGRESSIONS
        .iter()
        .find(|r| r.seed == n)
        .unwrap_or_else(|| panic!("seed {n} missing from REGRESSIONS"));
    let mut cfg = SimConfig::default();
    cfg.disk.midop_cuts = r.midop_cuts;
    if let Err(f) = run_seed(n, cfg) {
        panic!("{f}");
    }
}

#[test]
fn every_regression_has_a_named_test() {
    // Keep in step with the functions below.
    let named = [44u64, 67, 74, 162, 87, 125];
    let listed: Vec<u64> = sim::REGRESSIONS.iter().map(|r| r.seed).collect();
    assert_eq!(listed, named);
    for (s, _) in sim::KNOWN_BUGS {
        assert!(named.contains(s), "known-bug seed {s} has no named test");
    }
}

#[test]
fn seed_44() {
    seed(44);
}

#[test]
fn seed_67() {
    seed(67);
}

#[test]
fn seed_74() {
    seed(74);
}

#[test]
fn seed_87() {
    seed(87);
}

#[test]
fn seed_125() {
    seed(125);
}

#[test]
fn seed_162() {
    seed(162);
}
