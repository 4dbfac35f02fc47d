#!/usr/bin/env bash
# Browser test of the web UI: a real `cairn node` (2 small file-backed disks, temp data dir, a
# free port on 127.0.0.1) and real headless Chromium driven by playwright-core.
# Screenshots go to $TEST_ARTIFACTS/ui (default target/test-artifacts/ui).
set -uo pipefail
cd "$(dirname "$0")/../.."
name=ui
fail() { echo "suite-fail: $name ($*)"; exit 1; }
[ -x /usr/bin/chromium ] || { echo "skipped: $name (no /usr/bin/chromium)"; exit 0; }
command -v node >/dev/null || { echo "skipped: $name (no node)"; exit 0; }
if [ ! -d ui/node_modules/playwright-core ]; then
  (cd ui && npm ci --no-audit --no-fund) || fail "npm ci"
fi
(cd ui && npm test) || fail "ui unit tests"
# Always rebuild: a stale ui/dist would be embedded and tested instead of the current sources.
(cd ui && npm run build) || fail "ui build"
cargo build -q -p cairn -p test-guests || fail "cargo build"
bin="${CARGO_TARGET_DIR:-target}/debug/cairn"
[ -x "$bin" ] || fail "no binary at $bin"
# The VM steps boot the test guest (tests/guests) under KVM; without KVM they skip themselves.
guest=$(ls -t "${CARGO_TARGET_DIR:-target}"/debug/build/test-guests-*/out/guest.elf 2>/dev/null | head -1)
# The wizard asks for an absolute kernel path (the node refuses relative ones), so make it one.
[ -n "$guest" ] && guest=$(realpath "$guest")
kvm=""
if python3 -c 'import os; os.close(os.open("/dev/kvm", os.O_RDWR))' 2>/dev/null; then kvm=kvm; fi
art="${TEST_ARTIFACTS:-target/test-artifacts}/ui"
mkdir -p "$art"
. ci/test-node.sh
start_test_node "$bin" ui-test
# The cluster steps start a witness from this binary and join it with a token made in the UI.
if CAIRN_BIN=$(realpath "$bin") timeout 420 node ui/tests/browser.mjs "https://127.0.0.1:$port/" admin "$pw" "$art" "$guest" "$kvm"; then
  echo "suite-pass: $name"
else
  tail -20 "$work/node.log"
  fail "browser test failed; screenshots in $art"
fi
