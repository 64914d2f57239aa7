#!/usr/bin/env bash
# Builds sdgen and runs the whole test suite (installs missing packages first).
# Reference data is read from ../shared (or $SDGEN_SHARED_DIR); tests that need
# it are skipped with a message when it is absent.
#
#   scripts/test.sh [--fast] [cmake arguments...]
#
# --fast: the build and the ctest suite only, without the ASan/UBSan and fuzz
# stages (as SDGEN_SKIP_HARDENING=1). Every other argument goes to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."

CMAKE_ARGS=()
for arg in "$@"; do
  if [ "$arg" = --fast ]; then SDGEN_SKIP_HARDENING=1; else CMAKE_ARGS+=("$arg"); fi
done

# Each stage's wall time on stderr ("test.sh: build took 812 s"), for CI's log.
stage_start=$SECONDS
stage_done() {
  echo "test.sh: $1 took $((SECONDS - stage_start)) s" >&2
  stage_start=$SECONDS
}

scripts/install-deps.sh
stage_done "installing packages"

BUILD_DIR=${SDGEN_BUILD_DIR:-build}
SHARED_DIR=${SDGEN_SHARED_DIR:-$(cd .. && pwd)/shared}
JOBS=$(nproc)
LAUNCHER=()
if command -v ccache >/dev/null; then LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi

# With the ASan stage below, the tests it runs (cmake/sanitize.cmake's list)
# run there only, not also here without the sanitizers.
ASAN_ONLY=OFF
if [ "${SDGEN_SKIP_HARDENING:-0}" != 1 ] && [ "${SDGEN_SANITIZE_CI:-1}" = 1 ]; then ASAN_ONLY=ON; fi
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DSDGEN_SHARED_DIR="$SHARED_DIR" -DSDGEN_SANITIZED_TESTS_ONLY_UNDER_ASAN=$ASAN_ONLY \
  "${LAUNCHER[@]}" "${CMAKE_ARGS[@]}"
cmake --build "$BUILD_DIR" -j "$JOBS"
stage_done build
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS"
stage_done ctest

# Hardening (issue 7): every fuzz target for a short, fixed time (CI runs it;
# skip locally with --fast or SDGEN_SKIP_HARDENING=1), and the fast tests
# (parsers, loaders, the bad-input table, the tiny-model pipeline and the
# binary end to end) built with ASan + UBSan in their own build folder.
# Measured on a clean clone, 2-core EPYC, no ccache, 2026-12-08 (35.2 min in
# all): build 10.6 min, ctest 6.3, ASan build 11.2, ASan tests 3.1, fuzz
# build and runs 4.0.
# SDGEN_SANITIZE_CI=0 skips the ASan stage.
if [ "${SDGEN_SKIP_HARDENING:-0}" != 1 ]; then
  if [ "${SDGEN_SANITIZE_CI:-1}" = 1 ]; then
    ASAN_DIR=${SDGEN_ASAN_BUILD_DIR:-build-asan}
    cmake -S . -B "$ASAN_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSDGEN_SANITIZE=ON \
      -DSDGEN_SHARED_DIR="$SHARED_DIR" "${LAUNCHER[@]}" "${CMAKE_ARGS[@]}"
    cmake --build "$ASAN_DIR" --target sanitize-tests -j "$JOBS"
    stage_done "ASan build"
    # Leak checking off (libtorch keeps process-lifetime allocations); memory
    # errors and undefined behaviour stay fatal.
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
      ctest --test-dir "$ASAN_DIR" -L sanitize --output-on-failure -j "$JOBS"
    stage_done "ASan tests"
  fi
  scripts/fuzz.sh "${SDGEN_FUZZ_SECONDS:-10}"
  stage_done "fuzz build and runs"
fi
