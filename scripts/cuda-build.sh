#!/usr/bin/env bash
# Builds `shardline` with the `cuda` feature (ggml's CUDA backend), so that
# `shardline worker` serves NVIDIA GPUs. Not part of CI: it needs a CUDA
# toolkit and takes over an hour on 2 cores (ggml-cuda is ~150 objects).
#
#   scripts/cuda-build.sh                 # binary in $CARGO_TARGET_DIR/release/shardline
#   CMAKE_CUDA_ARCHITECTURES="86;89" scripts/cuda-build.sh
#
# Where `nvcc` is missing on Debian bookworm, it installs Debian's
# `nvidia-cuda-toolkit` (CUDA 11.8) from the `contrib non-free` components.
# With CUDA 11.8 two things need help:
# - the pinned ggml calls two CUDA 12 device functions of programmatic
#   dependent launch; scripts/cuda/pdl-cuda11.cuh supplies them (forced
#   include), and `GGML_CUDA_PDL=0` turns the feature off at run time;
# - llama-cpp-sys-2 links cudart_static & co. from `$CUDA_LIBRARY_PATH/lib64`,
#   /usr/local/cuda or /opt/cuda only, while Debian keeps them in
#   /usr/lib/x86_64-linux-gnu: a folder whose lib64 points there is made and
#   passed as CUDA_LIBRARY_PATH.
# A toolkit from NVIDIA (CUDA 12) under /usr/local/cuda needs neither.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/shardline/target-cuda}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
if ! command -v nvcc >/dev/null 2>&1; then
  if ! grep -qs bookworm /etc/os-release; then
    echo "cuda-build: no nvcc; install a CUDA toolkit (https://developer.nvidia.com/cuda-downloads) and put nvcc on PATH" >&2
    exit 1
  fi
  echo "cuda-build: installing Debian's nvidia-cuda-toolkit (bookworm contrib non-free)" >&2
  list=/etc/apt/sources.list.d/shardline-non-free.sources
  if [ ! -f "$list" ]; then
    printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' \
      'Suites: bookworm bookworm-updates' 'Components: contrib non-free' \
      'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' | $SUDO tee "$list" >/dev/null
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    nvidia-cuda-toolkit nvidia-cuda-dev >&2
fi
scripts/setup.sh >/dev/null

cuda_version=$(nvcc --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\).*/\1\2/p')
echo "cuda-build: nvcc $(nvcc --version | sed -n 's/.*\(release [0-9.]*\).*/\1/p')" >&2
export CMAKE_CUDA_ARCHITECTURES=${CMAKE_CUDA_ARCHITECTURES:-90}
if [ "${cuda_version:-0}" -lt 120 ]; then
  export CMAKE_CUDA_FLAGS="${CMAKE_CUDA_FLAGS:-} -include $PWD/scripts/cuda/pdl-cuda11.cuh"
fi
if [ -z "${CUDA_LIBRARY_PATH:-}" ] && [ ! -e /usr/local/cuda/lib64 ] && [ ! -e /opt/cuda/lib64 ]; then
  lib=$(dirname "$(find /usr/lib -name libcudart_static.a -print -quit 2>/dev/null || true)")
  if [ "$lib" = . ]; then
    echo "cuda-build: libcudart_static.a not found (Debian: nvidia-cuda-dev)" >&2
    exit 1
  fi
  root=$HOME/.cache/shardline/cuda-libs
  mkdir -p "$root"
  ln -sfn "$lib" "$root/lib64"
  export CUDA_LIBRARY_PATH=$root
fi
# A CMake build folder configured without these flags would be reused as is.
for d in "$CARGO_TARGET_DIR"/release/build/llama-cpp-sys-2-*/out/build; do
  if [ -f "$d/CMakeCache.txt" ] && ! grep -q "CMAKE_CUDA_ARCHITECTURES:.*=$CMAKE_CUDA_ARCHITECTURES\$" "$d/CMakeCache.txt"; then
    echo "cuda-build: removing $d (configured for other GPUs)" >&2
    rm -rf "$d"
  fi
done
cargo build --release --locked --features cuda --bin shardline "$@"
echo "cuda-build: $CARGO_TARGET_DIR/release/shardline (run: shardline worker --device CUDA0)" >&2
