#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz (clang, AddressSanitizer + UndefinedBehaviorSanitizer)
# into build-fuzz/ and runs each target for SECONDS (default 60), one target per core at a time,
# from its seed corpus: tests/fuzz/corpus/<target>/ (committed) and seeds made from the real files
# of ../shared (KOSMOSG_SHARED_DIR) when it is present. New inputs go to
# build-fuzz/corpus-work/<target>/, never into the tree. Prints executions, coverage and findings
# per target; exits non-zero when any target found a crash, hang, leak, sanitizer report or
# oversized allocation, naming the reproducer (build-fuzz/findings/<target>/...).
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
[ $# -gt 0 ] && shift
case "$seconds" in
  '' | *[!0-9]*) echo "fuzz: SECONDS is '$seconds', expected a whole number of seconds" >&2; exit 2 ;;
esac
all_targets=(safetensors pickle checkpoint config image data clip_tokenizer kosmosg_tokenizer prompt_layout)
targets=("${@:-${all_targets[@]}}")
for t in "${targets[@]}"; do
  [[ " ${all_targets[*]} " == *" $t "* ]] || { echo "fuzz: unknown target '$t', expected one of: ${all_targets[*]}" >&2; exit 2; }
done

# The largest input each target mutates: about the size of its seeds, small enough to run fast.
declare -A max_len=([safetensors]=16384 [pickle]=32768 [checkpoint]=65536 [config]=16384 [image]=16384
                    [data]=16384 [clip_tokenizer]=8192 [kosmosg_tokenizer]=8192 [prompt_layout]=4096)

# clang and its libFuzzer runtime, installed as setup.sh installs the rest (the build's other
# packages come from scripts/setup.sh).
clang=${KOSMOSG_FUZZ_CXX:-/usr/bin/clang++}
if [ -z "${KOSMOSG_FUZZ_CXX:-}" ]; then
  missing=()
  for p in clang libclang-rt-14-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "fuzz: installing ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi
if [ ! -x "$clang" ]; then
  echo "fuzz: $clang not found: the harnesses need clang++ with libFuzzer (KOSMOSG_FUZZ_CXX names another)" >&2
  exit 2
fi
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
build=build-fuzz
mkdir -p "$build"
echo "fuzz: building $build (log: $build/build.log)"
if ! { cmake -S tests/fuzz -B "$build" -DCMAKE_CXX_COMPILER="$clang" &&
       cmake --build "$build" -j "$(nproc)" --target "${targets[@]/#/fuzz_}" kosmosg_spm; } >"$build/build.log" 2>&1; then
  tail -n 40 "$build/build.log" >&2
  echo "fuzz: the build failed (log: $build/build.log)" >&2
  exit 2
fi

