#!/usr/bin/env bash
# The Dockerfile's build steps, run outside Docker, so that a broken step is
# caught where no Docker engine runs (CI here). A test checks that every
# `RUN cargo …` line of the Dockerfile appears below, word for word.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-chef >/dev/null 2>&1 || cargo install cargo-chef --locked --version 0.1.78

# The build context, as .dockerignore leaves it.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
tar --exclude=./target --exclude=./.git --exclude=./.ci --exclude=./.env -cf - . | tar -xf - -C "$work"
cd "$work"
# Kept between runs, like Docker's layer cache.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$OLDPWD/target/docker-steps}"

cargo chef prepare --recipe-path recipe.json
cargo chef cook --release --locked --recipe-path recipe.json --bin apisync
cargo build --release --locked --bin apisync
"$CARGO_TARGET_DIR/release/apisync" --version
