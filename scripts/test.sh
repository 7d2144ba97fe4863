#!/usr/bin/env bash
# Builds (setup.sh, then the tests) and runs the whole GoogleTest suite with ctest.
# KOSMOSG_GOLDEN_DIR / KOSMOSG_SHARED_DIR point the tests at other golden data or fixtures;
# KOSMOSG_LIBTORCH=system tests the build against Debian's LibTorch (build/, see build_dir.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
source scripts/build_dir.sh
build=$KOSMOSG_BUILD
cmake --build "$build" -j "$(nproc)"
shared=${KOSMOSG_SHARED_DIR:-../shared}
if [ ! -d "$shared/golden" ] && [ ! -d "${KOSMOSG_GOLDEN_DIR:-/nonexistent}" ]; then
  echo "test: $shared/golden not found: the golden parity and fixture tests need the project's shared" \
       "folder beside the checkout (or KOSMOSG_SHARED_DIR and KOSMOSG_GOLDEN_DIR); ctest lists them as" \
       "not run (Skipped) below, and runs every other test" >&2
fi
export OMP_WAIT_POLICY=PASSIVE
# One process per test (gtest_discover_tests): run them on every core. Each test's temporary
# folder carries its process id and each distributed test picks a free port, so they do not collide.
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" "$@"
