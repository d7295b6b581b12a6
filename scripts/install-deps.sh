#!/usr/bin/env bash
# Installs what shoal needs on a Debian/Ubuntu host (as root): QEMU, the asset builders, and the
# project's npm dependencies. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
packages=(
  qemu-system-x86      # the QEMU microvm backend
  mmdebstrap           # builds the guest rootfs from Debian packages
  busybox-static       # the initramfs, and the test images
  e2fsprogs            # mkfs.ext4 -d for the rootfs and scratch disks
  cpio kmod            # initramfs, depmod
  util-linux           # setpriv --pdeathsig: a VMM never outlives its supervisor; mount for FUSE tests
  iproute2 nftables    # --network bridged: bridge, TAP, NAT (and the tests' network namespaces)
  slirp4netns          # --network slirp4netns, and rootless networking for Firecracker
  containerd           # containerd-shim-shoal-v2's tests start their own containerd (and ctr)
  containernetworking-plugins  # CNI bridge + host-local for the shim's pod networking tests
  ca-certificates
  make g++ python3     # node-gyp for the native addon
)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
npm ci --no-audit --no-fund
npm run build
npm run build:native
