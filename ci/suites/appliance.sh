#!/usr/bin/env bash
# Appliance suite: builds the ISO (image-builder/build-iso.sh; the kernel is cached after the
# first build, which takes ~10-25 min on 2 cores), then boots it under QEMU TCG and drives the
# serial setup wizard (tests/appliance/drive.py): SeaBIOS from CD (serial and VGA screen; a reboot
# keeps the cluster id, CA, API certificate, admin password and virtual disk bytes), OVMF
# from a USB stick, PID 1's recovery from a failing node service, and live network changes
# (static, VLAN; the cluster member follows the address and commits there) plus the hardware watchdog (i6300esb),
# a DHCP lease that changes address on renewal (a tap link in a network namespace the test
# makes, served by the test's own DHCP server; the API and the cluster member follow), and two appliances joined into one cluster
# over a private link between them (a second NIC; QEMU socket netdev on 127.0.0.1), one of
# them rebooted, and two appliances on one bridge (in a namespace the test makes, a DHCP lease each
# by MAC) where the joined one is shut down and powered on again on a new lease: the cluster follows
# (its member address committed, both up, both commit). Every HTTPS connection is pinned to the
# certificate key the node's console shows (the certificate is self-signed); after an address
# change the served certificate must name the new address. Also checks the ISO is byte-reproducible.
# Prints suite-pass:/suite-fail: lines; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"

for t in qemu-system-x86_64 grub-mkrescue xorriso zstd python3 nbdcopy; do
  if ! command -v "$t" >/dev/null; then
    echo "skipped: appliance suite needs $t (ci/setup.sh installs it)"
    exit 0
  fi
done
if [ ! -f /usr/src/linux-source-6.1.tar.xz ] || [ ! -f /usr/share/OVMF/OVMF_CODE_4M.fd ]; then
  echo "skipped: appliance suite needs linux-source-6.1 and ovmf (ci/setup.sh installs them)"
  exit 0
fi

work="$(mktemp -d /tmp/cairn-appliance.XXXXXX)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
export CAIRN_IMAGE_OUT="$work/img1"
# Both builds must see the same commit time: in a shared working tree HEAD can move between
# them (another commit lands), which changes SOURCE_DATE_EPOCH and with it every timestamp.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
fail=0
pass() { echo "suite-pass: appliance-$1"; }
bad() { echo "suite-fail: appliance-$1"; fail=1; }

t0=$(date +%s)
if iso="$(bash image-builder/build-iso.sh | tail -n1)" && [ -f "$iso" ]; then
  pass build-iso
else
  bad build-iso
  echo "appliance: no image; nothing else can run"
  exit 1
fi
echo "appliance: image built in $(( $(date +%s) - t0 )) s"
size=$(stat -c %s "$iso")
if [ "$size" -le $((64 << 20)) ]; then pass "iso-size-${size}B-le-64MiB"; else bad "iso-size-${size}B-over-64MiB"; fi

# Reproducible: a second build from the same commit into another directory gives byte-identical
# kernel, initramfs and cairn.iso (the EFI FAT image's serial is pinned by build-iso.sh).
if iso2="$(CAIRN_IMAGE_OUT="$work/img2" bash image-builder/build-iso.sh 2>/dev/null | tail -n1)" \
   && cmp -s "$work/img1/initrd.img" "$work/img2/initrd.img" \
   && cmp -s "$work/img1/bzImage" "$work/img2/bzImage"; then
  pass reproducible-kernel-initramfs
  if cmp "$iso" "$iso2"; then
    pass reproducible-iso
  else
    bad reproducible-iso
  fi
else
  bad reproducible-kernel-initramfs
fi

export APPLIANCE_WORK="$work" CAIRN_ISO="$iso" CAIRN_KERNEL="$work/img1/bzImage" CAIRN_INITRD="$work/img1/initrd.img"
# Runs scenarios in order; returns non-zero if any failed.
lane() {
  local scenario s0 rc=0
  for scenario in "$@"; do
    s0=$(date +%s)
    if python3 tests/appliance/drive.py "$scenario"; then
      pass "$scenario"
    else
      echo "suite-fail: appliance-$scenario"
      rc=1
      echo "--- last serial output of $scenario:"
      # (join and rejoin-dhcp have one log per appliance: join1.log, join2.log, ...)
      for f in "$work/$scenario.log" "$work/$scenario"[0-9].log; do
        [ -f "$f" ] && { echo "--- $f:"; tail -n 40 "$f"; }
      done
    fi
    echo "appliance: $scenario took $(( $(date +%s) - s0 )) s"
  done
  return "$rc"
}
# Two lanes at once (each QEMU is one emulating thread; the machine has two cores), each a
# similar length. pid1-fail and live boot the disks bios-cd configured, so those three share a
# lane; every other scenario has its own disks, ports and network namespace. The first lane's
# output follows the second's.
l0=$(date +%s)
lane bios-cd pid1-fail live >"$work/lane1.out" 2>&1 &
lane1=$!
lane dhcp-renew uefi-usb join rejoin-dhcp || fail=1
wait "$lane1" || fail=1
cat "$work/lane1.out"
echo "appliance: the scenarios took $(( $(date +%s) - l0 )) s"

if [ "$fail" -eq 0 ]; then rm -rf "$work"; else echo "appliance: logs kept in $work"; fi
exit "$fail"
