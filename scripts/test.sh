#!/usr/bin/env bash
# Runs the whole test suite: starts a local PostgreSQL when none answers,
# points DATABASE_URL at it (each test creates and drops its own database),
# then runs `cargo test`. Extra arguments go to cargo test.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh pagination      # tests whose name contains "pagination"
#
# DATABASE_URL may name another server; its role needs CREATEDB.
set -euo pipefail
cd "$(dirname "$0")/.."

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
scripts/init_db.sh

cargo test --all-targets "$@"
