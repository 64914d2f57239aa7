#!/usr/bin/env bash
# The installed sdgen, as README.md ("Install", "Using sdgen in your CI") shows
# it: runs README's <!-- install-example --> block (cmake --install into
# $HOME/.local, examples/ built against it with find_package(sdgen), run), then
# moves the prefix elsewhere and runs the installed sdgen without --model from
# another folder (it must find share/sdgen/models/default next to bin/), and
# runs README's <!-- ci-example --> block with the moved bin/ on PATH.
# HOME is a temporary folder, so nothing outside it is written.
#
#   tests/test_install.sh BUILD_DIR SOURCE_DIR CXX_COMPILER     (ctest: test_install)
# Exit code 77 (ctest: skipped) when a tool it needs is missing.
set -euo pipefail

build=$(cd "$1" && pwd)
source_dir=$(cd "$2" && pwd)
cxx=$3
. "$source_dir/tests/readme_block.sh"

for f in sdgen sdgen-bench sdgen-mkmodel libsdgen.a; do
  [ -e "$build/$f" ] || { echo "test_install: $build/$f is missing: build all targets first" >&2; exit 1; }
done
command -v "$cxx" >/dev/null || { echo "test_install: skipped: compiler $cxx not found" >&2; exit 77; }

tmp=$(mktemp -d /tmp/sdgen-install-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/home" "$tmp/work"
# README's commands run from a checkout root: build/ and examples/ as there.
ln -s "$build" "$tmp/work/build"
ln -s "$source_dir/examples" "$tmp/work/examples"
export HOME=$tmp/home XDG_CACHE_HOME=$tmp/home/.cache
unset SDGEN_DEFAULT_MODEL
# How the example is compiled (CMake reads these): the compiler of this build,
# Ninja and ccache where present.
export CXX=$cxx
command -v ninja >/dev/null && export CMAKE_GENERATOR=Ninja
command -v ccache >/dev/null && export CMAKE_CXX_COMPILER_LAUNCHER=ccache

echo "== README install-example"
readme_block install-example >"$tmp/install.sh"
cat "$tmp/install.sh"
(cd "$tmp/work" && bash -euxo pipefail "$tmp/install.sh")
prefix=$HOME/.local
png=$(cd "$tmp/work" && ls ./*.png)
[ -s "$tmp/work/$png" ] || { echo "test_install: the example wrote no PNG" >&2; exit 1; }
for f in bin/sdgen bin/sdgen-bench bin/sdgen-mkmodel lib/libsdgen.a include/sdgen/pipeline.h \
         lib/cmake/sdgen/sdgenConfig.cmake share/sdgen/models/default/model_index.json; do
  [ -e "$prefix/$f" ] || { echo "test_install: $prefix/$f was not installed" >&2; exit 1; }
done
for f in bin/sdgen-train bin/sdgen-spm include/sdgen/train.h include/sdgen/synth_world.h; do
  [ ! -e "$prefix/$f" ] || { echo "test_install: $prefix/$f must not be installed" >&2; exit 1; }
done

echo "== a moved install finds its default model"
moved=$tmp/elsewhere/sdgen
mkdir -p "$tmp/elsewhere" "$tmp/run"
mv "$prefix" "$moved"
(cd "$tmp/run" && "$moved/bin/sdgen" -p "a red circle" -W 64 -H 64 --steps 2 -o moved.png)
[ -s "$tmp/run/moved.png" ] || { echo "test_install: the moved sdgen wrote no PNG" >&2; exit 1; }

echo "== without a default model, the error says where sdgen looked"
mkdir -p "$tmp/bare/bin"
cp "$moved/bin/sdgen" "$tmp/bare/bin/"
rc=0
(cd "$tmp/run" && "$tmp/bare/bin/sdgen" -p "a red circle" -o bare.png) 2>"$tmp/bare.err" || rc=$?
cat "$tmp/bare.err"
[ "$rc" -eq 3 ] || { echo "test_install: expected exit code 3 (model), got $rc" >&2; exit 1; }
grep -qF "$tmp/bare/share/sdgen/models/default" "$tmp/bare.err" ||
  { echo "test_install: the error does not name the folders looked in" >&2; exit 1; }

echo "== README ci-example"
readme_block ci-example >"$tmp/ci.sh"
cat "$tmp/ci.sh"
mkdir -p "$tmp/ci"
(cd "$tmp/ci" && PATH="$moved/bin:$PATH" bash -euxo pipefail "$tmp/ci.sh")
echo "test_install: passed"
