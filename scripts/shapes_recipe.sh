#!/usr/bin/env bash
# The whole Kosmos-G recipe in miniature, from nothing, on the shapes world (on 2 CPU cores, the eval
# included: 49 min with the default pip build on the day models/shapes was made; some days the host
# runs at two thirds of that speed; Debian's LibTorch trains the t2i, align and instruct stages
# 1.2-1.4x slower):
#   world -> vae -> t2i (the diffusion decoder) -> lm -> align -> instruct (Kosmos-G) -> export -> eval
# Usage: scripts/shapes_recipe.sh [OUT]   (default runs/shapes)
# Every stage's output stays in OUT; a stage already done (OUT/<stage>.done) is skipped, so a run
# that stopped continues where it was. KOSMOSG_THREADS sets the CPU threads (default: all cores);
# KOSMOSG_BIN the kosmosg to run (default: the build of KOSMOSG_LIBTORCH, see build_dir.sh).
# The released model is OUT/model (what models/shapes ships), its scores OUT/eval/report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/shapes}
source scripts/build_dir.sh
K=${KOSMOSG_BIN:-$KOSMOSG_BUILD/kosmosg}
THREADS=${KOSMOSG_THREADS:-0}
CONFIGS=configs/shapes
# The small models' many small matrix products run faster on LibTorch's own threads than on
# OpenBLAS's (the t2i stage: 28 against 24 samples/s on 2 cores).
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
[ -x "$K" ] || { echo "shapes_recipe: $K not found: run scripts/setup.sh first" >&2; exit 1; }
mkdir -p "$OUT"

start=$(date +%s)
total=8
step=0
elapsed() { local s=$(( $(date +%s) - start )); printf '%02d:%02d' $((s / 60)) $((s % 60)); }
# stage NAME DESCRIPTION COMMAND...: runs COMMAND unless OUT/NAME.done exists; logs to OUT/NAME.log.
stage() {
  local name=$1 what=$2; shift 2
  step=$((step + 1))
  if [ -e "$OUT/$name.done" ]; then
    echo "[$step/$total $(elapsed)] $name: done before, skipped"
    return
  fi
  echo "[$step/$total $(elapsed)] $name: $what (log: $OUT/$name.log)"
  local t0; t0=$(date +%s)
  rm -rf "${OUT:?}/$name"
  if ! "$@" > "$OUT/$name.log" 2>&1; then
    tail -n 20 "$OUT/$name.log" >&2
    echo "shapes_recipe: stage $name failed (full log: $OUT/$name.log)" >&2
    exit 1
  fi
  grep -E '^\[[a-z0-9]+\] update' "$OUT/$name.log" | tail -n 1 || true
  echo "$name $(( $(date +%s) - t0 )) s" >> "$OUT/timings.txt"
  touch "$OUT/$name.done"
}
train() {  # train STAGE MODEL DATA... : one trainer stage with configs/shapes/train/STAGE.json
  local name=$1 model=$2; shift 2
  local data=()
  for d in "$@"; do data+=(--data "$OUT/world/$d"); done
  "$K" train --stage "$name" --config "$CONFIGS/train/$name.json" --model "$model" "${data[@]}" \
    --out "$OUT/$name" --threads "$THREADS"
}
# The decoder starts from the configs alone (their weights are a seeded draw) and the CLIP tokenizer.
decoder_init() {
  rm -rf "$OUT/init"
  mkdir -p "$OUT/init"
  cp -r "$CONFIGS"/{model_index.json,scheduler,unet,vae,text_encoder,tokenizer} "$OUT/init/"
}
# Kosmos-G joins the trained decoder: its config, dictionary and SentencePiece model, no weights yet.
kosmosg_init() {
  rm -rf "$OUT/kosmosg-init"
  mkdir -p "$OUT/kosmosg-init/kosmosg"
  cp -rL "$OUT"/t2i/{model_index.json,scheduler,unet,vae,text_encoder,tokenizer} "$OUT/kosmosg-init/"
  cp "$CONFIGS"/kosmosg/{config.json,dict.txt,sentencepiece.bpe.model} "$OUT/kosmosg-init/kosmosg/"
}
release() {
  "$K" export "$OUT/instruct" "$OUT/model"
  cp "$CONFIGS/generation.json" "$OUT/model/"
}

stage world "4000 training scenes and the held-out split" "$K" data shapes --out "$OUT/world" --count 4000 --seed 0 --quiet
[ -e "$OUT/vae.done" ] || decoder_init
stage vae "AutoencoderKL, L1 + KL on 32x32 windows, from a seeded draw" train vae "$OUT/init" text_to_image.jsonl
stage t2i "the UNet and its CLIP text encoder, epsilon loss" train t2i "$OUT/vae" text_to_image.jsonl
[ -e "$OUT/lm.done" ] || kosmosg_init
stage lm "stage 1: multimodal language modelling" train lm "$OUT/kosmosg-init" captions.jsonl interleaved.jsonl entities.jsonl
stage align "stage 2: AlignerNet against the CLIP text encoder" train align "$OUT/lm" captions.jsonl
stage instruct "stage 3: score distillation instruction tuning" \
  train instruct "$OUT/align" one_entity.jsonl two_entity.jsonl edit.jsonl text_to_image.jsonl
stage model "export in half precision, with the generation defaults" release
stage eval "held-out prompts, Kosmos-G and the text-to-image baseline" \
  "$K" eval shapes --data "$OUT/world" --model "$OUT/model" --out "$OUT/eval" --threads "$THREADS" --quiet
cat "$OUT/eval.log"
echo "shapes_recipe: done in $(elapsed); model $OUT/model, scores $OUT/eval/report.json, stage times $OUT/timings.txt"
