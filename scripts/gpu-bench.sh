#!/usr/bin/env bash
# Builds sdgen on a CUDA machine against the pip torch there, runs the CUDA
# golden tests and the benchmark variants that show what each optimisation
# is worth, and writes everything under OUTDIR. Made for a GPU box without
# Debian's -dev packages: it expects third-party headers in .deps/include
# (stb_image.h, stb_image_write.h), GoogleTest sources in .deps/googletest,
# perhaps sentencepiece in .deps/sp and zlib in .deps/lib, and the reference
# data in .deps/shared (a copy of ../shared), all git-ignored.
#
#   scripts/gpu-bench.sh OUTDIR [steps]
#
# BENCH_MODEL=sdxl benchmarks a full-size random SDXL base instead (1024x1024,
# Euler, guidance 5, 30 steps unless given) and, when diffusers' src/ is in
# .deps/diffusers/src (git-ignored; carry it), times diffusers'
# StableDiffusionXLPipeline eager and compiled in the same run
# (scripts/diffusers-baseline.py; BENCH_MODEL=sd15 does the same for SD1.5).
# BENCH_MIXED_ONLY=1 runs only the build, test_cuda and the 64-prompt
# mixed-batch run (TEST_CUDA_FILTER='Cuda.MixedPrompt*' narrows the tests):
#   TEST_CUDA_FILTER='Cuda.MixedPrompt*' BENCH_MIXED_ONLY=1 scripts/gpu-bench.sh OUTDIR
set -uo pipefail
out=${1:?usage: scripts/gpu-bench.sh OUTDIR [steps]}
model=${BENCH_MODEL:-sd15}
if [ "$model" = sdxl ]; then steps=${2:-30}; else steps=${2:-50}; fi
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build-gpu"
mkdir -p "$out"
shared="$root/.deps/shared"
[ -d "$shared" ] || shared="$root/../shared"
log() { echo "== $(date +%T) $*" | tee -a "$out/summary.txt"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$out/gpu.txt"
prefix=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
python3 -c 'import torch;print("torch", torch.__version__, torch.version.cuda)' | tee -a "$out/gpu.txt"

extra=()
# No zlib development files there: use a static copy from .deps (headers in .deps/include).
if [ ! -e /usr/include/zlib.h ] && [ -e "$root/.deps/lib/libz.a" ]; then
  extra+=(-DZLIB_INCLUDE_DIR="$root/.deps/include" -DZLIB_LIBRARY="$root/.deps/lib/libz.a")
fi
# Nor perhaps sentencepiece's (only sdgen-spm links it): a copy of Debian's
# headers and libraries in .deps/sp/{include,lib}.
if [ ! -e /usr/include/sentencepiece_processor.h ] && [ -d "$root/.deps/sp" ]; then
  extra+=(-DSENTENCEPIECE_INCLUDE_DIR="$root/.deps/sp/include"
    -DSENTENCEPIECE_LIBRARY="$root/.deps/sp/lib/libsentencepiece.so"
    -DSENTENCEPIECE_TRAIN_LIBRARY="$root/.deps/sp/lib/libsentencepiece_train.so")
fi
configure() {
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
    -DSDGEN_SHARED_DIR="$shared" "${extra[@]}" "$@" >"$out/configure.log" 2>&1
}
log "build"
if ! configure; then tail -30 "$out/configure.log"; exit 1; fi
# The library, the benchmark and the CUDA tests first; then everything else
# that builds (-k 0), so one broken target does not hide the GPU results.
if ! { configure && ninja -C "$build" -j"$(nproc)" sdgen-bench test_cuda >"$out/build.log" 2>&1; }; then
  grep -E "error|Error" "$out/build.log" | head -40
  log "build with CUDA extras failed; retrying with -DSDGEN_CUDA=OFF (no graphs)"
  configure -DSDGEN_CUDA=OFF && ninja -C "$build" -j"$(nproc)" sdgen-bench test_cuda >"$out/build-nocuda.log" 2>&1 ||
    { tail -50 "$out/build-nocuda.log"; exit 1; }
fi
log "built"

log "test_cuda"
"$build/test_cuda" ${TEST_CUDA_FILTER:+--gtest_filter=$TEST_CUDA_FILTER} 2>&1 | tee "$out/test_cuda.log" | grep -E "parity|device:|OK|FAILED|PASSED|Failure|error" | head -40

ckpt=/tmp/sdgen-sd15-fp16.safetensors
model_args=()
bench_timeout=100
if [ "$model" = sdxl ]; then
  ckpt=/tmp/sdgen-sdxl-fp16.safetensors
  model_args=(--manifest-key sdxl.single -W 1024 -H 1024 --sampler euler --cfg-scale 5)
  bench_timeout=400
fi
bench() {
  local label=$1
  shift
  timeout $bench_timeout "$build/sdgen-bench" --device cuda --steps "$steps" --cache "$ckpt" \
    --manifest "$shared/data/manifests.json" --tokenizer "$shared/data/clip" --label "$label" \
    "${model_args[@]}" "$@" 2>>"$out/bench.err" | tee -a "$out/bench.jsonl"
}
# diffusers' pipeline on the same device, same settings (random fp16 weights).
diffusers_baseline() {
  local src="$root/.deps/diffusers/src"
  [ -d "$src" ] || { log "no $src: diffusers baseline skipped"; return; }
  local guidance=7.5
  [ "$model" = sdxl ] && guidance=5
  log "diffusers baseline ($model)"
  PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}" timeout ${DIFFUSERS_TIMEOUT:-480} \
    python3 "$root/scripts/diffusers-baseline.py" --model "$model" --steps "$steps" \
    --guidance "$guidance" --repeats "${DIFFUSERS_REPEATS:-2}" --vocab "$shared/data/clip" \
    2>>"$out/diffusers.err" | tee -a "$out/diffusers.jsonl"
}
# A prompt file's throughput (issue 32): 64 different prompts and seeds at
# 512x512, through sdgen-bench (the library: mixed-prompt batches of the
# default --max-batch against one at a time, in one process) and through the
# sdgen binary (prompt file to PNGs, model load included) with the default
# --max-batch and --max-batch 1, back to back on the same GPU.
mixed_prompts() {
  local n=${MIXED_PROMPTS:-64}
  log "mixed prompts: $n different prompts, $steps steps, 512x512"
  bench_timeout=${MIXED_TIMEOUT:-400} bench fp16-mixed$n --dtype fp16 --channels-last on \
    --batch-sizes 1 --repeats 1 --mixed-prompts "$n"
  ninja -C "$build" -j"$(nproc)" sdgen >"$out/build-sdgen.log" 2>&1 ||
    { log "sdgen did not build: the prompt-file run is skipped"; return; }
  local dir="$out/mixed-cli" subjects styles i
  mkdir -p "$dir"
  subjects=("an astronaut riding a horse" "a red fox in the snow" "a lighthouse at dusk"
    "a bowl of ramen" "a castle on a hill" "a cat wearing a hat" "a city street in the rain")
  styles=("oil painting" "photograph, 4k" "watercolor, soft light" "detailed illustration"
    "pencil sketch")
  : >"$dir/prompts.txt"
  for ((i = 0; i < n; i++)); do
    local negative=""
    [ $((i % 2)) = 1 ] && negative=', "negative_prompt": "blurry, low quality"'
    echo "{\"prompt\": \"${subjects[i % 7]}, ${styles[(i / 7) % 5]}, variation $i\", \"seed\": $((1000 + i))$negative}" >>"$dir/prompts.txt"
  done
  local label args start end count
  for label in default 1; do
    args=()
    [ "$label" = default ] || args=(--max-batch "$label")
    rm -rf "$dir/max-batch-$label"
    start=$(date +%s.%N)
    timeout "${MIXED_TIMEOUT:-400}" "$build/sdgen" --model "$ckpt" --tokenizer "$shared/data/clip" \
      --device cuda --dtype fp16 --steps "$steps" -W 512 -H 512 --prompt-file "$dir/prompts.txt" \
      -o "$dir/max-batch-$label/{index}.png" -q --json "${args[@]}" \
      >"$dir/max-batch-$label.jsonl" 2>"$dir/max-batch-$label.err"
    local rc=$?
    end=$(date +%s.%N)
    count=$(find "$dir/max-batch-$label" -name '*.png' 2>/dev/null | wc -l)
    log "sdgen --prompt-file, --max-batch $label: rc $rc, $count images in $(awk "BEGIN{printf \"%.1f\", $end - $start}") s, $(awk "BEGIN{printf \"%.2f\", $count / ($end - $start)}") images/s (load included)"
  done
}

