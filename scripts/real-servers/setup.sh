#!/usr/bin/env bash
# Installs the real third-party API servers that tests/it/real_servers syncs
# from, into a cache outside the clone, and builds their seed data:
#
#   - Django REST Framework (a Ticket model, 5,002 rows in a template SQLite
#     file each test copies; django-oauth-toolkit issues OAuth2 tokens for a
#     copy behind auth), FastAPI + fastapi-pagination, and Datasette
#     (serving a copy of that same file), in one venv;
#   - json-server 0.17.4 and 1.0.0-beta.3, one node_modules each.
#
# Versions are pinned in requirements.txt and in each json-server-*/
# package-lock.json. Each part lives in a directory named after the hash of
# what it was built from (pins, interpreter version, seed sources) and counts
# as installed only once its .stamp exists, so a run that died halfway is
# redone, a changed pin gets a new directory, and an unchanged one is reused:
# the second run takes a second or two. CI runs on fresh clones on the same
# machine and reuses the cache the same way.
#
# stdout carries one line for the shell, everything else goes to stderr:
#
#   eval "$(scripts/real-servers/setup.sh)"   # exports APISYNC_REAL_SERVERS
#
# APISYNC_REAL_SERVERS names a directory of fixed names (venv, json-server-0.17,
# json-server-1, drf.sqlite3, json-server.json) linking into the cache.
#
# Environment:
#   APISYNC_REAL_SERVERS_CACHE   the cache [$HOME/.cache/apisync-real-servers]
#   APISYNC_REAL_SERVERS_PYTHON  the interpreter for the venv [python3]
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${APISYNC_REAL_SERVERS_CACHE:-$HOME/.cache/apisync-real-servers}"
python="${APISYNC_REAL_SERVERS_PYTHON:-python3}"
json_server_versions=(0.17.4 1.0.0-beta.3)
started=$SECONDS

log() { printf 'real-servers: %s\n' "$*" >&2; }
die() {
  log "FAILED: $*"
  exit 1
}
# The first 16 hex digits of the SHA-256 of stdin: enough to tell builds apart.
digest() { sha256sum | cut -c1-16; }

command -v "$python" >/dev/null 2>&1 || die "no $python (set APISYNC_REAL_SERVERS_PYTHON)"
command -v node >/dev/null 2>&1 || die "no node on PATH (json-server needs Node 18.3 or later)"
command -v npm >/dev/null 2>&1 || die "no npm on PATH"
node_version="$(node --version)"
node_major="${node_version#v}"
node_major="${node_major%%.*}"
[ "$node_major" -ge 18 ] || die "node $node_version is too old: json-server 1.0.0-beta.3 needs 18.3 or later"

mkdir -p "$cache"
# Two setups at once (the main checkout and a worktree, or a developer and
# CI) would build into the same directories: the second waits.
exec 9>"$cache/.lock"
flock 9

# --- Python: Django REST Framework, FastAPI ---------------------------------
python_id="$("$python" -c 'import sys; print(sys.version, sys.executable)')" ||
  die "$python does not run"
python_key="$( (cat "$here/requirements.txt"; echo "$python_id") | digest)"
venv="$cache/python-$python_key"
if [ -f "$venv/.stamp" ]; then
  log "python: reusing $venv"
else
  log "python: creating a venv in $venv ($("$python" --version 2>&1))"
  rm -rf "$venv"
  "$python" -m venv "$venv" || die "python -m venv $venv"
  log "python: installing requirements.txt (Django, DRF, FastAPI, fastapi-pagination, uvicorn, Datasette)"
  # --no-deps: requirements.txt pins the whole tree; pip check proves it does.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    -r "$here/requirements.txt" || die "pip install -r requirements.txt"
  "$venv/bin/python" -m pip check >&2 || die "requirements.txt misses a dependency (pip check)"
  echo "$python_key" >"$venv/.stamp"
fi

# --- Node: json-server, one tree per version --------------------------------
declare -A json_server_bin
for version in "${json_server_versions[@]}"; do
  src="$here/json-server-$version"
  key="$( (cat "$src/package.json" "$src/package-lock.json"; echo "$node_version") | digest)"
  dir="$cache/json-server-$version-$key"
  if [ -f "$dir/.stamp" ]; then
    log "json-server $version: reusing $dir"
  else
    log "json-server $version: npm ci into $dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$src/package.json" "$src/package-lock.json" "$dir/"
    # --ignore-scripts: nothing in these trees needs an install script.
    (cd "$dir" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2) ||
      die "npm ci for json-server $version"
    echo "$key" >"$dir/.stamp"
  fi
  # 0.17 ships its command as lib/cli/bin.js, 1.x as lib/bin.js.
  bin="$dir/node_modules/json-server/lib/cli/bin.js"
  [ -f "$bin" ] || bin="$dir/node_modules/json-server/lib/bin.js"
  [ -f "$bin" ] || die "json-server $version: no lib/cli/bin.js or lib/bin.js in $dir"
  reported="$(node "$bin" --version 2>/dev/null)" || die "json-server $version does not start"
  [ "$reported" = "$version" ] || die "json-server in $dir says it is $reported, not $version"
  json_server_bin[$version]="$bin"
done

# --- Seed data: templates each test copies ----------------------------------
# Built from the DRF project (its migrations) and seed/records.py, by the venv
# above: a change to any of them is a new template.
data_key="$( (
  echo "$python_key"
  cd "$here"
  find drf seed -type f -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum
) | digest)"
data="$cache/data-$data_key"
if [ -f "$data/.stamp" ]; then
  log "seed data: reusing $data"
else
  log "seed data: building templates in $data"
  rm -rf "$data"
  mkdir -p "$data"
  export PYTHONDONTWRITEBYTECODE=1
  (cd "$here/drf" && TICKETS_DB="$data/drf.sqlite3" "$venv/bin/python" manage.py migrate --verbosity 0) ||
    die "DRF migrate"
  (cd "$here/drf" && TICKETS_DB="$data/drf.sqlite3" "$venv/bin/python" manage.py seed_tickets >&2) ||
    die "DRF seed_tickets"
  (cd "$here/drf" && TICKETS_DB="$data/drf.sqlite3" "$venv/bin/python" manage.py seed_oauth >&2) ||
    die "DRF seed_oauth"
  "$venv/bin/python" "$here/seed/records.py" json-server "$data/json-server.json" ||
    die "json-server db.json"
  echo "$data_key" >"$data/.stamp"
fi

# --- The directory the tests read -------------------------------------------
set_key="$(echo "$python_key $data_key ${json_server_bin[*]}" | digest)"
servers="$cache/servers-$set_key"
mkdir -p "$servers"
# A link to the venv, not to its bin/python: Python finds its venv from the
# path it was started by, and a link elsewhere would hide pyvenv.cfg.
rm -f "$servers/python"
ln -sfn "$venv" "$servers/venv"
ln -sfn "${json_server_bin[0.17.4]}" "$servers/json-server-0.17"
ln -sfn "${json_server_bin[1.0.0-beta.3]}" "$servers/json-server-1"
ln -sfn "$data/drf.sqlite3" "$servers/drf.sqlite3"
ln -sfn "$data/json-server.json" "$servers/json-server.json"

log "ready in $((SECONDS - started)) s: APISYNC_REAL_SERVERS=$servers"
printf 'export APISYNC_REAL_SERVERS=%q\n' "$servers"
