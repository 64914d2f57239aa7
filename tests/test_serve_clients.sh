#!/usr/bin/env bash
# `sdgen serve` (issue 31) driven by real, unmodified clients, on the tiny model:
#   a. the official `openai` npm package (OpenAI's Node SDK, installed from npm
#      into a temporary folder): client.images.generate() with baseURL pointing
#      at the server returns n decodable 64x64 PNGs, equal byte for byte to the
#      command line's images for the same settings; an unsupported size makes
#      the client throw OpenAI's BadRequestError (400, param "size");
#   b. curl with the txt2img payloads of A1111's wiki "API" page (the
#      "maltese puppy", 5 steps example, and the override_settings example
#      with CLIP_stop_at_last_layers), at 64x64 instead of the default 512x512
#      (too slow here); the images come back as base64 (decoded by base64 -d);
#   c. the PNG info round trip: each returned image POSTed to
#      /sdapi/v1/png-info gives back its parameters text as "info";
#   d. each API image equals the command line's image (`sdgen ... -o FILE`)
#      for the same prompt, seed, steps, size, sampler and CLIP skip, byte for
#      byte (cmp).
#
#   tests/test_serve_clients.sh BUILD_DIR SHARED_DIR     (ctest: test_serve_clients, label serve)
# Installs what it needs when missing (curl, nodejs, npm: Debian's packages;
# apt-get needs root) and the pinned openai package (npm's cache in
# BUILD_DIR/serve-clients-cache, so later runs install offline in seconds).
# Exit code 77 (ctest: skipped), with the reason, when sdgen was built without
# `serve`, the tiny model is missing, or Node/npm/openai cannot be installed
# (then b-d still run and must pass).
set -euo pipefail

# The newest openai release for Node 20 (openai 5 needs Node 22): `npm view openai@4 version`.
OPENAI_VERSION=4.104.0

build=$(cd "$1" && pwd)
shared=${SDGEN_SHARED_DIR:-$2}  # as the C++ tests: the environment wins
model=$shared/models/sd1-tiny
sdgen=$build/sdgen

skip() {
  echo "test_serve_clients: skipped: $*"
  exit 77
}
fail() {
  echo "test_serve_clients: FAILED: $*" >&2
  [ -z "${tmp:-}" ] || [ ! -s "$tmp/serve.log" ] || { echo "--- server log" >&2; tail -n 20 "$tmp/serve.log" >&2; }
  exit 1
}
started=$SECONDS
say() { printf '== [%3ds] %s\n' $((SECONDS - started)) "$*"; }

[ -x "$sdgen" ] || fail "$sdgen is missing: build it first"
serve_help=$("$sdgen" serve --help 2>&1 || true)
[[ $serve_help == *--queue-size* ]] || skip "sdgen was built without \`serve\` (no cpp-httplib)"
[ -f "$model/model_index.json" ] || skip "the tiny model $model is missing (SDGEN_SHARED_DIR)"

# --- tools ----------------------------------------------------------------------
# Debian packages for the missing commands; false when they cannot be installed.
apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  say "installing $*"
  local log rc=0
  log=$(mktemp)
  {
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get -o DPkg::Lock::Timeout=120 update -qq &&
      DEBIAN_FRONTEND=noninteractive timeout 600 apt-get -o DPkg::Lock::Timeout=120 install -y -qq \
        --no-install-recommends "$@"
  } >"$log" 2>&1 || rc=$?
  [ "$rc" = 0 ] || tail -n 20 "$log"
  rm -f "$log"
  return "$rc"
}
command -v curl >/dev/null || apt_install curl ca-certificates || fail "curl is missing and cannot be installed"
command -v python3 >/dev/null || fail "python3 is missing"
node_skip=""
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install nodejs npm || true
  command -v node >/dev/null && command -v npm >/dev/null ||
    node_skip="Node.js and npm are missing and apt-get could not install them"
fi

