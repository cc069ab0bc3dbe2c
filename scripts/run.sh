#!/usr/bin/env bash
# The main job on a fresh machine: install prerequisites, fetch the test model,
# build shardline, start two local workers (ggml's rpc-server code), and show
# the cluster and the model it would shard. Extra arguments go to
# `shardline cluster` (e.g. --rpc host:port,host:port to use real servers).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/shardline/target}
model=$(scripts/fetch-model.sh)
cargo build --release --locked --bin shardline
bin="$CARGO_TARGET_DIR/release/shardline"
"$bin" inspect "$model"
echo
"$bin" cluster "$@"
