#!/usr/bin/env bash
# The whole test suite, from a fresh machine: prerequisites, test model, unit
# and end-to-end tests (real workers on loopback), and the fuzz targets' build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# A build folder outside the checkout survives fresh clones (ggml takes minutes
# to build on 2 cores); override with CARGO_TARGET_DIR.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/shardline/target}
export SHARDLINE_TEST_MODEL=${SHARDLINE_TEST_MODEL:-$(scripts/fetch-model.sh)}
cargo test --workspace --locked
echo "fuzz targets:" >&2
cargo check --manifest-path fuzz/Cargo.toml --bins
