#!/usr/bin/env bash
# sdgen against stable-diffusion.cpp on this machine's CPU, side by side.
#
#   scripts/bench-cpu.sh [--sd-cli PATH] [--model CKPT] [--steps N] [--rounds R] [--threads T]
#                        [--dtypes LIST]
#
# Runs sdgen-bench (once per --dtype in LIST, comma-separated, default "auto";
# e.g. fp32,fp32-lowmem) and (when --sd-cli is given) stable-diffusion.cpp's
# CLI on the same checkpoint, size (512x512), sampler (Euler), guidance 7.5 and
# threads, alternating R rounds so that a noisy shared machine affects all
# alike, and prints per-step time, fixed cost (load + text encoding + VAE
# decode), the whole image, peak resident memory and the ratios of
# stable-diffusion.cpp to each sdgen dtype. Without --model it makes a
# full-size SD1.5-shaped checkpoint of random fp16 weights from
# ../shared/data/manifests.json. The repository does not contain or build
# stable-diffusion.cpp: build it yourself and pass the binary.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SDGEN_BUILD_DIR:-$root/build}
sdcli="" model="" steps=20 rounds=2 threads=$(nproc) dtypes=auto extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --sd-cli) sdcli=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --dtypes) dtypes=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "bench-cpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$build/sdgen-bench" ] || { echo "build sdgen first (scripts/test.sh or cmake --build build)" >&2; exit 1; }
shared=${SDGEN_SHARED_DIR:-$root/../shared}
if [ -z "$model" ]; then
  model=${TMPDIR:-/tmp}/sdgen-sd15-fp16.safetensors
  [ -f "$model" ] || "$build/sdgen-mkmodel" manifest --manifest "$shared/data/manifests.json" \
    --key sd15.single --out "$model"
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
prompt="a photograph of an astronaut riding a horse"

# One JSON line per run in sdgen-<dtype>.jsonl (the last line sdgen-bench prints).
run_sdgen() {
  "$build/sdgen-bench" --device cpu --model "$model" --tokenizer "$shared/data/clip" \
    --steps "$steps" --sampler euler --cfg-scale 7.5 --warmup-steps 0 --repeats 1 \
    --threads "$threads" --dtype "$1" "${extra[@]}" >"$out/sdgen.out" 2>>"$out/sdgen.err"
  tail -n 1 "$out/sdgen.out" >>"$out/sdgen-$1.jsonl"
}

# stable-diffusion.cpp prints "sampling completed, taking Xs",
# "get_learned_condition completed, taking Xs", "decode_first_stage completed,
# taking Xs"; /usr/bin/time gives wall time and peak RSS. Newer versions load
# weights lazily (inside the first step) unless given --eager-load.
sdcpp_flags() {
  if "$sdcli" --help 2>&1 | grep -- "--eager-load" >/dev/null; then echo --eager-load; fi
}
run_sdcpp() {
  local log="$out/sdcpp-$1.log"
  /usr/bin/time -v "$sdcli" -m "$model" -p "$prompt" --steps "$steps" -W 512 -H 512 \
    --sampling-method euler --cfg-scale 7.5 -s 42 -t "$threads" -o "$out/sdcpp.png" \
    $(sdcpp_flags) >"$log" 2>&1
  python3 - "$log" "$steps" >>"$out/sdcpp.jsonl" <<'PY'
import json, re, sys
text = open(sys.argv[1], errors="replace").read()
steps = int(sys.argv[2])
def num(pattern):
    m = re.findall(pattern, text)
    return float(m[-1]) if m else None
wall = text.split("Elapsed (wall clock) time (h:mm:ss or m:ss):")[-1].split("\n")[0].strip()
parts = [float(p) for p in wall.split(":")]
wall_s = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
sampling = num(r"sampling completed, taking ([0-9.]+) ?s")
text_s = num(r"get_learned_condition completed, taking ([0-9.]+) ?s")
decode_s = num(r"decode_first_stage completed, taking ([0-9.]+) ?s")
rss_kb = num(r"Maximum resident set size \(kbytes\): ([0-9]+)")
print(json.dumps({"total_s": wall_s, "sampling_s": sampling,
                  "unet_step_s": sampling / steps if sampling else None,
                  "fixed_s": wall_s - sampling if sampling else None,
                  "text_encode_s": text_s, "vae_decode_s": decode_s,
                  "peak_rss_mb": rss_kb / 1024 if rss_kb else None}))
PY
}

IFS=, read -r -a dtype_list <<<"$dtypes"
for r in $(seq 1 "$rounds"); do
  for d in "${dtype_list[@]}"; do
    echo "round $r/$rounds: sdgen --dtype $d" >&2
    run_sdgen "$d"
  done
  if [ -n "$sdcli" ]; then
    echo "round $r/$rounds: stable-diffusion.cpp" >&2
    run_sdcpp "$r"
  fi
done

python3 - "$out" "$steps" "$dtypes" <<'PY'
import json, os, statistics, sys
out, steps, dtypes = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
def rows(name):
    path = os.path.join(out, name)
    return [json.loads(l) for l in open(path)] if os.path.exists(path) else []
def med(rs, key):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None
runs = [(f"sdgen {d}", rows(f"sdgen-{d}.jsonl")) for d in dtypes]
sdcpp = rows("sdcpp.jsonl")
for _, rs in runs:  # sdgen-bench's total_s excludes loading; the process wall time includes it
    for r in rs:
        r["whole_s"] = r["load_s"] + r["total_s"]
for r in sdcpp:
    r["whole_s"] = r["total_s"]
for name, rs in runs:
    if rs:
        print(f"{name}:", json.dumps(rs[-1]))
fields = [("per step (CFG) s", "unet_step_s"), ("fixed cost s", "fixed_s"),
          ("load s", "load_s"), ("text encode s", "text_encode_s"),
          ("VAE decode s", "vae_decode_s"), ("whole image s", "whole_s"),
          ("peak RSS MB", "peak_rss_mb")]
cols = runs + ([("sd.cpp", sdcpp)] if sdcpp else [])
print(f"\n{steps} steps, 512x512, Euler, guidance 7.5, median of "
      + ", ".join(f"{len(rs)} {name}" for name, rs in cols) + " runs")
header = f"{'':18}" + "".join(f" {name:>18}" for name, _ in cols)
if sdcpp:
    header += "".join(f" {'sd.cpp/' + name.split()[-1]:>18}" for name, _ in runs)
print(header)
def fmt(v):
    return f" {v:18.2f}" if v is not None else f" {'-':>18}"
for label, key in fields:
    line = f"{label:18}" + "".join(fmt(med(rs, key)) for _, rs in cols)
    if sdcpp:
        y = med(sdcpp, key)
        for _, rs in runs:
            x = med(rs, key)
            line += fmt(y / x if x and y else None)
    print(line)
PY
