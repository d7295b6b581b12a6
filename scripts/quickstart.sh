#!/usr/bin/env bash
# From a fresh clone: install, build the guest assets, and run a container in a microVM.
# The image is built locally from busybox-static (no registry is needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
bin/shoal setup
image="$(mktemp -d)/busybox.tar"
node dist/scripts/make-test-image.js "$image"
SHOAL_PROGRESS=1 bin/shoal run --rm "docker-archive:$image" -- echo "hello from a shoal microVM"
rm -rf "$(dirname "$image")"
