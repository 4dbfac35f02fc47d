#!/usr/bin/env bash
# Command 2 of the README: set up, then run every test Cairn has. `.ci/run` runs exactly this.
# Long soaks and fuzzing are not here: see ci/soak.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh || { echo "ci: setup failed"; exit 1; }

log=$(mktemp -d)/ci.log
fail=0
step() {
  echo "=== $*"
  if ! "$@" 2>&1 | tee -a "$log"; then
    echo "=== FAILED: $*"
    fail=1
  fi
}

step cargo fmt --all -- --check
step cargo clippy --workspace --all-targets -- -D warnings
# --show-output makes a passing test's "skipped: <reason>" line visible, so skips are counted.
# Time limits turn a hung test into a failure with a name instead of a silent CI timeout.
step timeout 2700 cargo test --workspace --no-fail-fast -- --show-output
for s in ci/suites/*.sh; do
  [ -e "$s" ] || continue
  step timeout 1800 bash "$s"
done

passed=$(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
suite_passed=$(grep -cE '^suite-pass: ' "$log")
suite_failed=$(grep -cE '^suite-fail: ' "$log")
skipped=$(grep -cE '^(.*[^a-z])?skipped: ' "$log")
# A skipped test reports itself as passed to its runner: count it as skipped, not passed.
passed=$((passed + suite_passed - skipped))
[ "$passed" -ge 0 ] || passed=0
failed=$((failed + suite_failed))
if [ "$fail" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "total: $passed passed, $failed failed, $skipped skipped"
[ "$fail" -eq 0 ]
