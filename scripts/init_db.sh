#!/usr/bin/env bash
# Makes sure the PostgreSQL named by DATABASE_URL answers. When it does not and
# it is meant to be local, starts the machine's cluster (Debian's
# pg_ctlcluster) or, failing that, a throwaway cluster under target/pgdata.
set -euo pipefail
cd "$(dirname "$0")/.."

url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
port="$(sed -E 's#^[a-z]+://([^@/]*@)?[^:/]*:?([0-9]*)/.*#\2#' <<<"$url")"
port="${port:-5432}"

answers() { pg_isready -q -h 127.0.0.1 -p "$port" 2>/dev/null; }
wait_until_ready() {
  for _ in $(seq 1 60); do answers && return 0; sleep 0.5; done
  echo "init_db: PostgreSQL on port $port did not come up" >&2
  return 1
}

if ! command -v pg_isready >/dev/null 2>&1; then
  echo "init_db: PostgreSQL client tools are missing (Debian: apt-get install postgresql)" >&2
  exit 1
fi
answers && exit 0

# The machine's own cluster, when there is one (Debian/Ubuntu packaging).
if command -v pg_lsclusters >/dev/null 2>&1 && [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
  read -r version name _ < <(pg_lsclusters -h | head -n 1)
  echo "init_db: starting cluster $version/$name" >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start || true
  wait_until_ready && exit 0
fi

# Otherwise a throwaway cluster, trust auth on loopback only.
bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
[ -x "$bindir/initdb" ] || { echo "init_db: no initdb found; install PostgreSQL" >&2; exit 1; }
data="$PWD/target/pgdata"
run_as=()
[ "$(id -u)" = 0 ] && run_as=(runuser -u postgres --)
if [ ! -f "$data/PG_VERSION" ]; then
  mkdir -p "$data" && [ "$(id -u)" = 0 ] && chown postgres "$data"
  "${run_as[@]}" "$bindir/initdb" -D "$data" -U postgres -A trust >/dev/null
fi
echo "init_db: starting a throwaway cluster in $data" >&2
"${run_as[@]}" "$bindir/pg_ctl" -D "$data" -l "$data/log" \
  -o "-c listen_addresses=127.0.0.1 -p $port -k /tmp" start >/dev/null
wait_until_ready
