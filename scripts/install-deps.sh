#!/usr/bin/env bash
# Installs the Debian packages sdgen needs to build, test and run, if missing.
set -euo pipefail

PACKAGES=(
  g++ cmake ninja-build pkg-config
  libtorch-dev libopenblas0-pthread
  libsentencepiece-dev libstb-dev libcli11-dev nlohmann-json3-dev zlib1g-dev
  libgtest-dev
  libcpp-httplib-dev  # sdgen serve (without it sdgen builds without the server)
  libpng-dev  # tests only: test_png_text checks sdgen's PNG text chunks with libpng
  # cpack -G DEB (tests/test_deb.sh): dpkg-shlibdeps finds the runtime packages
  # the binaries need, and CPack finds the binaries with `file`.
  dpkg-dev file
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO=sudo; else
    echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi
echo "install-deps: installing ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
