#!/usr/bin/env bash
# Command 1 of the README: run a single-node Cairn on this host, in the foreground, until Ctrl-C.
# Data (disk files, socket, API state) lives under ./data; extra arguments go to `cairn node`
# (e.g. --disks 2 --disk-size 4G, --no-api).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
cargo build --release -p cairn
target="${CARGO_TARGET_DIR:-target}"
echo "CLI: $target/release/cairn --data ./data <command>   (cairn --help lists them)"
exec "$target/release/cairn" node --data ./data "$@"
