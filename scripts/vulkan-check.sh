#!/usr/bin/env bash
# Vulkan check (not CI; slow: ggml's Vulkan shaders take a long while to
# build on few cores): build `shardline` with the `vulkan` feature, serve
# Mesa's software Vulkan driver (lavapipe, Debian `mesa-vulkan-drivers`)
# with `shardline worker`, and run tests/gpu_worker.rs against it: stages on
# the Vulkan device compared with llama.cpp's CPU output.
#
#   scripts/vulkan-check.sh            # apt-installs what is missing (root or sudo)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
dpkg -s libvulkan-dev >/dev/null 2>&1 || need+=(libvulkan-dev)
command -v glslc >/dev/null 2>&1 || need+=(glslc)
# ggml's CMake asks FindVulkan for glslangValidator as well.
command -v glslangValidator >/dev/null 2>&1 || need+=(glslang-tools)
# …and SPIRV-Headers' CMake package.
dpkg -s spirv-headers >/dev/null 2>&1 || need+=(spirv-headers)
command -v vulkaninfo >/dev/null 2>&1 || need+=(vulkan-tools)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
# The pinned ggml uses VK_EXT_layer_settings from Vulkan-Headers 1.3.261+;
# Debian 12 has 1.3.239. Then the headers of Debian 13's libvulkan-dev are
# unpacked into a private folder (not installed) and put first on the C++
# include path; the loader and driver stay Debian 12's.
hdr_version=$(sed -n 's/^#define VK_HEADER_VERSION \([0-9]*\)$/\1/p' /usr/include/vulkan/vulkan_core.h)
if [ "${hdr_version:-0}" -lt 261 ]; then
  vk_dir=$HOME/.cache/shardline/vulkan-headers
  if [ ! -f "$vk_dir/usr/include/vulkan/vulkan.hpp" ]; then
    deb=libvulkan-dev_1.4.309.0-1_amd64.deb
    mkdir -p "$vk_dir"
    curl -fsSL -o "$vk_dir/$deb" "http://deb.debian.org/debian/pool/main/v/vulkan-loader/$deb"
    dpkg -x "$vk_dir/$deb" "$vk_dir"
  fi
  export CXXFLAGS="${CXXFLAGS:-} -isystem $vk_dir/usr/include"
  echo "Vulkan headers $hdr_version are too old for ggml: using $vk_dir/usr/include"
fi
vulkaninfo --summary 2>/dev/null | grep -E "deviceName|deviceType" || true
# Its own build folder: the feature rebuilds ggml.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/shardline/target-vulkan}
# A configure step that failed (a package was missing) leaves a build folder
# the cmake crate would not configure again; so does one configured before
# the private headers were put on the include path.
for d in "$CARGO_TARGET_DIR"/release/build/llama-cpp-sys-2-*/out/build; do
  [ -d "$d" ] || continue
  if [ ! -f "$d/Makefile" ] || { [ -n "${vk_dir:-}" ] && ! grep -q "$vk_dir" "$d/CMakeCache.txt"; }; then
    rm -rf "$(dirname "$(dirname "$d")")"
  fi
done
export SHARDLINE_TEST_MODEL=${SHARDLINE_TEST_MODEL:-$(scripts/fetch-model.sh)}
cargo build --release --locked --features vulkan --bin shardline
# ggml's Vulkan backend passes over CPU-type devices unless told which to use.
export GGML_VK_VISIBLE_DEVICES=${GGML_VK_VISIBLE_DEVICES:-0}
out=$(mktemp -d)
"$CARGO_TARGET_DIR/release/shardline" worker --port 0 --device Vulkan0 > "$out/worker.log" 2>&1 &
worker=$!
# The worker's own log is shown when the check fails: an abort there names
# the op the device could not run.
trap 'rc=$?; kill $worker 2>/dev/null || true; [ $rc -eq 0 ] || { echo "--- worker log:"; tail -40 "$out/worker.log"; }; rm -rf "$out"' EXIT
for _ in $(seq 600); do
  grep -q "ready" "$out/worker.log" 2>/dev/null && break
  kill -0 $worker 2>/dev/null || { cat "$out/worker.log"; exit 1; }
  sleep 0.1
done
cat "$out/worker.log"
endpoint=$(grep -o 'endpoint=[^ ]*' "$out/worker.log" | head -1 | cut -d= -f2)
"$CARGO_TARGET_DIR/release/shardline" cluster --rpc "$endpoint"
SHARDLINE_GPU_RPC=$endpoint SHARDLINE_GPU_KIND=gpu \
  cargo test --release --locked --features vulkan --test gpu_worker -- --nocapture
