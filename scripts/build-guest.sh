#!/usr/bin/env bash
# Builds the guest agent (hearth-guest) as a static binary: it runs as /init in the
# initramfs, where there is no dynamic loader and no libc. No musl target is needed:
# the gnu target links glibc statically with +crt-static.
#
# Usage: scripts/build-guest.sh [extra cargo args...]
# Prints the path of the binary on stdout (progress goes to stderr).
set -euo pipefail

cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
out_dir=target/guest

# No debug info and stripped: the agent lives in every VM's memory.
CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols \
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release -p hearth-guest --target "$target" --target-dir "$out_dir" "$@" >&2

bin="$PWD/$out_dir/$target/release/hearth-guest"
if [ ! -x "$bin" ]; then
  echo "build-guest: expected binary not found at $bin" >&2
  exit 1
fi
# A dynamically linked binary has an ELF interpreter (PT_INTERP); refuse it.
if command -v readelf >/dev/null 2>&1 && readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
  echo "build-guest: $bin is dynamically linked; check the RUSTFLAGS above" >&2
  exit 1
fi
echo "$bin"
