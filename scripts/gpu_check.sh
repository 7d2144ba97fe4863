#!/usr/bin/env bash
# The GPU check, run on the GPU machine in one call (device tool: `scripts/gpu_check.sh`,
# carry [".gpu"]) after scripts/gpu_prepare.sh has filled .gpu/ here. In order:
#   1. kosmosg --version (LibTorch, the GPUs it sees);
#   2. the golden suite on CUDA in float32, float16 and bfloat16;
#   3. one training update of each stage (tiny config) in bfloat16, in float16 with the loss
#      scaler, and in the official memory-efficient fp16;
#   4. the benchmark: SD1.5 512x512 sampling it/s at batch 1 with guidance (float16, bfloat16;
#      float16 also without the CUDA graph),
#      the UNet and the VAE decode, a whole Kosmos-G 512x512 generation, peak GPU memory, and
#      training samples/s of an instruct update at full size;
#   5. a world-size-1 NCCL training run through the command line (torchrun's variables).
# Each part is bounded in time, and all of them by $KOSMOSG_GPU_BUDGET seconds (540: one call of
# the device tool is 600); a failing part is reported and the rest still runs. Arguments name
# the parts to run (e.g. `scripts/gpu_check.sh golden_float16 nccl_lm`); none runs them all. Full logs go to
# .gpu/out, packed into $OUT/gpu_check_logs.tar.gz when $OUT is set (the device tool brings back
# only a few files); the summary is printed. The order puts the figures the project tracks first.
set -uo pipefail
cd "$(dirname "$0")/.."

out=$(pwd)/.gpu/out
rm -rf "$out" && mkdir -p "$out"
bin=$(pwd)/.gpu/bin
[ -x "$bin/golden_parity" ] || { echo "gpu_check: no $bin/golden_parity: run scripts/gpu_prepare.sh here first" >&2; exit 2; }

# LibTorch and the CUDA libraries of the machine's Python torch; spdlog, fmt and SentencePiece from .gpu/lib.
site=$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
lib_path=$(pwd)/.gpu/lib:$site/torch/lib
for d in "$site"/nvidia/*/lib; do lib_path=$lib_path:$d; done
export LD_LIBRARY_PATH=$lib_path:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export OMP_WAIT_POLICY=PASSIVE

# Packed after every part, so that a run stopped at the device tool's limit still brings its logs back.
pack_logs() { [ -z "${OUT:-}" ] || tar -C "$out" -czf "$OUT/gpu_check_logs.tar.gz" .; }
wanted=" $* "
failures=()
deadline=$(( $(date +%s) + ${KOSMOSG_GPU_BUDGET:-540} ))
part() {  # part NAME SECONDS COMMAND...: runs COMMAND with a time limit, logs to $out/NAME.log
  local name=$1 limit=$2; shift 2
  [ "$wanted" = "  " ] || [[ "$wanted" == *" $name "* ]] || return 0
  local t0; t0=$(date +%s)
  local left=$(( deadline - t0 ))
  if [ "$left" -lt 20 ]; then
    echo "== $name: skipped, the time budget is spent"
    failures+=("$name (no time left)")
    return 1
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "== $name"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "-- $name: exit $rc in $(( $(date +%s) - t0 )) s"
  [ $rc -eq 0 ] || failures+=("$name (exit $rc)")
  pack_logs
  return $rc
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
missing=$(ldd "$bin/golden_parity" "$bin/kosmosg_bench" | grep "not found" | sort -u)
[ -z "$missing" ] || echo "gpu_check: libraries not found: $missing"
part version 60 "$bin/kosmosg" --version
cat "$out/version.log"

golden=/tmp/kosmosg-golden
rm -rf "$golden" && mkdir -p "$golden"
tar -C "$golden" -xJf .gpu/golden.tar.xz
golden() {  # golden DTYPE: the golden suite on cuda in DTYPE
  part "golden_$1" 150 env KOSMOSG_GOLDEN_DIR="$golden/golden" KOSMOSG_TEST_DEVICE=cuda KOSMOSG_TEST_DTYPE="$1" \
    "$bin/golden_parity"
  [ -f "$out/golden_$1.log" ] || return 0
  grep -E "^(FAIL|SKIP) " "$out/golden_$1.log" | cut -c 1-200 | head -n 25
  grep -E "^golden:" "$out/golden_$1.log"
}
bench() {  # bench NAME SECONDS ARGS...: a kosmosg_bench run on cuda, its figures printed
  local name=$1 limit=$2; shift 2
  part "$name" "$limit" "$bin/kosmosg_bench" --device cuda "$@"
  [ -f "$out/$name.log" ] || return 0
  grep -vE "^\[|^threads:" "$out/$name.log" | grep -E ": " || tail -n 5 "$out/$name.log"
}
# Data-parallel through the command line at world size 1: the NCCL process group on one GPU.
nccl_lm() {
  local nccl=/tmp/kosmosg-nccl
  rm -rf "$nccl" && mkdir -p "$nccl/model/kosmosg"
  cp -r configs/shapes/{model_index.json,scheduler,unet,vae,text_encoder,tokenizer} "$nccl/model/"
  cp configs/shapes/kosmosg/{config.json,dict.txt,sentencepiece.bpe.model} "$nccl/model/kosmosg/"
  for _ in $(seq 1 64); do echo '{"text": "a red circle and a blue square on a green background"}'; done > "$nccl/lm.jsonl"
  part nccl_lm 120 env RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=29517 \
    "$bin/kosmosg" train --stage lm --config configs/shapes/train/lm.json --model "$nccl/model" \
    --data "$nccl/lm.jsonl" --out "$nccl/out" --steps 20 --batch-size 16 --device cuda --precision bfloat16 \
    --dist-backend nccl
  [ -f "$out/nccl_lm.log" ] || return 0
  grep -iE "nccl|rank|update 20/|error" "$out/nccl_lm.log" | cut -c 1-200 | tail -n 6
}

golden float32
bench sd15_fp16 150 --dtype float16 --only unet_b1 unet_b2 vae_decode text_encoder sample_512 --runs 5
bench train_full_bf16 180 --precision bfloat16 --only train_instruct_full --full-batch 8 --runs 3
bench sd15_fp16_eager 60 --dtype float16 --no-cuda-graph --only sample_512 --runs 3
golden float16
bench train_bf16 120 --precision bfloat16 --only train_lm_tiny train_align_tiny train_instruct_tiny --runs 2
bench train_fp16 120 --precision float16 --only train_lm_tiny train_align_tiny train_instruct_tiny --runs 2
bench train_mefp16 120 --precision memory-efficient-fp16 --only train_lm_tiny train_align_tiny train_instruct_tiny --runs 2
bench kosmosg_fp16 180 --dtype float16 --only encode_condition generate_512 --runs 2
bench train_full_mefp16 150 --precision memory-efficient-fp16 --only train_instruct_full --full-batch 8 --runs 2
nccl_lm
golden bfloat16
bench sd15_bf16 120 --dtype bfloat16 --only unet_b2 vae_decode sample_512 --runs 3

pack_logs
echo "== summary"
if [ ${#failures[@]} -eq 0 ]; then
  echo "gpu_check: every part ran"
else
  echo "gpu_check: failed: ${failures[*]}"
  exit 1
fi
