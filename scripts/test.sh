#!/usr/bin/env bash
# Builds sdgen and runs the whole test suite (installs missing packages first).
# Reference data is read from ../shared (or $SDGEN_SHARED_DIR); tests that need
# it are skipped with a message when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

BUILD_DIR=${SDGEN_BUILD_DIR:-build}
SHARED_DIR=${SDGEN_SHARED_DIR:-$(cd .. && pwd)/shared}
JOBS=$(nproc)
LAUNCHER=()
if command -v ccache >/dev/null; then LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi

cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DSDGEN_SHARED_DIR="$SHARED_DIR" "${LAUNCHER[@]}" "$@"
cmake --build "$BUILD_DIR" -j "$JOBS"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS"
