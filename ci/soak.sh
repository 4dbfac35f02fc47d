#!/usr/bin/env bash
# Long runs that do not belong in the default test run: many more power cuts, model-test cases and
# kill -9 cycles, plus a short fuzz run of every cargo-fuzz target. Usage: bash ci/soak.sh [minutes-per-fuzz-target]
set -uo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh || exit 1
fuzz_secs=$(( ${1:-2} * 60 ))
fail=0
run() { echo "=== $*"; if "$@"; then echo "suite-pass: $*"; else echo "suite-fail: $*"; fail=1; fi; }

run env CAIRN_SOAK_CYCLES=20000 cargo test --release -p store --test crash
run env CAIRN_POWERCUT_CYCLES=5000 cargo test --release -p engine --test powercut
run env PROPTEST_CASES=2000 cargo test --release -p engine --test model
run env PROPTEST_CASES=2000 cargo test --release -p store
for i in 1 2 3 4 5; do
  run env CAIRN_KILL9_SEED=$RANDOM cargo test --release -p cairn --test kill9
done

# Fuzzing: cargo-fuzz needs nightly compiler features; RUSTC_BOOTSTRAP lets the stable toolchain
# (the only one these machines have) build the sanitizer-instrumented targets.
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for dir in src/*/fuzz; do
  [ -f "$dir/Cargo.toml" ] || continue
  for t in "$dir"/fuzz_targets/*.rs; do
    name=$(basename "$t" .rs)
    run bash -c "cd $dir && RUSTC_BOOTSTRAP=1 cargo fuzz run $name -- -max_total_time=$fuzz_secs"
  done
done

[ "$fail" -eq 0 ] && echo "soak: all passed" || echo "soak: failures above"
exit "$fail"
