#!/usr/bin/env bash
# The whole test suite: installs what the tests need (QEMU, PostgreSQL,
# cargo-nextest, cargo-fuzz), builds the guest image (cached across runs),
# starts PostgreSQL, checks formatting and lints, builds the fuzz targets,
# runs every test (real VMs and a real PostgreSQL included), and fails if
# any QEMU process, fake VM, sandbox file or test database is left over.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
# A clean CI clone gains nothing from incremental builds, and their caches
# are gigabytes of disk on top of the target directory.
if [ "${CI:-}" = "true" ]; then
  export CARGO_INCREMENTAL=0
fi
export HEARTH_IMAGES="${HEARTH_IMAGES:-${HEARTH_HOME:-$HOME/.local/share/hearth}/images}"
export HEARTH_GUEST_AGENT="$PWD/target/release/hearth-guest"

# nextest's per-test timeouts are what kill a hung VM: required.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest >&2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "test: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz >&2
fi

echo "test: starting PostgreSQL" >&2
HEARTH_TEST_POSTGRES="$(scripts/postgres.sh)"
export HEARTH_TEST_POSTGRES

echo "test: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "test: cargo clippy" >&2
cargo clippy --workspace --all-targets -- -D warnings

echo "test: building the fuzz targets" >&2
(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build --dev)
# In CI that build is only a compile check: free its few gigabytes of disk
# before the test binaries need them.
if [ "${CI:-}" = "true" ]; then
  rm -rf fuzz/target
fi

# What was there before the tests (another user's) is not ours.
marker="$(mktemp /tmp/hearth-test-start.XXXXXX)"
qemu_before=$(pgrep -f 'qemu-system-x86_64.*hearth-' || true)
agents_before=$(pgrep -f 'hearth-guest serve-unix' || true)

echo "test: running the test suite" >&2
cargo nextest run --workspace --no-fail-fast
# nextest does not run doctests.
cargo test --workspace --doc

echo "test: fuzzing the HTTP API with schemathesis" >&2
cargo build -p hearth
scripts/api-fuzz.sh 40

echo "test: Python SDK against a real server" >&2
python3 -m pip install -q -e 'sdk/python[test]'
HEARTH_BIN="$PWD/target/debug/hearth" python3 -m pytest -q sdk/python/tests

# The stdlib-only module durable programs import in the guest; its tests use
# a fake engine on 127.0.0.1 and take a second or two.
echo "test: hearth_run (Python run client) against a fake engine" >&2
python3 -m pytest -q sdk/hearth-run/tests

echo "test: checking for leftovers" >&2
failed=0
leaked=""
for pid in $(pgrep -f 'qemu-system-x86_64.*hearth-' || true); do
  grep -qx "$pid" <<<"$qemu_before" || leaked="$leaked $pid"
done
for pid in $(pgrep -f 'hearth-guest serve-unix' || true); do
  grep -qx "$pid" <<<"$agents_before" || leaked="$leaked $pid"
done
if [ -n "$leaked" ]; then
  ps -o pid,args -p $leaked >&2 || true
  echo "test: FAILED: VM processes left running after the tests:$leaked" >&2
  failed=1
fi
# Test homes are temporary directories under /tmp named hh*; a sandbox's
# files live in <home>/sandboxes/<id> while it runs.
left_files=$(find /tmp -maxdepth 3 -newer "$marker" -path '/tmp/hh*/sandboxes/*' 2>/dev/null || true)
home_sandboxes="${HEARTH_HOME:-$HOME/.local/share/hearth}/sandboxes"
if [ -d "$home_sandboxes" ]; then
  left_files="$left_files$(find "$home_sandboxes" -mindepth 1 -maxdepth 1 -newer "$marker")"
fi
if [ -n "$left_files" ]; then
  echo "$left_files" >&2
  echo "test: FAILED: sandbox files left behind by the tests" >&2
  failed=1
fi
# Each jailed QEMU has a cgroup of its own, removed once QEMU is reaped.
left_cgroups=$(find /sys/fs/cgroup -mindepth 3 -maxdepth 9 -type d -path '*/hearth/vmm/*' -newer "$marker" 2>/dev/null || true)
if [ -n "$left_cgroups" ]; then
  echo "$left_cgroups" >&2
  echo "test: FAILED: VMM cgroups left behind by the tests" >&2
  failed=1
fi
left_dbs=$(runuser -u postgres -- psql -qtA -c "SELECT datname FROM pg_database WHERE datname LIKE 'hearth\_t\_%'" 2>/dev/null || true)
if [ -n "$left_dbs" ]; then
  echo "$left_dbs" >&2
  echo "test: FAILED: test databases left behind" >&2
  failed=1
fi
rm -f "$marker"
[ "$failed" -eq 0 ] || exit 1
echo "test: nothing left over" >&2
# CI machines have bounded disks; say what the build took.
echo "test: disk used by build outputs: $(du -sh target 2>/dev/null | cut -f1) (target)" >&2
