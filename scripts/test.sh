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
# The official openai and ollama Python clients, for tests/openai_client.rs and
# tests/ollama_serve.rs: a venv outside
# the checkout (override with SHARDLINE_VENV), refreshed only when it cannot
# import what the test needs.
venv=${SHARDLINE_VENV:-$HOME/.cache/shardline/venv}
if ! "$venv/bin/python" -c 'import openai, ollama, prometheus_client, jsonschema' >/dev/null 2>&1; then
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "test: installing python3-venv" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >&2
  fi
  echo "test: setting up $venv (openai, ollama, prometheus-client, jsonschema)" >&2
  python3 -m venv --clear "$venv" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check 'openai>=1' 'ollama>=0.4' 'prometheus-client>=0.17' 'jsonschema>=4.17' >&2
fi
export SHARDLINE_TEST_PYTHON="$venv/bin/python"
cargo test --workspace --locked
# The llama.cpp comparison bench, short: both clients on the same workers,
# two rounds (both orders); it exits 1 when their greedy tokens differ.
echo "rpc_vs_llama bench, short:" >&2
SHARDLINE_BENCH_ROUNDS=2 SHARDLINE_BENCH_TOKENS=8 cargo test --locked --bench rpc_vs_llama
# The library on its own: no HTTP server, no command line, none of their crates.
echo "library without default features:" >&2
cargo build --locked --no-default-features --examples
# anyhow is looked for among the library's own dependencies only: llguidance
# (constrained decoding) and its crates use it inside.
if cargo tree --locked --no-default-features -e normal -p shardline \
  | grep -E ' (axum|hyper|hyper-util|toml|clap|tracing-subscriber) v' \
  || cargo tree --locked --no-default-features -e normal -p shardline --depth 1 \
  | grep -E ' anyhow v'; then
  echo "test: the library without default features still depends on the crates above" >&2
  exit 1
fi
# The worker's systemd unit, where systemd-analyze is installed (its
# ExecStart pointed at the binary just built).
if command -v systemd-analyze >/dev/null 2>&1; then
  echo "deploy/shardline-worker.service:" >&2
  unit_dir=$(mktemp -d)
  sed "s#/usr/local/bin/shardline#$CARGO_TARGET_DIR/debug/shardline#" \
    deploy/shardline-worker.service > "$unit_dir/shardline-worker.service"
  systemd-analyze verify "$unit_dir/shardline-worker.service"
  rm -rf "$unit_dir"
fi
echo "fuzz targets:" >&2
cargo check --manifest-path fuzz/Cargo.toml --bins
