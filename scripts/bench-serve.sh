#!/usr/bin/env bash
# What `sdgen serve` costs per image over the command line's batch (issue 31:
# target under 5% and under 20 ms): the same N images, model loaded once in
# both, through
#   - `sdgen --prompt-file` (one process; --json prints a line per image, and
#     the time between the first and the last line over N gives seconds per
#     image without the load and the first image's warm-up), and
#   - `sdgen serve` (K + 1 warm-up requests, K = --server-warmup: 8, one per
#     HTTP thread, on the tiny model; then N sequential POST
#     /sdapi/v1/txt2img from one client, timed on the client: the request,
#     the queue, the image, its PNG, base64 and JSON, the transfer; a server
#     started for each round),
# alternating R rounds so that a noisy machine affects both alike (the
# median of the rounds is reported). The images of both must be equal, byte
# for byte (the same work is timed). Prints wall and CPU seconds per image
# for each (CPU: the sdgen process's, from /proc), and the overhead in ms and %.
#
# On a machine shared with other jobs, set OMP_WAIT_POLICY=passive: libgomp's
# threads otherwise spin-wait for cores that others hold, and they spin far
# less in the server (whose HTTP threads each get an OpenMP team, so libgomp
# sees more threads than cores and throttles its spinning) than in the
# command line; measured on 2 busy cores, that made the command line 7x
# slower per image than the server and its CPU time 25x (tiny model, 64x64).
# With more than one thread the two processes' OpenMP teams still differ
# (the server's run on its HTTP threads), which on the tiny model outweighs
# the HTTP work; --threads 1 isolates what the server adds.
#
#   scripts/bench-serve.sh [--full] [--model PATH] [--images N] [--steps S] [--size PX]
#                          [--threads T] [--rounds R] [--server-warmup K]
#
# Default: the tiny model (../shared/models/sd1-tiny), 20 images of 64x64, 2
# steps, 3 rounds (about 40 s). --full: a full-size SD1.5-shaped checkpoint of
# random fp16 weights (made from ../shared/data/manifests.json by sdgen-mkmodel
# when missing, as scripts/bench-cpu.sh does; /tmp/sd15-random-fp16.safetensors
# is used when present), 4 images of 128x128, 1 step, 1 round, 2 server
# warm-ups (about 5 minutes on 2 cores: 11 s an image).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SDGEN_BUILD_DIR:-$root/build}
shared=${SDGEN_SHARED_DIR:-$root/../shared}
model="" images="" steps="" size="" threads=$(nproc) rounds="" full=0 warmup=""
while [ $# -gt 0 ]; do
  case $1 in
    --full) full=1; shift ;;
    --model) model=$2; shift 2 ;;
    --images) images=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --server-warmup) warmup=$2; shift 2 ;;
    *) echo "bench-serve.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$build/sdgen" ] || { echo "build sdgen first (cmake --build build --target sdgen)" >&2; exit 1; }
serve_help=$("$build/sdgen" serve --help 2>&1 || true)
[[ $serve_help == *--queue-size* ]] || { echo "sdgen was built without serve (cpp-httplib)" >&2; exit 1; }
model_flags=()
if [ "$full" = 1 ]; then
  if [ -z "$model" ]; then
    model=${TMPDIR:-/tmp}/sdgen-sd15-fp16.safetensors
    [ -f /tmp/sd15-random-fp16.safetensors ] && [ ! -f "$model" ] && model=/tmp/sd15-random-fp16.safetensors
    [ -f "$model" ] || "$build/sdgen-mkmodel" manifest --manifest "$shared/data/manifests.json" \
      --key sd15.single --out "$model"
  fi
  model_flags=(--tokenizer "$shared/data/clip")
  images=${images:-4} size=${size:-128} steps=${steps:-1} rounds=${rounds:-1} warmup=${warmup:-2}
else
  model=${model:-$shared/models/sd1-tiny}
  images=${images:-20} size=${size:-64} steps=${steps:-2} rounds=${rounds:-3} warmup=${warmup:-8}
