#!/usr/bin/env bash
# Builds (through setup.sh) and runs the whole GoogleTest suite with ctest.
# KOSMOSG_GOLDEN_DIR / KOSMOSG_SHARED_DIR point the tests at other golden data or fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export OMP_WAIT_POLICY=PASSIVE
# One process per test (gtest_discover_tests): run them on every core. Each test's temporary
# folder carries its process id and each distributed test picks a free port, so they do not collide.
ctest --test-dir build --output-on-failure -j "$(nproc)" "$@"
