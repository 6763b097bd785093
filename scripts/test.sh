#!/usr/bin/env bash
# The whole test suite: installs what the tests need, builds the guest image
# (cached across runs), checks formatting and lints, runs every test (real
# VMs included), and fails if any QEMU process or sandbox file is left over.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export HEARTH_IMAGES="${HEARTH_IMAGES:-${HEARTH_HOME:-$HOME/.local/share/hearth}/images}"
export HEARTH_GUEST_AGENT="$PWD/target/release/hearth-guest"

echo "test: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "test: cargo clippy" >&2
cargo clippy --workspace --all-targets -- -D warnings

# VMs that were running before the tests (another user's) are not ours.
qemu_before=$(pgrep -f 'qemu-system-x86_64.*hearth-' || true)

echo "test: running the test suite" >&2
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  # nextest does not run doctests.
  cargo test --workspace --doc
else
  echo "test: cargo-nextest not found; using cargo test" >&2
  cargo test --workspace --no-fail-fast
fi

echo "test: fuzzing the HTTP API with schemathesis" >&2
cargo build -p hearth
scripts/api-fuzz.sh 40

echo "test: Python SDK against a real server" >&2
python3 -m pip install -q -e 'sdk/python[test]'
HEARTH_BIN="$PWD/target/debug/hearth" python3 -m pytest -q sdk/python/tests

echo "test: checking for leaked VMs" >&2
leaked=""
for pid in $(pgrep -f 'qemu-system-x86_64.*hearth-' || true); do
  grep -qx "$pid" <<<"$qemu_before" || leaked="$leaked $pid"
done
if [ -n "$leaked" ]; then
  ps -o pid,args -p $leaked >&2 || true
  echo "test: FAILED: QEMU processes left running after the tests:$leaked" >&2
  exit 1
fi
echo "test: no QEMU process left over" >&2
