#!/usr/bin/env bash
# The main job on a fresh machine: install prerequisites, fetch the test model,
# build shardline, and generate text with the model sharded over two local
# workers that shardline starts itself (ggml's rpc-server code).
# Arguments go to `shardline run` (e.g. --rpc host:port,host:port for real
# servers, --prompt TEXT, --chat, --temperature 0, --stats).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/shardline/target}
model=$(scripts/fetch-model.sh)
cargo build --release --locked --bin shardline
bin="$CARGO_TARGET_DIR/release/shardline"
if [ $# -eq 0 ]; then
  set -- --chat --prompt "Explain in two sentences why the sky is blue." --stats
fi
exec "$bin" run --model "$model" "$@"