log "bench ($model)"
if [ "${BENCH_MIXED_ONLY:-0}" = 1 ] && [ "$model" = sd15 ]; then
  mixed_prompts
  log "done"
  exit 0
fi
if [ "$model" = sdxl ]; then
  bench sdxl-fp16-graphs-cl --dtype fp16 --channels-last on --batch-sizes 1 --repeats 2
  bench sdxl-fp16-eager-cl --dtype fp16 --channels-last on --no-cuda-graphs --batch-sizes 1 \
    --repeats 1
  bench sdxl-lora32-merge-fp16 --dtype fp16 --load-only --lora-rank 32
  diffusers_baseline
  log "done"
  exit 0
fi
# Main configuration (the defaults), then one optimisation off at a time.
bench fp16-graphs-cl --dtype fp16 --channels-last on
mixed_prompts
if [ "${BENCH_QUICK:-0}" = 1 ]; then
  bench fp16-graphs --dtype fp16 --channels-last off --batch-sizes 1
  log "bench done"; exit 0
fi
bench fp16-eager-cl --dtype fp16 --channels-last on --no-cuda-graphs --batch-sizes 1
bench fp16-graphs --dtype fp16 --channels-last off --batch-sizes 1
bench fp16-eager --dtype fp16 --channels-last off --no-cuda-graphs --batch-sizes 1
bench bf16-graphs-cl --dtype bf16 --channels-last on --batch-sizes 1
bench fp32-graphs --dtype fp32 --channels-last off --batch-sizes 1 --repeats 1
# LoRA merge and restore of a random rank-32 LoRA on kohya's default layers.
bench lora32-merge-fp16 --dtype fp16 --load-only --lora-rank 32
log "bench done"
[ "${BENCH_DIFFUSERS:-0}" = 1 ] && diffusers_baseline

if [ "${SKIP_CTEST:-0}" = 1 ]; then
  # Quick look at the CPU test binaries' exit instead of the whole suite.
  ninja -C "$build" -j"$(nproc)" test_image_io test_rng >/dev/null 2>&1
  for t in test_image_io test_rng; do
    "$build/$t" --gtest_filter='-*' >/dev/null 2>&1; echo "$t, no tests: rc=$?"
    "$build/$t" >/dev/null 2>&1; echo "$t: rc=$?"
    MALLOC_CHECK_=3 "$build/$t" 2>&1 | tail -2; echo "$t MALLOC_CHECK_=3: rc=$?"
  done
  ldd "$build/test_rng" | grep -vE "linux-vdso|ld-linux" | awk '{print $1, $3}' | head -30
else
  ninja -C "$build" -j"$(nproc)" -k 0 >"$out/build-rest.log" 2>&1 || grep -E "error" "$out/build-rest.log" | head -20
  log "built the rest"
  log "ctest"
  (cd "$build" && timeout ${CTEST_TIMEOUT:-120} ctest -j4 --output-on-failure -E test_cuda >"$out/ctest.log" 2>&1)
  tail -15 "$out/ctest.log"
fi
log "done"
