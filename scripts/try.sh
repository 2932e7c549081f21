#!/usr/bin/env bash
# A tour with nothing to configure: starts PostgreSQL when none answers, serves
# a sample paginated API on loopback, syncs it into the database `apisync_try`
# twice (the second run finds everything unchanged and writes nothing), and
# shows the runs table.
set -euo pipefail
cd "$(dirname "$0")/.."

server="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
DATABASE_URL="$server" scripts/init_db.sh
# APISYNC_TRY_DATABASE: the database of the tour [apisync_try] (the tests use
# one of their own).
try_db="${APISYNC_TRY_DATABASE:-apisync_try}"
export DATABASE_URL="${server%/*}/$try_db"
psql "$server" -qtAc "SELECT 1 FROM pg_database WHERE datname = '$try_db'" | grep -q 1 \
  || psql "$server" -qc "CREATE DATABASE $try_db"

# APISYNC_TRY_BINARIES: a folder holding apisync and examples/sample_api
# already built (the tests pass target/debug); else a release build.
bin="${APISYNC_TRY_BINARIES:-target/release}"
if [ -z "${APISYNC_TRY_BINARIES:-}" ]; then
  cargo build --release --quiet --bin apisync --example sample_api
fi
export SAMPLE_API="127.0.0.1:${SAMPLE_API_PORT:-8089}"
"$bin/examples/sample_api" "$SAMPLE_API" >/dev/null &
api_pid=$!
trap 'kill $api_pid 2>/dev/null' EXIT
for _ in $(seq 1 50); do
  (exec 3<>"/dev/tcp/${SAMPLE_API%:*}/${SAMPLE_API#*:}") 2>/dev/null && break
  sleep 0.1
done

# A tour run before left its rows: then the first sync finds them unchanged.
earlier="$(psql "$DATABASE_URL" -qtAc "SELECT count(*) FROM products" 2>/dev/null || echo 0)"
if [ "${earlier:-0}" -gt 0 ]; then
  echo "# first run: the database holds $earlier records from an earlier tour, so they are unchanged"
else
  echo "# first run: every record is new"
fi
"$bin/apisync" sync products --config config/try.toml
echo "# second run: nothing changed upstream, so nothing is written"
"$bin/apisync" sync products --config config/try.toml
echo "# the audit table (apisync runs)"
"$bin/apisync" runs products --limit 5 --config config/try.toml
