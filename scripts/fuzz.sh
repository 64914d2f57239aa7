#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/fuzz_*.cpp, clang) and runs each for
# SECONDS (default 60), starting from the seed corpus in fuzz/corpus/<target>/.
#   scripts/fuzz.sh [SECONDS] [TARGET...]      e.g. scripts/fuzz.sh 30 tokenizer
# Inputs found along the way collect in $BUILD_DIR/fuzz-work/corpus/<target>/
# (never in the repository), crashes in $BUILD_DIR/fuzz-work/artifacts/.
# Prints executions per target; exits non-zero when any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-60}
shift || true
BUILD_DIR=${SDGEN_FUZZ_BUILD_DIR:-build-fuzz}
SHARED_DIR=${SDGEN_SHARED_DIR:-$(cd .. && pwd)/shared}
WORK=$BUILD_DIR/fuzz-work

# Longest input per target: long enough for every construct of the format,
# short enough that each run stays fast (BPE and PNG decoding grow with size).
declare -A MAX_LEN=([safetensors]=4096 [tokenizer]=1024 [prompt_weights]=2048
                    [prompt_file]=4096 [png_params]=8192 [sentencepiece]=4096
                    [lora_names]=1024 [pickle]=16384 [image_api]=4096)

scripts/install-deps.sh
need=()
command -v clang++ >/dev/null || need+=(clang)
dpkg-query -W -f='${Status}' libclang-rt-14-dev 2>/dev/null | grep "install ok installed" >/dev/null ||
  need+=(libclang-rt-14-dev)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "fuzz: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    clang libclang-rt-14-dev >/dev/null
fi

LAUNCHER=()
if command -v ccache >/dev/null; then LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
CC=clang CXX=clang++ cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DSDGEN_FUZZ=ON -DSDGEN_BUILD_TESTS=OFF -DSDGEN_PCH=OFF \
  -DSDGEN_SHARED_DIR="$SHARED_DIR" "${LAUNCHER[@]}" >/dev/null
cmake --build "$BUILD_DIR" --target fuzz -j "$(nproc)"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for src in fuzz/fuzz_*.cpp; do
    name=$(basename "$src" .cpp)
    targets+=("${name#fuzz_}")
  done
fi

failed=()
summary=()
for t in "${targets[@]}"; do
  mkdir -p "$WORK/corpus/$t" "$WORK/artifacts"
  log="$WORK/$t.log"
  echo "fuzz: $t for ${SECONDS_PER_TARGET}s (max_len ${MAX_LEN[$t]:-4096})" >&2
  rc=0
  # -timeout: one input taking longer than this is reported as a hang.
  "$BUILD_DIR/fuzz_$t" -max_total_time="$SECONDS_PER_TARGET" -max_len="${MAX_LEN[$t]:-4096}" \
    -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$WORK/artifacts/$t-" \
    "$WORK/corpus/$t" "fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    summary+=("$(printf '%-16s FAILED (exit %d), see %s' "$t" "$rc" "$log")")
    grep -E "ERROR|SUMMARY|Test unit written|runtime error" "$log" | head -20 >&2 || true
  else
    summary+=("$(printf '%-16s %10s executions in %ss (%s/s)' "$t" "${execs:-?}" \
      "$SECONDS_PER_TARGET" "${speed:-?}")")
  fi
done

echo "fuzz summary:"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs in $WORK/artifacts/)" >&2
  exit 1
fi