# Seeds from ../shared, made anew each run (small pieces of the real files, a few KB each).
shared=${KOSMOSG_SHARED_DIR:-../shared}
seeds=$build/seeds
rm -rf "$seeds"
for t in "${all_targets[@]}"; do mkdir -p "$seeds/$t"; done
if [ -d "$shared/fixtures" ]; then
  fixtures=$shared/fixtures
  # Configs as the readers meet them; the sizes file of the official fixture.
  for f in "$fixtures"/tiny-sd15/*/config.json "$fixtures"/kosmosg-official-tiny/sizes.json; do
    [ -f "$f" ] && cp "$f" "$seeds/config/$(basename "$(dirname "$f")")_$(basename "$f")"
  done
  # The smallest golden safetensors files (a header with metadata and a few tensors).
  find "$shared/golden" -name '*.safetensors' -size -16k 2>/dev/null | sort | head -n 4 |
    while read -r f; do cp "$f" "$seeds/safetensors/"; done
  for f in "$fixtures"/kosmosg-official-tiny/image_*.png; do
    [ -f "$f" ] && cp "$f" "$seeds/image/"
  done
  # Tokenizer seeds carry the harness's mode byte first: 0x01 text, 0x00 the files themselves.
  { printf '\x00'; head -c 4000 "$fixtures/kosmosg-official-tiny/dict.txt"; } > "$seeds/kosmosg_tokenizer/dict_head.txt"
  # The official checkpoint: its pickle (truncated to max_len by libFuzzer) for the unpickler, and
  # a torch.save zip of that pickle's head with the checkpoint's small storages for the zip reader.
  if command -v python3 >/dev/null; then
    python3 - "$fixtures/kosmosg-official-tiny/checkpoint_tiny.pt" "$seeds" <<'EOF'
import sys, zipfile
source, seeds = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(source) as z:
    pickle = z.read("checkpoint_tiny/data.pkl")
    open(f"{seeds}/pickle/checkpoint_tiny_data.pkl", "wb").write(pickle)
    with zipfile.ZipFile(f"{seeds}/checkpoint/checkpoint_tiny_head.pt", "w", zipfile.ZIP_STORED) as out:
        out.writestr("checkpoint_tiny/data.pkl", pickle[:16384])
        for info in z.infolist():
            if info.filename != "checkpoint_tiny/data.pkl" and info.file_size <= 64:
                out.writestr(info.filename, z.read(info.filename))
EOF
  else
    echo "fuzz: python3 not found: no checkpoint and pickle seeds from $shared"
  fi
else
  echo "fuzz: $shared/fixtures not found: running from the committed seeds only (set KOSMOSG_SHARED_DIR)"
fi
# Seeds from the tree's own data (prompts, manifests), with the mode byte where a harness takes one.
while IFS= read -r line; do
  name=$(printf '%s' "$line" | cksum | cut -d' ' -f1)
  printf '\x01%s' "$line" > "$seeds/clip_tokenizer/prompt_$name.txt"
  printf '\x01%s' "$line" > "$seeds/kosmosg_tokenizer/prompt_$name.txt"
  printf '\x40%s' "$line" > "$seeds/prompt_layout/prompt_$name.txt"
done < <(grep -ho '"\(prompt\|text\)": *"[^"]*"' docs/examples/tiny-data/*.jsonl | sed 's/^"[a-z]*": *"//; s/"$//' | head -n 8)
for f in docs/examples/tiny-data/*.jsonl; do
  # Kind jsonl in stages vae (0x00) and t2i (0x04); fuzz_data provides one image, image.png.
  { printf '\x00'; head -c 3000 "$f" | sed -E 's/"[a-z_]+\.png"/"image.png"/g'; } > "$seeds/data/vae_$(basename "$f")"
  { printf '\x04'; head -c 3000 "$f" | sed -E 's/"[a-z_]+\.png"/"image.png"/g'; } > "$seeds/data/t2i_$(basename "$f")"
done

export OMP_NUM_THREADS=1 UBSAN_OPTIONS=print_stacktrace=1
# Runs one target for SECONDS and writes its summary line to $build/results/<target>.
fuzz_target() {
  local t=$1 work=$build/corpus-work/$1 findings=$build/findings/$1 log=$build/logs/$1.log
  mkdir -p "$work" "$findings" "$(dirname "$log")"
  local corpora=("$work" "$seeds/$t")
  [ -d "tests/fuzz/corpus/$t" ] && corpora+=("tests/fuzz/corpus/$t")
  local start rc=0 line
  start=$(date +%s)
  "$build/fuzz_$t" -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=10 -max_len="${max_len[$t]}" \
    -print_final_stats=1 -artifact_prefix="$findings/" "${corpora[@]}" >"$log" 2>&1 || rc=$?
  local elapsed=$(( $(date +%s) - start ))
  local runs coverage reproducer
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  coverage=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1 || true)
  reproducer=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | grep -v '/slow-unit-' | tail -n 1 || true)
  if [ "$rc" -ne 0 ]; then
    local what
    what=$(grep -m 1 -o 'ERROR: [A-Za-z]*Sanitizer: [^ ]*\|ERROR: libFuzzer: [a-z -]*\|runtime error: .*\|broken promise: .*' "$log" || echo "exit status $rc")
    line="FINDING: $t ($what) after ${elapsed}s, ${runs:-?} executions, ${coverage:-no coverage}; reproducer: ${reproducer:-none written}, log: $log"
  else
    line="$t: ${runs:-?} executions in ${elapsed}s, ${coverage:-no coverage}, no findings"
  fi
  echo "fuzz: $line"
  echo "$line" > "$build/results/$t"
}

# One target per core at a time (each fuzzes on one thread), so the whole run takes about
# SECONDS x targets / cores.
rm -rf "$build/results"
mkdir -p "$build/results"
jobs_max=$(nproc)
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || true; done
  echo "fuzz: $t for ${seconds}s (log: $build/logs/$t.log)"
  fuzz_target "$t" &
done
wait
status=0
echo "fuzz: summary"
for t in "${targets[@]}"; do
  line=$(cat "$build/results/$t" 2>/dev/null || echo "FINDING: $t (no result: the run itself failed)")
  [[ "$line" == FINDING:* ]] && status=1
  echo "  $line"
done
exit "$status"
