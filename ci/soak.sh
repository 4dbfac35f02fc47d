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
run env CAIRN_DIRECT_POWERCUT_CYCLES=2000 CAIRN_DIRECT_POWERCUT_SEED=$RANDOM cargo test --release -p engine --test direct_powercut -- --nocapture
run env PROPTEST_CASES=2000 cargo test --release -p engine --test model
run env PROPTEST_CASES=2000 cargo test --release -p store
# Deterministic simulation of engine + cluster: thousands of seeds (the default run has 200).
run env CAIRN_SIM_SEEDS=5000 CAIRN_SIM_SEED_BASE=1000 cargo test --release -p sim --test seeds seeds -- --nocapture
# Fault cycles (kill -9, SIGSTOP, partitions) on 3-node clusters: thousands instead of 50.
run env CAIRN_FAULT_CYCLES=2500 cargo test --release -p cairn --test cluster_faults -- --nocapture
for i in 1 2 3 4 5; do
  run env CAIRN_KILL9_SEED=$RANDOM cargo test --release -p cairn --test kill9
done

run env CAIRN_APIFUZZ_EXAMPLES=200 CAIRN_APIFUZZ_SEED=$RANDOM CAIRN_APIFUZZ_PHASES=coverage,fuzzing,stateful bash ci/suites/apifuzz.sh
# Fuzzing: every cargo-fuzz target for $fuzz_secs seconds (ci/fuzz.sh; runs alone too).
run bash ci/fuzz.sh "$fuzz_secs"

[ "$fail" -eq 0 ] && echo "soak: all passed" || echo "soak: failures above"
exit "$fail"
