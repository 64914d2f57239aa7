#!/usr/bin/env bash
# Builds sdgen if needed (installing missing packages) and runs it:
#   scripts/generate.sh --prompt "a red circle above a blue square" --steps 20 -o out.png
# Without --model it uses models/default, the small model sdgen trained itself
# (models/README.md).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${SDGEN_BUILD_DIR:-$ROOT/build}

"$ROOT/scripts/install-deps.sh"

if [ ! -x "$BUILD_DIR/sdgen" ] || [ -n "$(find "$ROOT/src" "$ROOT/include" "$ROOT/tools" "$ROOT/CMakeLists.txt" -newer "$BUILD_DIR/sdgen" -print -quit 2>/dev/null)" ]; then
  echo "generate.sh: building sdgen (first time takes a few minutes)" >&2
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$BUILD_DIR" -j "$(nproc)" --target sdgen >&2
fi

exec "$BUILD_DIR/sdgen" "$@"