tmp=$(mktemp -d /tmp/sdgen-serve-clients.XXXXXX)
server_pid=""
cleanup() {
  local rc=$?
  set +e
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -9 "$server_pid"
    wait "$server_pid" 2>/dev/null
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT

# --- the server (it loads the model while npm installs) ---------------------------
# The OpenAI route takes seed and steps from the server's command line: the
# command line (d) uses the same ones.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
# One thread on both sides (the images of equal thread counts are equal): on a
# busy machine two OpenMP threads spin-wait for each other and made the
# command line's run 4x slower.
common=(--model "$model" --threads 1)
"$sdgen" serve "${common[@]}" --seed 21 --steps 2 --port "$port" 2>"$tmp/serve.log" &
server_pid=$!

# --- the openai package, installed from npm ---------------------------------------
cache=$build/serve-clients-cache/npm
if [ -z "$node_skip" ]; then
  say "node $(node --version): installing openai@$OPENAI_VERSION"
  mkdir -p "$cache" "$tmp/node"
  echo '{"private": true, "type": "module"}' >"$tmp/node/package.json"
  rc=0
  (cd "$tmp/node" && NPM_CONFIG_UPDATE_NOTIFIER=false timeout 180 npm install \
    --cache "$cache" --prefer-offline --no-audit --no-fund --no-save --loglevel=error \
    "openai@$OPENAI_VERSION" >"$tmp/npm.log" 2>&1) || rc=$?
  if [ "$rc" != 0 ]; then
    tail -n 20 "$tmp/npm.log"
    node_skip="npm could not install openai@$OPENAI_VERSION (exit code $rc, log above)"
  else
    say "openai@$OPENAI_VERSION installed"
  fi
fi

for _ in $(seq 600); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/health")" = 200 ] && break
  kill -0 "$server_pid" 2>/dev/null || fail "sdgen serve exited"
  sleep 0.1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "$base/health")" = 200 ] || fail "sdgen serve was not ready in 60 s"
say "sdgen serve ready on $base"

# d: each API image's settings become a line of one prompt file; at the end
# one `sdgen --prompt-file` run (one model load) writes them, then cmp.
same_as_cli() {  # API_PNG SETTINGS_JSON (prompt-file keys)
  python3 -c 'import json, sys
line = json.loads(sys.argv[2])
line["output"] = sys.argv[1] + ".cli.png"
print(json.dumps(line))' "$1" "$2" >>"$tmp/cli-prompts.txt"
  echo "$1" >>"$tmp/cli-images.txt"
}

# PNG width and height from its header: "64x64".
png_size() {
  python3 -c 'import struct, sys
d = open(sys.argv[1], "rb").read(24)
assert d[:8] == b"\x89PNG\r\n\x1a\n" and d[12:16] == b"IHDR", "not a PNG"
print("%dx%d" % struct.unpack(">II", d[16:24]))' "$1"
}

# --- a. the openai npm package ---------------------------------------------------
if [ -z "$node_skip" ]; then
  cat >"$tmp/node/generate.mjs" <<'EOF'
// OpenAI's own Node client, as its README shows it, against sdgen serve.
import OpenAI from 'openai';
import { writeFileSync } from 'node:fs';

const [baseURL, outDir, prompt] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: 'sk-not-checked', maxRetries: 0, timeout: 120000 });
const result = await client.images.generate({
  model: 'dall-e-2', prompt, n: 2, size: '64x64', response_format: 'b64_json', user: 'test',
});
if (!Number.isInteger(result.created) || result.data.length !== 2)
  throw new Error(`unexpected answer: ${JSON.stringify(result).slice(0, 300)}`);
result.data.forEach((item, i) => {
  const png = Buffer.from(item.b64_json, 'base64');
  if (png.subarray(0, 8).toString('latin1') !== '\x89PNG\r\n\x1a\n') throw new Error('not a PNG');
  writeFileSync(`${outDir}/openai-${i}.png`, png);
});
// An unsupported size: OpenAI's error object, which the client throws as BadRequestError.
try {
  await client.images.generate({ prompt, size: '64x65', response_format: 'b64_json' });
  throw new Error('size 64x65 was accepted');
} catch (e) {
  if (!(e instanceof OpenAI.BadRequestError)) throw e;
  if (e.status !== 400 || e.param !== 'size' || e.type !== 'invalid_request_error' ||
      !e.message.includes('64x65'))
    throw new Error(`unexpected error: ${e.status} ${e.param} ${e.type} ${e.message}`);
  console.log(`BadRequestError: ${e.message}`);
}
EOF
  openai_prompt="a blue circle above a red square"
  (cd "$tmp/node" && timeout 120 node generate.mjs "$base/v1" "$tmp" "$openai_prompt") >"$tmp/node.log" 2>&1 ||
    fail "the openai client: $(cat "$tmp/node.log")"
  say "openai $OPENAI_VERSION: 2 images; $(cat "$tmp/node.log")"
  for i in 0 1; do
    [ "$(png_size "$tmp/openai-$i.png")" = 64x64 ] || fail "openai image $i is not 64x64"
    same_as_cli "$tmp/openai-$i.png" "{\"prompt\": \"$openai_prompt\", \"width\": 64, \"height\": 64,
      \"seed\": $((21 + i)), \"steps\": 2}"
  done
