#!/usr/bin/env bash
# Times kosmosg and diffusers on the same work, with the same LibTorch, threads and
# OMP_WAIT_POLICY, in one run: UNet b1/b2 and the VAE decode with random SD1.5-size weights.
# diffusers (the current release) and the torch of the pip build are installed into a virtual
# environment of their own under ~/.cache/kosmosg-diffusers (KOSMOSG_CACHE), never the system
# Python. Prints both sets of figures, their ratios and the peak RSS of each.
#   KOSMOSG_BENCH: the kosmosg_bench to time (default: build-pip's, built by
#     KOSMOSG_LIBTORCH=pip scripts/setup.sh); the LibTorch version that the `kosmosg` beside it
#     reports is the torch installed (KOSMOSG_COMPARE_TORCH overrides it).
#   Arguments: --rounds N (default 3), --threads N (default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3
threads=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "compare_diffusers: unknown argument $1 (expected --rounds N, --threads N)" >&2; exit 2 ;;
  esac
done
bench=${KOSMOSG_BENCH:-build-pip/kosmosg_bench}
if [ ! -x "$bench" ]; then
  KOSMOSG_LIBTORCH=pip scripts/setup.sh >&2
  cmake --build build-pip --target kosmosg_bench kosmosg_cli -j "$(nproc)" >&2
fi
export OMP_WAIT_POLICY=PASSIVE
# The LibTorch the bench was built against, from the command line built beside it.
torch_version=$("$(dirname "$bench")/kosmosg" --version 2>/dev/null | awk '$1 == "LibTorch" { print $2 }' || true)
venv=${KOSMOSG_CACHE:-$HOME/.cache}/kosmosg-diffusers
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
want=${KOSMOSG_COMPARE_TORCH:-$torch_version}
have=$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ -z "$want" ]; then
  echo "compare_diffusers: cannot tell $bench's LibTorch version; set KOSMOSG_COMPARE_TORCH" >&2
  exit 2
fi
if [ "$have" != "$want" ] || ! "$venv/bin/python" -c 'import diffusers' 2>/dev/null; then
  echo "compare_diffusers: installing torch==$want and diffusers into $venv" >&2
  "$venv/bin/pip" install -q "torch==$want" diffusers
fi

# The machine's speed drifts over minutes (2.6x between sessions here), so the two are timed in
# alternating rounds, each side one run per figure after its warm-up, the order swapped every
# round (ABBA); the figures are each side's median over the rounds, the ratio the median of the
# rounds' ratios.
figures=(unet_b1 unet_b2 vae_decode)
results=$(mktemp)
trap 'rm -f "$results"' EXIT
time_kosmosg() {
  "$bench" --configs configs/sd15 --threads "$threads" --runs 1 --only "${figures[@]}" |
    awk -v r="$1" '$1 ~ /:$/ && $3 == "s" { sub(":", "", $1); print r, "kosmosg", $1, $2 } /^peak_rss/ { print r, "kosmosg", "peak_rss", $(NF-1) }'
}
time_diffusers() {
  "$venv/bin/python" scripts/compare_diffusers.py --configs configs/sd15 --threads "$threads" --runs 1 |
    awk -v r="$1" '$1 ~ /:$/ && $3 == "s" { sub(":", "", $1); print r, "diffusers", $1, $2 } /^peak_rss/ { print r, "diffusers", "peak_rss", $(NF-1) }'
}
echo "== kosmosg ($bench, LibTorch $want) against diffusers $("$venv/bin/python" -c 'import diffusers; print(diffusers.__version__)') (torch $want), $threads threads, $rounds rounds"
for ((r = 1; r <= rounds; r++)); do
  if ((r % 2)); then time_kosmosg "$r" >> "$results"; time_diffusers "$r" >> "$results"
  else time_diffusers "$r" >> "$results"; time_kosmosg "$r" >> "$results"; fi
  awk -v r="$r" -v figures="${figures[*]}" '$1 == r && $3 != "peak_rss" { t[$3 " " $2] = $4 }
    END { printf "round %d:", r; n = split(figures, f, " ");
          for (i = 1; i <= n; i++) printf "  %s %.2f / %.2f s", f[i], t[f[i] " kosmosg"], t[f[i] " diffusers"]; print "" }' "$results"
done
echo "== diffusers / kosmosg (median over rounds; ratio above 1: kosmosg is faster)"
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for name in "${figures[@]}"; do
  a=$(awk -v n="$name" '$2 == "kosmosg" && $3 == n { print $4 }' "$results" | median)
  b=$(awk -v n="$name" '$2 == "diffusers" && $3 == n { print $4 }' "$results" | median)
  ratio=$(awk -v n="$name" '$3 == n { t[$1 " " $2] = $4; rounds[$1] = 1 }
    END { for (r in rounds) print t[r " diffusers"] / t[r " kosmosg"] }' "$results" | median)
  awk -v n="$name" -v a="$a" -v b="$b" -v q="$ratio" 'BEGIN { printf "%s: kosmosg %.3f s, diffusers %.3f s, ratio %.2fx\n", n, a, b, q }'
done
peak() { awk -v s="$1" '$2 == s && $3 == "peak_rss" { if ($4 > m) m = $4 } END { print m }' "$results"; }
echo "peak RSS: kosmosg $(peak kosmosg) MiB, diffusers $(peak diffusers) MiB"
