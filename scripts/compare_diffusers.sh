#!/usr/bin/env bash
# Times kosmosg and diffusers on the same work, with the same LibTorch, threads and
# OMP_WAIT_POLICY, in one run: UNet b1/b2 and the VAE decode with random SD1.5-size weights.
# diffusers (the current release) and the torch of the pip build are installed into a virtual
# environment of their own under ~/.cache/kosmosg-diffusers (KOSMOSG_CACHE), never the system
# Python. Prints both sets of figures, their ratios and the peak RSS of each.
#   KOSMOSG_BENCH: the kosmosg_bench to time (default: build-pip's, built by
#     KOSMOSG_LIBTORCH=pip scripts/setup.sh); the LibTorch version that the `kosmosg` beside it
#     reports is the torch installed (KOSMOSG_COMPARE_TORCH overrides it).
#   Arguments: --runs N (default 3), --threads N (default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3
threads=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "compare_diffusers: unknown argument $1 (expected --runs N, --threads N)" >&2; exit 2 ;;
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

echo "== kosmosg ($bench, LibTorch $want, $threads threads)"
k=$("$bench" --configs configs/sd15 --threads "$threads" --runs "$runs" --only unet_b1 unet_b2 vae_decode | tee /dev/stderr)
echo "== diffusers $("$venv/bin/python" -c 'import diffusers; print(diffusers.__version__)') (torch $want, $threads threads)"
d=$("$venv/bin/python" scripts/compare_diffusers.py --configs configs/sd15 --threads "$threads" --runs "$runs" | tee /dev/stderr)
echo "== diffusers / kosmosg (time ratio; above 1: kosmosg is faster)"
for name in unet_b1 unet_b2 vae_decode; do
  a=$(echo "$k" | awk -v n="$name:" '$1 == n { print $2 }')
  b=$(echo "$d" | awk -v n="$name:" '$1 == n { print $2 }')
  awk -v n="$name" -v a="$a" -v b="$b" 'BEGIN { printf "%s: kosmosg %.3f s, diffusers %.3f s, ratio %.2fx\n", n, a, b, b / a }'
done
echo "peak RSS: kosmosg $(echo "$k" | awk '/^peak_rss/ { print $(NF-1) }') MiB, diffusers $(echo "$d" | awk '/^peak_rss/ { print $(NF-1) }') MiB"
