#!/usr/bin/env bash
# Lists the SHA-256 of every PNG that the tests which write images leave
# behind, so that two builds (before and after a refactor) can be compared:
#
#   scripts/compare-test-pngs.sh OLD_BUILD_DIR > before.txt
#   scripts/compare-test-pngs.sh NEW_BUILD_DIR > after.txt
#   diff before.txt after.txt      # no output: byte-identical images
#
# Each test executable runs on its own with SDGEN_KEEP_TEMP=1 (test_util.cpp
# keeps its temporary folders); a PNG is named by the executable, its folder's
# tag and counter (the process id is dropped) and its path inside the folder.
# Optional arguments after the build folder: the test executables to run
# (default: every test that writes images through the binary or write_png).
set -euo pipefail
BUILD=$(cd "${1:?usage: compare-test-pngs.sh BUILD_DIR [TEST...]}" && pwd)
shift
TESTS=("$@")
if [ ${#TESTS[@]} -eq 0 ]; then
  TESTS=(test_a1111 test_cli test_cli_batch test_bad_inputs test_samplers test_img2img
         test_smoke test_default_model test_image_io test_nonfinite test_memory_estimate)
fi
for t in "${TESTS[@]}"; do
  [ -x "$BUILD/$t" ] || { echo "# $t: not built" ; continue; }
  rm -rf "$BUILD/test-tmp"
  if ! (cd "$BUILD" && SDGEN_KEEP_TEMP=1 "./$t" >/dev/null 2>&1); then echo "# $t: FAILED"; fi
  [ -d "$BUILD/test-tmp" ] || continue
  (cd "$BUILD/test-tmp" && find . -name '*.png' -type f -print0 | sort -z |
     xargs -0 -r sha256sum) |
    sed -E "s#  \./([^/]*)-[0-9]+-([0-9]+)/#  $t/\1-\2/#"
done
rm -rf "$BUILD/test-tmp"
