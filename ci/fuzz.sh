#!/usr/bin/env bash
# Short fuzz run of every cargo-fuzz target under src/*/fuzz (part of ci/soak.sh, not of the
# default run). Usage: bash ci/fuzz.sh [seconds-per-target]   (default 30)
# cargo-fuzz needs nightly compiler features; RUSTC_BOOTSTRAP=1 lets the stable toolchain (the
# only one these machines have) build the sanitizer-instrumented targets. A crash leaves its input
# in <crate>/fuzz/artifacts/<target>/ and fails the run.
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
fail=0
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked || exit 1
for dir in src/*/fuzz; do
  [ -f "$dir/Cargo.toml" ] || continue
  for t in "$dir"/fuzz_targets/*.rs; do
    name=$(basename "$t" .rs)
    echo "=== fuzz $dir $name (${secs}s)"
    if (cd "$dir" && RUSTC_BOOTSTRAP=1 cargo fuzz run "$name" -- -max_total_time="$secs"); then
      echo "suite-pass: fuzz $name"
    else
      echo "suite-fail: fuzz $name"
      fail=1
    fi
  done
done
exit "$fail"