fi

# --- b, c, d. curl with A1111's documented payloads -----------------------------
# POSTs JSON, writes the answer to FILE; fails unless HTTP 200.
post() {  # PATH JSON FILE
  local code
  code=$(curl -s -o "$3" -w '%{http_code}' -H 'Content-Type: application/json' --data-binary "$2" "$base$1") ||
    fail "curl $1 failed"
  [ "$code" = 200 ] || fail "POST $1 $2: HTTP $code $(head -c 300 "$3")"
}
# A field of a JSON file (a Python expression on `d`).
field() { python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

check_a1111() {  # NAME PAYLOAD SETTINGS_JSON
  local name=$1 payload=$2 settings=$3 seed
  post /sdapi/v1/txt2img "$payload" "$tmp/$name.json"
  [ "$(field "$tmp/$name.json" 'len(d["images"])')" = 1 ] || fail "$name: not one image"
  field "$tmp/$name.json" 'd["images"][0]' | base64 -d >"$tmp/$name.png" || fail "$name: not base64"
  [ "$(png_size "$tmp/$name.png")" = 64x64 ] || fail "$name: the image is not 64x64"
  # seed -1 (the default): a random seed, reported in "info".
  seed=$(field "$tmp/$name.json" 'json.loads(d["info"])["all_seeds"][0]')
  field "$tmp/$name.json" 'json.loads(d["info"])["infotexts"][0]' >"$tmp/$name.infotext"
  say "b: $name: a 64x64 PNG, seed $seed: $(head -c 120 "$tmp/$name.infotext" | tr '\n' '|')"

  # c. png-info gives the image's parameters text back.
  python3 -c 'import json, sys; print(json.dumps({"image": json.load(open(sys.argv[1]))["images"][0]}))' \
    "$tmp/$name.json" >"$tmp/$name.info-request.json"
  post /sdapi/v1/png-info "@$tmp/$name.info-request.json" "$tmp/$name.info.json"
  field "$tmp/$name.info.json" 'd["info"]' >"$tmp/$name.info"
  cmp "$tmp/$name.info" "$tmp/$name.infotext" || fail "$name: png-info's info differs from the image's infotext"
  [ "$(field "$tmp/$name.info.json" 'd["parameters"]["Seed"]')" = "$seed" ] || fail "$name: png-info's Seed"
  say "c: $name: png-info gives the parameters text back"

  same_as_cli "$tmp/$name.png" "${settings%\}}, \"seed\": $seed}"
}
# The wiki's first example, and its override_settings example (filter_nsfw
# as the wiki sends it: A1111 has no such filter of its own, nor has sdgen).
# The command line gets A1111's defaults (CFG scale 7, Euler) spelled out.
check_a1111 puppy '{"prompt": "maltese puppy", "steps": 5, "width": 64, "height": 64}' \
  '{"prompt": "maltese puppy", "steps": 5, "width": 64, "height": 64, "cfg_scale": 7, "sampler": "Euler"}'
check_a1111 cirno '{"prompt": "cirno", "steps": 20, "width": 64, "height": 64,
  "override_settings": {"filter_nsfw": true, "CLIP_stop_at_last_layers": 2}}' \
  '{"prompt": "cirno", "steps": 20, "width": 64, "height": 64, "cfg_scale": 7, "sampler": "Euler",
    "clip_skip": 2}'
grep -q 'Clip skip: 2' "$tmp/cirno.infotext" || fail "cirno: no Clip skip: 2 in $(cat "$tmp/cirno.infotext")"

# d. The command line's images for the same settings, one process.
"$sdgen" -q "${common[@]}" --seed 21 --steps 2 --prompt-file "$tmp/cli-prompts.txt" >"$tmp/cli.log" 2>&1 ||
  fail "sdgen --prompt-file: $(cat "$tmp/cli.log")"
while read -r api; do
  cmp "$api" "$api.cli.png" || fail "$api differs from the command line's image ($(grep -F "$api" "$tmp/cli-prompts.txt"))"
done <"$tmp/cli-images.txt"
say "d: the $(wc -l <"$tmp/cli-images.txt") API images equal the command line's, byte for byte"

kill -TERM "$server_pid"
rc=0
wait "$server_pid" || rc=$?
server_pid=""
[ "$rc" = 0 ] || fail "sdgen serve exited with $rc after SIGTERM"
say "sdgen serve stopped (exit 0)"
[ -z "$node_skip" ] || skip "$node_skip (b, c and d passed)"
echo "test_serve_clients: passed in $((SECONDS - started)) s"
