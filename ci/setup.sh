#!/usr/bin/env bash
# Installs everything Cairn's build, run and tests need on a fresh Debian 12 with only the Rust
# toolchain. Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: build tools, test peers (fio, NBD clients, QEMU, OVMF, GRUB, Chromium) and the
# kernel source the appliance image is built from.
PKGS=(
  build-essential pkg-config bc flex bison libelf-dev libssl-dev cpio xz-utils zstd
  fio libnbd-bin nbd-client qemu-system-x86 qemu-utils qemu-block-extra ovmf
  grub-pc-bin grub-efi-amd64-bin grub-common xorriso mtools dosfstools
  linux-source-6.1 linux-image-amd64 busybox-static
  chromium iproute2 ethtool socat wrk nginx-light procps python3 python3-venv acpica-tools
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  # qemu-utils may come from backports on some images and then breaks Debian 12's qemu-system:
  # pin the whole QEMU family to bookworm's release so they install together.
  extra=()
  for p in "${missing[@]}"; do
    case "$p" in qemu-*) extra=(--allow-downgrades qemu-utils/bookworm qemu-system-common/bookworm qemu-block-extra/bookworm); break ;; esac
  done
  $SUDO apt-get install -y -q --no-install-recommends "${extra[@]}" "${missing[@]}"
fi

# Web UI: install its dependencies and build it to ui/dist, which the api crate's build script
# embeds into the binary. Rebuilt only when its sources changed (hash kept in ui/dist).
if [ -f ui/package.json ]; then
  if [ ! -d ui/node_modules ] || [ ui/package-lock.json -nt ui/node_modules/.package-lock.json ]; then
    (cd ui && npm ci --no-audit --no-fund) || echo "setup: npm ci failed in ui/"
  fi
  ui_hash=$(cd ui && find src index.html package-lock.json vite.config.ts tsconfig.json -type f -print0 2>/dev/null | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
  if [ "$(cat ui/dist/.build-hash 2>/dev/null)" != "$ui_hash" ]; then
    if (cd ui && npm run build); then
      echo "$ui_hash" > ui/dist/.build-hash
    else
      echo "setup: the web UI did not build; the binary will embed a 'UI not built' page"
    fi
  fi
fi
