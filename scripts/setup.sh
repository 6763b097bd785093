#!/usr/bin/env bash
# Installs everything Hearth needs on a Debian/Ubuntu host, builds Hearth and
# its guest agent, and builds (or reuses) the default guest image.
#
#   scripts/setup.sh            install + build + image
#   scripts/setup.sh --no-image install + build only
#
# Needs root for apt-get and debootstrap (uses sudo when not root).
set -euo pipefail
cd "$(dirname "$0")/.."

build_image=1
for arg in "$@"; do
  case "$arg" in
    --no-image) build_image=0 ;;
    *) echo "setup: unknown option $arg" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

packages=(
  qemu-system-x86   # the VMM (microvm machine, KVM or TCG)
  qemu-utils
  debootstrap       # guest root filesystem
  busybox-static    # initramfs tools
  kmod              # depmod for the guest kernel's modules
  e2fsprogs         # mkfs.ext4 for the root and writable layers
  cpio
  ca-certificates
  procps            # pgrep, used by the test suite's leak check
  postgresql        # the shared store of several nodes, and its tests
  util-linux        # unshare: the fake VM driver's PID namespaces (tests)
)
install_missing() {
  local missing=()
  for p in "${packages[@]%% *}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    $SUDO apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
  fi
}
install_missing
# Twice: installing one package can remove another that conflicts with it
# (qemu-system-x86 7.2 removes a newer qemu-utils from backports); the
# second pass installs the matching version.
install_missing

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found: install the Rust toolchain (rustup) first" >&2
  exit 1
fi

echo "setup: building hearth" >&2
cargo build --release -p hearth >&2
echo "setup: building the static guest agent" >&2
guest=$(scripts/build-guest.sh)
cp "$guest" target/release/hearth-guest

if [ "$build_image" -eq 1 ]; then
  echo "setup: building the default guest image (first time: a few minutes)" >&2
  $SUDO env HEARTH_HOME="${HEARTH_HOME:-}" HEARTH_IMAGES="${HEARTH_IMAGES:-}" \
    target/release/hearth image build --guest-agent target/release/hearth-guest >&2
fi
echo "setup: done; the hearth binary is target/release/hearth" >&2
