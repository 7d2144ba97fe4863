#!/usr/bin/env bash
# Installs the system packages kosmosg builds against (see third_party/README.md), then
# configures and builds the Release command line. Safe to run again.
#   KOSMOSG_LIBTORCH=pip (default): the current `torch` package from the Python package index (2.x,
#     with CUDA), installed into a virtual environment under ~/.cache/kosmosg-torch (KOSMOSG_CACHE),
#     never into the system Python, and built into build-pip/.
#   KOSMOSG_LIBTORCH=system: Debian's LibTorch 1.13 (CPU), built into build/.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/build_dir.sh
libtorch=$KOSMOSG_LIBTORCH
packages=(cmake g++ make pkg-config ccache
  libopencv-dev libsentencepiece-dev nlohmann-json3-dev libspdlog-dev libcli11-dev libgtest-dev zlib1g-dev libgloo-dev)
case "$libtorch" in
  system) packages+=(libtorch-dev libopenblas-dev) ;;
  pip) packages+=(python3-venv) ;;
esac
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Every source compiles with the precompiled header, which ccache caches only under this
# sloppiness. (No CCACHE_BASEDIR: it makes __FILE__ relative, and a test reads docs/ through it.)
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
build=$KOSMOSG_BUILD
torch_args=()
if [ "$libtorch" = pip ]; then
  venv=${KOSMOSG_CACHE:-$HOME/.cache}/kosmosg-torch
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -c 'import torch' 2>/dev/null || "$venv/bin/pip" install -q torch
  # The torch folder itself, so that CMake finds its lib/ before the system's libtorch.so.
  torch_args=(-DCMAKE_PREFIX_PATH="$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)")
fi
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release "${torch_args[@]}" ${KOSMOSG_CMAKE_ARGS:-}
# The command line first: the README's first command needs nothing else (scripts/test.sh builds the tests).
cmake --build "$build" -j "$(nproc)" --target kosmosg_cli
echo "setup: built $build/kosmosg (LibTorch: $libtorch)"
