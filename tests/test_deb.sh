#!/usr/bin/env bash
# The Debian package: runs README.md's <!-- deb-example --> block (cpack), then
# checks the .deb's file list (binaries, library, headers, CMake package, the
# default model; no training tools) and that Depends names libtorch's runtime
# package (the one this build links) and libopenblas0-pthread. Installing it
# is checked by hand (README.md, "Install").
#
#   tests/test_deb.sh BUILD_DIR SOURCE_DIR     (ctest: test_deb)
# Exit code 77 (ctest: skipped) when a tool it needs is missing.
set -euo pipefail

build=$(cd "$1" && pwd)
source_dir=$(cd "$2" && pwd)
. "$source_dir/tests/readme_block.sh"

for tool in cpack dpkg-deb dpkg-query; do
  command -v $tool >/dev/null || { echo "test_deb: skipped: $tool not found (a Debian host builds the .deb)" >&2; exit 77; }
done
# The package libtorch comes from, e.g. libtorch1.13 (none: a pip libtorch).
# (awk reads all of ldd's output: an early exit could kill ldd with SIGPIPE,
# which pipefail and set -e turn into a silent failure.)
torch_lib=$(ldd "$build/sdgen" | awk '/libtorch_cpu/ && !found++ { print $3 }')
torch_package=""
[ -n "$torch_lib" ] && torch_package=$(dpkg-query -S "$(readlink -f "$torch_lib")" 2>/dev/null | cut -d: -f1 || true)
[ -n "$torch_package" ] || { echo "test_deb: skipped: libtorch ($torch_lib) is not from a Debian package" >&2; exit 77; }

tmp=$(mktemp -d /tmp/sdgen-deb-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
ln -s "$build" "$tmp/build"
rm -rf "$build/package"
echo "== README deb-example"
readme_block deb-example >"$tmp/deb.sh"
cat "$tmp/deb.sh"
(cd "$tmp" && bash -euxo pipefail "$tmp/deb.sh")
deb=$(ls "$build"/package/sdgen_*.deb)

dpkg-deb -c "$deb" | awk '{ print $6 }' | sed 's|^\./||; s| ->.*||' >"$tmp/files"
fail=0
for f in usr/bin/sdgen usr/bin/sdgen-bench usr/bin/sdgen-mkmodel usr/lib/libsdgen.a \
         usr/include/sdgen/pipeline.h usr/include/sdgen/model.h \
         usr/lib/cmake/sdgen/sdgenConfig.cmake usr/lib/cmake/sdgen/sdgenTargets.cmake \
         usr/share/sdgen/models/default/model_index.json \
         usr/share/sdgen/models/default/unet/diffusion_pytorch_model.safetensors \
         usr/share/sdgen/models/default/tokenizer/spiece.model; do
  grep -qx "$f" "$tmp/files" || { echo "test_deb: $f is not in $deb" >&2; fail=1; }
done
for f in usr/bin/sdgen-train usr/bin/sdgen-spm usr/include/sdgen/train.h; do
  ! grep -qx "$f" "$tmp/files" || { echo "test_deb: $f must not be in $deb" >&2; fail=1; }
done
depends=$(dpkg-deb -f "$deb" Depends)
echo "Depends: $depends"
for p in "$torch_package" libopenblas0-pthread; do
  grep -qE "(^|, )$p( |,|$)" <<<"$depends" || { echo "test_deb: Depends lacks $p" >&2; fail=1; }
done
twice=$(tr ',' '\n' <<<"$depends" | sed 's/^ *//; s/ .*//' | sort | uniq -d)
[ -z "$twice" ] || { echo "test_deb: Depends names $twice more than once" >&2; fail=1; }
[ "$fail" -eq 0 ] && echo "test_deb: passed ($deb)"
exit "$fail"
