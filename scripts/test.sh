#!/usr/bin/env bash
# Runs the whole test suite: starts a local PostgreSQL when none answers,
# points DATABASE_URL at it (each test creates and drops its own database),
# installs the real API servers (scripts/real-servers/setup.sh, cached), then
# runs `cargo test`. Extra arguments go to cargo test.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh pagination      # tests whose name contains "pagination"
#   scripts/test.sh real_servers    # the real-server suite alone
#
# DATABASE_URL may name another server; its role needs CREATEDB.
set -euo pipefail
cd "$(dirname "$0")/.."

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
scripts/init_db.sh

# The real API servers tests/it/real_servers syncs from (DRF, FastAPI,
# json-server): installed once into a cache outside the clone and reused after
# (seconds). setup.sh prints `export APISYNC_REAL_SERVERS=…`; the assignment
# stops the script when it fails.
real_servers="$(scripts/real-servers/setup.sh)"
eval "$real_servers"

cargo test --all-targets "$@"
