#!/usr/bin/env bash
# Boot benchmark under QEMU TCG (not part of the default test run): time from QEMU start to the
# HTTPS API answering (direct kernel boot and ISO via SeaBIOS, on an already configured node)
# versus the anchor, a Debian kernel + busybox-static initramfs reaching its shell prompt; the
# ISO size; the node's RSS when idle. Prints JSON lines (see shared/BENCHMARKS.md).
# BENCH_RUNS=N (default 3) runs per figure; medians are printed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
iso="$(bash "$here/build-iso.sh" | tail -n1)"
out="$(dirname "$iso")"
work="$(mktemp -d /tmp/cairn-bench.XXXXXX)"
trap 'rm -rf "$work"' EXIT
APPLIANCE_WORK="$work" CAIRN_ISO="$iso" CAIRN_KERNEL="$out/bzImage" CAIRN_INITRD="$out/initrd.img" \
  python3 "$here/../tests/appliance/drive.py" bench
