#!/usr/bin/env bash
# GPU check (not CI): on a machine with a GPU toolkit (CUDA's nvcc, or the
# Vulkan SDK) but no Rust toolchain, build ggml's RPC server for the GPU from
# the pinned llama.cpp sources and run tests/gpu_worker.rs against it: each
# 64-wide-head family on the GPU alone and split with a CPU `shardline
# worker`, compared with llama.cpp's CPU output.
#
#   scripts/gpu-check.sh prepare        # here: binaries and sources into .gpu/
#   scripts/gpu-check.sh run [cuda|vulkan] [OUT]   # there, from the repo root
#
# `prepare` builds the release test binary and `shardline`, strips them and
# copies ggml's sources (without the backends not built) into .gpu/, which
# .git/info/exclude should ignore; carry .gpu to the GPU machine. With
# Vulkan, the same `run` on a Debian machine with mesa-vulkan-drivers, glslc
# and libvulkan-dev checks Mesa's software driver (lavapipe); there
# `cargo build --release --features vulkan` builds `shardline worker` itself
# for it (README, "GPU workers").
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-}
case "$cmd" in
prepare)
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/shardline/target}
  # PROFILE=debug reuses a debug build (quicker when one is warm).
  profile=${PROFILE:-release}
  flag=--release
  [ "$profile" = release ] || flag=
  mkdir -p .gpu
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  cargo build $flag --locked --bin shardline
  test_exe=$(cargo test $flag --locked --test gpu_worker --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="gpu_worker" and m.get("executable"): print(m["executable"])')
  strip -o .gpu/gpu_worker "$test_exe"
  strip -o .gpu/shardline "$CARGO_TARGET_DIR/$profile/shardline"
  # Where the test binary looks for `shardline` and its temp dir (paths
  # fixed at compile time), for `run` to recreate there.
  echo "$CARGO_TARGET_DIR" > .gpu/target_dir
  echo "$profile" > .gpu/profile
  src=$(ls -d "$HOME"/.cargo/registry/src/*/llama-cpp-sys-2-0.1.161/llama.cpp/ggml | head -1)
  rm -rf .gpu/ggml
  cp -a "$src" .gpu/ggml
  for b in sycl opencl hexagon metal et openvino webgpu cann virtgpu musa zdnn; do
    rm -rf ".gpu/ggml/src/ggml-$b"
  done
  du -sh .gpu
  ;;
run)
  backend=${2:-cuda}
  out=${3:-/tmp/gpu-check}
  mkdir -p "$out"
  build=/tmp/shardline-gpu-build
  case "$backend" in
  cuda) opts=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS:-native}") ;;
  vulkan) opts=(-DGGML_VULKAN=ON) ;;
  *) echo "gpu-check: backend is cuda or vulkan, not $backend" >&2; exit 2 ;;
  esac
  gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  started=$(date +%s)
  cmake -S scripts/gpu -B "$build" "${gen[@]}" -DGGML_DIR="$PWD/.gpu/ggml" -DGGML_NATIVE=OFF \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF "${opts[@]}" > "$out/cmake.log" 2>&1 \
    || { tail -30 "$out/cmake.log"; exit 1; }
  cmake --build "$build" -j "$(nproc)" --target rpc_server > "$out/build.log" 2>&1 \
    || { tail -40 "$out/build.log"; exit 1; }
  echo "gpu-check: rpc_server built in $(( $(date +%s) - started )) s"
  target=$(cat .gpu/target_dir)
  profile=$(cat .gpu/profile 2>/dev/null || echo release)
  mkdir -p "$target/$profile" "$target/tmp"
  install -m 755 .gpu/shardline "$target/$profile/shardline"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$build/rpc_server" "127.0.0.1:$port" > "$out/server.log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  for _ in $(seq 100); do
    grep -q "serving on" "$out/server.log" 2>/dev/null && break
    sleep 0.1
  done
  cat "$out/server.log"
  "$target/$profile/shardline" cluster --rpc "127.0.0.1:$port" | tee "$out/cluster.txt"
  SHARDLINE_GPU_RPC="127.0.0.1:$port" SHARDLINE_GPU_KIND=$([ "$backend" = cuda ] && echo cuda || echo gpu) \
    .gpu/gpu_worker --nocapture --test-threads 1 2>&1 | tee "$out/gpu_worker.log"
  ;;
*)
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
  ;;
esac
