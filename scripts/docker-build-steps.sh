#!/usr/bin/env bash
# The Dockerfile's build steps, run outside Docker, so that a broken step is
# caught where no Docker engine runs (CI here). A test checks that every
# `RUN cargo …` line of the Dockerfile appears below, word for word. As in the
# Dockerfile, the planner sees the sources, the builder cooks the recipe
# alone, then gets the sources and builds.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

command -v cargo-chef >/dev/null 2>&1 || cargo install cargo-chef --locked --version 0.1.78

# The build context, as .dockerignore leaves it.
context() {
  tar --exclude=./target --exclude=./.git --exclude=./.ci --exclude=./.env -C "$repo" -cf - . \
    | tar -xf - -C "$1"
}
planner="$(mktemp -d)"
builder="$(mktemp -d)"
trap 'rm -rf "$planner" "$builder"' EXIT
# Kept between runs, like Docker's layer cache.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/docker-steps}"

context "$planner"
(cd "$planner" && cargo chef prepare --recipe-path recipe.json)

cp "$planner/recipe.json" "$builder/"
# A patched dependency (see vendor/README.md): the recipe does not carry it.
cp -r "$repo/vendor" "$builder/"
cd "$builder"
cargo chef cook --release --locked --recipe-path recipe.json --bin apisync
context "$builder"
cargo build --release --locked --bin apisync

# The real binary, not cargo-chef's placeholder.
version="$("$CARGO_TARGET_DIR/release/apisync" --version)"
echo "$version"
[[ "$version" == apisync\ * ]]
