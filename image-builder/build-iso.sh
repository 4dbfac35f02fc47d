#!/usr/bin/env bash
# One command: builds image-builder/out/cairn.iso, a hybrid image that boots from CD and USB
# under BIOS and UEFI. Steps: appliance kernel (cached, build-kernel.sh), static `cairn`,
# initramfs (newc cpio with sorted entries, fixed mtimes and owners, /dev/console, /init =
# cairn; zstd), grub-mkrescue. Reproducible: every timestamp comes from SOURCE_DATE_EPOCH (the
# commit time) and the EFI FAT image's volume serial is pinned, so two builds of one commit are
# byte-identical (cairn.iso included). Prints the image size. CAIRN_BIN=path: use that static
# cairn instead of building one. `--bin-only`: build the static cairn and print its path, nothing
# else (CI builds it in the background while the tests run).
# Outputs (not in git): out/cairn.iso, out/bzImage, out/initrd.img, out/cairn.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="${CAIRN_IMAGE_OUT:-$here/out}"
mkdir -p "$out"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)}"
export TZ=UTC LC_ALL=C

bin_only=0
case "${1:-}" in
  "") ;;
  --bin-only) bin_only=1 ;;
  *) echo "build-iso: unknown argument $1 (the only option is --bin-only)" >&2; exit 2 ;;
esac
if [ "$bin_only" -eq 0 ]; then
  kernel="$("$here/build-kernel.sh" | tail -n1)"
  kdir="$(dirname "$kernel")/src"
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
if [ -n "${CAIRN_BIN:-}" ]; then
  # A static cairn built elsewhere (e.g. by an earlier step of the same CI run).
  echo "build-iso: using CAIRN_BIN=$CAIRN_BIN" >&2
  bin="$CAIRN_BIN"
else
  # Cargo's own fingerprints decide whether the release build is up to date: a rebuild of an
  # unchanged tree is a no-op of a second or two. The static build lives under its own
  # --target directory, so it never invalidates the host (debug/test) build and vice versa.
  echo "build-iso: static cairn" >&2
  (cd "$root" && RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$root=/cairn" \
    nice -n 10 cargo build -q --release --target x86_64-unknown-linux-gnu -p cairn)
  bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/cairn"
fi
if readelf -d "$bin" | grep -q "(NEEDED)"; then echo "build-iso: $bin is not static" >&2; exit 1; fi
if [ "$bin_only" -eq 1 ]; then echo "$bin"; exit 0; fi
cp "$bin" "$out/cairn"
strip --strip-all -o "$out/cairn.stripped" "$out/cairn"
# gen_init_cpio stores a file's own mtime: pin it.
touch -d "@$SOURCE_DATE_EPOCH" "$out/cairn.stripped"

echo "build-iso: initramfs" >&2
gen="$kdir/usr/gen_init_cpio"
[ -x "$gen" ] || cc -O2 -o "$gen" "$kdir/usr/gen_init_cpio.c"
sed "s|@CAIRN@|$out/cairn.stripped|" "$root/initramfs/cpio-list.in" | grep -v '^#' > "$out/cpio-list"
"$gen" -t "$SOURCE_DATE_EPOCH" "$out/cpio-list" > "$out/initrd.cpio"
zstd -q -f -19 -T1 "$out/initrd.cpio" -o "$out/initrd.img"
cp "$kernel" "$out/bzImage"

echo "build-iso: grub-mkrescue" >&2
stage="$out/iso-root"
rm -rf "$stage"
mkdir -p "$stage/boot/grub"
cp "$out/bzImage" "$out/initrd.img" "$stage/boot/"
cp "$root/initramfs/grub.cfg" "$stage/boot/grub/grub.cfg"
find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
rm -f "$out/cairn.iso"
# grub-mkrescue makes the EFI system partition (a FAT image) with mformat/mcopy. mtools takes
# its timestamps from SOURCE_DATE_EPOCH, but mformat picks a random volume serial number: a
# wrapper first in PATH pins it (derived from SOURCE_DATE_EPOCH, so it is stable per commit).
tools="$out/tools"
mkdir -p "$tools"
serial="$(printf %08x $((SOURCE_DATE_EPOCH & 0xffffffff)))"
real_mformat="$(command -v mformat)"
printf '#!/bin/sh\nexec %s -N %s "$@"\n' "$real_mformat" "$serial" > "$tools/mformat"
chmod +x "$tools/mformat"
# xorriso takes its dates from SOURCE_DATE_EPOCH; the volume UUID/date are pinned explicitly.
vol_date="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d%H%M%S00)"
PATH="$tools:$PATH" grub-mkrescue -o "$out/cairn.iso" "$stage" -- \
  -volid CAIRN -volume_date uuid "$vol_date" -volume_date all_file_dates "=$SOURCE_DATE_EPOCH" \
  >"$out/grub-mkrescue.log" 2>&1 || { cat "$out/grub-mkrescue.log" >&2; exit 1; }
size=$(stat -c %s "$out/cairn.iso")
echo "build-iso: $out/cairn.iso $((size / 1024 / 1024)) MiB ($size bytes) sha256 $(sha256sum "$out/cairn.iso" | cut -c1-16)" >&2
echo "$out/cairn.iso"