fi
[ -e "$model" ] || { echo "no model at $model" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
python3 - "$build/sdgen" "$model" "$images" "$steps" "$size" "$threads" "$rounds" "$warmup" "$out" \
  "${model_flags[@]}" <<'PY'
import base64, http.client, json, os, socket, statistics, subprocess, sys, time

sdgen, model, n, steps, size, threads, rounds, warmup, out = sys.argv[1:10]
extra = sys.argv[10:]
n, steps, size, rounds, warmup = int(n), int(steps), int(size), int(rounds), int(warmup)
flags = ["--model", model, "--threads", threads, *extra]
# N + 1 images: the first is the warm-up of both. The server gets `warmup`
# (--server-warmup, default 8) more first: each of cpp-httplib's threads (8)
# pays once for its first image (its own OpenMP team, thread-local caches),
# which a long-running server has long paid.
jobs = [{"prompt": f"a photograph of a red fox number {i}", "seed": 1000 + i} for i in range(n + 1)]
warmups = [{"prompt": f"a warm-up {i}", "seed": i} for i in range(warmup)]
settings = {"steps": steps, "width": size, "height": size, "cfg_scale": 7}


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cli_round(r):
    """Wall and CPU seconds per image of one --prompt-file run, and its images by seed."""
    prompts = os.path.join(out, "prompts.txt")
    with open(prompts, "w") as f:
        for job in jobs:
            f.write(json.dumps(dict(job, **settings, sampler="Euler")) + "\n")
    args = [sdgen, *flags, "--prompt-file", prompts, "--json", "-q",
            "-o", os.path.join(out, f"cli-{r}-{{index}}.png")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    times, cpu, pngs, generating = [], [], {}, []
    for line in proc.stdout:
        times.append(time.monotonic())
        cpu.append(cpu_seconds(proc.pid))
        doc = json.loads(line)
        generating.append(doc["timings"]["total_s"])
        with open(doc["path"], "rb") as f:
            pngs[doc["seed"]] = f.read()
        os.remove(doc["path"])
    err = proc.stderr.read()
    if proc.wait() != 0 or len(times) != n + 1:
        sys.exit(f"sdgen --prompt-file failed ({len(times)} images):\n{err}")
    # Lines 2..N+1 are the measured images (the first is the warm-up).
    return (times[-1] - times[0]) / n, (cpu[-1] - cpu[0]) / n, pngs, sum(generating[1:]) / n


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server():
    """`sdgen serve` on a free port, once its model is loaded; (process, port)."""
    port = free_port()
    log_path = os.path.join(out, "serve.log")
    server = subprocess.Popen([sdgen, "serve", *flags, "--port", str(port)],
                              stderr=open(log_path, "wb"))
    t0 = time.monotonic()
    while True:
        if server.poll() is not None:
            sys.exit("sdgen serve exited: " + open(log_path).read()[-2000:])
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                break
        except OSError:
            pass
        time.sleep(0.1)
    print(f"bench-serve: sdgen serve loaded {os.path.basename(model)} in "
          f"{time.monotonic() - t0:.1f} s", file=sys.stderr)
    return server, port


def post(port, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    conn.request("POST", "/sdapi/v1/txt2img", json.dumps(body), {"Content-Type": "application/json"})
    res = conn.getresponse()
    payload = res.read()
    conn.close()
    if res.status != 200:
        sys.exit(f"HTTP {res.status}: {payload[:300]!r}")
    return json.loads(payload)


def generation_seconds(port):
    """sdgen_image_seconds_sum of the server's GET /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    for line in text.splitlines():
        if line.startswith("sdgen_image_seconds_sum "):
            return float(line.split()[1])
    sys.exit("GET /metrics has no sdgen_image_seconds_sum")


def serve_round():
    """Wall and CPU (the server's) seconds per image of N sequential requests
    (after one warm-up), and the images. The server runs only for this round,
    so that one process at a time holds the model (a full-size one in fp32
    takes 4 GB)."""
    server, port = start_server()
    try:
        pngs = {}
        start = cpu0 = None
        for i, job in enumerate(warmups + jobs):
            if i == len(warmups) + 1:
                gen0 = generation_seconds(port)
                start, cpu0 = time.monotonic(), cpu_seconds(server.pid)
            doc = post(port, dict(job, **settings, sampler_name="Euler"))
            if i >= len(warmups):
                pngs[job["seed"]] = base64.b64decode(doc["images"][0])
        wall, cpu = (time.monotonic() - start) / n, (cpu_seconds(server.pid) - cpu0) / n
        return wall, cpu, pngs, (generation_seconds(port) - gen0) / n
    finally:
        server.terminate()
        server.wait()


cli, srv, cli_cpu, srv_cpu, cli_out, srv_out = [], [], [], [], [], []
for r in range(rounds):
    c, c_cpu, cli_pngs, c_gen = cli_round(r)
    s, s_cpu, srv_pngs, s_gen = serve_round()
    if cli_pngs != srv_pngs:
        sys.exit("the server's images differ from the command line's")
    cli.append(c)
    srv.append(s)
    cli_cpu.append(c_cpu)
    srv_cpu.append(s_cpu)
    cli_out.append(c - c_gen)
    srv_out.append(s - s_gen)
    print(f"bench-serve: round {r + 1}: CLI {c:.4f} s/image ({c_cpu:.4f} CPU, "
          f"{(c - c_gen) * 1000:.1f} ms outside generation), serve {s:.4f} s/image "
          f"({s_cpu:.4f} CPU, {(s - s_gen) * 1000:.1f} ms outside generation)", file=sys.stderr)
c, s = statistics.median(cli), statistics.median(srv)
c_cpu, s_cpu = statistics.median(cli_cpu), statistics.median(srv_cpu)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"model {os.path.basename(model)}, {n} images {size}x{size}, {steps} steps, Euler, "
      f"{threads} threads, median of {rounds} rounds; {cpu}, {os.cpu_count()} cores")
print(f"  sdgen --prompt-file : {c:.4f} s/image wall, {c_cpu:.4f} s/image CPU")
print(f"  sdgen serve (HTTP)  : {s:.4f} s/image wall, {s_cpu:.4f} s/image CPU (the server's)")
print(f"  overhead            : {(s - c) * 1000:+.1f} ms/image ({(s / c - 1) * 100:+.1f}%) wall, "
      f"{(s_cpu - c_cpu) * 1000:+.1f} ms/image ({(s_cpu / c_cpu - 1) * 100:+.1f}%) CPU")
c_out, s_out = statistics.median(cli_out), statistics.median(srv_out)
print(f"  outside generation  : CLI {c_out * 1000:.1f} ms/image, serve {s_out * 1000:.1f} ms/image: "
      f"the server adds {(s_out - c_out) * 1000:+.1f} ms/image ({(s_out - c_out) / c * 100:+.2f}%)")
PY
