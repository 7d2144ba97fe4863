#!/usr/bin/env bash
# Builds the benchmark and prints the speed and memory figures of the full-size SD1.5 parts
# (random weights, no download). Arguments go to kosmosg_bench: --only NAME, --runs N, --threads N.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/build_dir.sh
if [ ! -d "$KOSMOSG_BUILD" ]; then scripts/setup.sh >&2; fi
cmake --build "$KOSMOSG_BUILD" --target kosmosg_bench -j "$(nproc)" >&2
export OMP_WAIT_POLICY=PASSIVE
exec "$KOSMOSG_BUILD/kosmosg_bench" --configs configs/sd15 "$@"
