#!/usr/bin/env bash
# Data-parallel overhead on this machine: trains the instruct stage of the tiny official fixture
# (../shared/fixtures, or $KOSMOSG_SHARED_DIR) with 1 process and with 2 (scripts/launch.sh, Gloo
# on loopback) at the same per-process batch, and prints samples/s and the all-reduce time per
# update that backward did not hide. Usage: scripts/bench_distributed.sh [UPDATES] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
updates=${1:-60}
batch=${2:-4}
shared=${KOSMOSG_SHARED_DIR:-../shared}
fixture=$shared/fixtures/kosmosg-official-tiny
[ -f "$fixture/checkpoint_tiny.pt" ] || { echo "bench_distributed: no $fixture (set KOSMOSG_SHARED_DIR)" >&2; exit 1; }
source scripts/build_dir.sh
k=$KOSMOSG_BUILD/kosmosg
if [ ! -x "$k" ]; then scripts/setup.sh >&2; fi
cmake --build "$KOSMOSG_BUILD" --target kosmosg_cli -j "$(nproc)" >&2
export OMP_WAIT_POLICY=PASSIVE

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$k" convert "$fixture/checkpoint_tiny.pt" "$work/model" --sizes "$fixture/sizes.json" >/dev/null
data=docs/examples/tiny-data/instruct.jsonl
train() {  # OUT THREADS: the instruct stage at the benchmark's size, quietly
  echo "$k" train --stage instruct --model "$work/model" --data "$data" --out "$1" --steps "$updates" \
    --batch-size "$batch" --threads "$2" --quiet --lr 1e-4 --warmup 0 --save-every 0 --workers 0
}
# Mean over the second half of the updates (the first ones warm the allocator and caches).
summarise() {  # LABEL METRICS
  python3 - "$1" "$2" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
tail = lines[len(lines) // 2:]
rate = sum(l["samples_per_s"] for l in tail) / len(tail)
comm = sum(l.get("comm_wait_s", 0.0) for l in tail) / len(tail) * 1000
print(f"{sys.argv[1]:<34} {rate:8.1f} samples/s   exposed all-reduce {comm:6.1f} ms/update")
EOF
}
echo "instruct stage, tiny config, batch $batch per process, $updates updates (mean of the last half)"
$(train "$work/one_t1" 1) && summarise "1 process, 1 thread" "$work/one_t1/metrics.jsonl"
$(train "$work/one_t2" 2) && summarise "1 process, 2 threads" "$work/one_t2/metrics.jsonl"
scripts/launch.sh 1 $(train "$work/one_gloo" 1) --dist-backend gloo >/dev/null &&
  summarise "1 process through Gloo (world 1)" "$work/one_gloo/metrics.jsonl"
scripts/launch.sh 2 $(train "$work/two" 1) >/dev/null && summarise "2 processes, 1 thread each" "$work/two/metrics.jsonl"
