#!/usr/bin/env bash
# Installs the system packages kosmosg builds against (see third_party/README.md), then
# configures and builds the Release command line into build/kosmosg. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake g++ make pkg-config ccache
  libtorch-dev libopenblas-dev libgloo-dev
  libopencv-dev libsentencepiece-dev nlohmann-json3-dev libspdlog-dev libcli11-dev libgtest-dev zlib1g-dev)
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
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${KOSMOSG_CMAKE_ARGS:-}
# The command line first: the README's first command needs nothing else (scripts/test.sh builds the tests).
cmake --build build -j "$(nproc)" --target kosmosg_cli
echo "setup: built build/kosmosg"
