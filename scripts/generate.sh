#!/usr/bin/env bash
# Builds sdgen if needed (installing missing packages) and runs it:
#   scripts/generate.sh --prompt "a red circle above a blue square" -o out.png
# Without --model it uses models/default, made on first use.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${SDGEN_BUILD_DIR:-$ROOT/build}

"$ROOT/scripts/install-deps.sh"

if [ ! -x "$BUILD_DIR/sdgen" ] || [ ! -x "$BUILD_DIR/sdgen-mkmodel" ] || [ -n "$(find "$ROOT/src" "$ROOT/include" "$ROOT/tools" "$ROOT/CMakeLists.txt" -newer "$BUILD_DIR/sdgen" -print -quit 2>/dev/null)" ]; then
  echo "generate.sh: building sdgen (first time takes a few minutes)" >&2
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$BUILD_DIR" -j "$(nproc)" --target sdgen sdgen-mkmodel >&2
fi

has_model=0
for arg in "$@"; do
  case "$arg" in -m|--model|--model=*) has_model=1 ;; esac
done
if [ $has_model -eq 0 ] && [ ! -f "$ROOT/models/default/model_index.json" ]; then
  echo "generate.sh: making the default model (tiny random weights: its pictures are noise)" >&2
  "$BUILD_DIR/sdgen-mkmodel" tiny --out "$ROOT/models/default" --seed 0 >&2
fi

exec "$BUILD_DIR/sdgen" "$@"
