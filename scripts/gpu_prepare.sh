#!/usr/bin/env bash
# Prepares .gpu/ for scripts/gpu_check.sh, here on the build machine, so that the GPU machine's
# scarce minutes go to the checks and not to compiling:
#   - builds the golden suite, the bench and the CLI in build-gpu/ against the GPU machine's
#     LibTorch (the pip wheel torch==$KOSMOSG_GPU_TORCH_VERSION, 2.11.0+cu130 by default, unpacked
#     under ~/.cache), without OpenCV: its image libraries pull in some 200 MB of dependencies;
#   - copies the binaries, the shared libraries they need that the GPU machine lacks (spdlog,
#     fmt, SentencePiece) and the golden data (compressed) into .gpu/.
# Then: the device tool runs `scripts/gpu_check.sh` with carry [".gpu"].
set -euo pipefail
cd "$(dirname "$0")/.."

version=${KOSMOSG_GPU_TORCH_VERSION:-2.11.0}
cache=${KOSMOSG_CACHE:-$HOME/.cache}
shared=${KOSMOSG_SHARED_DIR:-$(pwd)/../shared}
torch_root=$cache/kosmosg-torch-$version

if [ ! -f "$torch_root/torch/share/cmake/Torch/TorchConfig.cmake" ]; then
  tools=$cache/kosmosg-tools
  [ -x "$tools/bin/pip" ] || python3 -m venv "$tools"
  "$tools/bin/pip" download -q --no-deps -d "$cache/kosmosg-wheels" "torch==$version"
  wheel=$(ls "$cache"/kosmosg-wheels/torch-"$version"-*.whl | head -n 1)
  mkdir -p "$torch_root"
  echo "gpu_prepare: unpacking $wheel"
  python3 -m zipfile -e "$wheel" "$torch_root.tmp" && mv "$torch_root.tmp/torch" "$torch_root/torch" && rm -rf "$torch_root.tmp"
fi

export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
# The wheel's CUDA libraries (cuDNN, NCCL, the driver) live on the GPU machine, not here: let the
# linker leave the symbols LibTorch's own libraries need unresolved.
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$torch_root/torch" \
  -DKOSMOSG_WITH_OPENCV=OFF -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined
cmake --build build-gpu -j "$(nproc)" --target golden_parity kosmosg_bench kosmosg_cli

rm -rf .gpu && mkdir -p .gpu/bin .gpu/lib
cp build-gpu/tests/golden_parity build-gpu/kosmosg_bench build-gpu/kosmosg build-gpu/libkosmosg_spm.so .gpu/bin/
strip --strip-unneeded .gpu/bin/*
for lib in libspdlog.so.1.10 libfmt.so.9 libsentencepiece.so.0; do
  cp -L "$(/sbin/ldconfig -p | awk -v l="$lib" '$1 == l { print $NF; exit }')" .gpu/lib/
done
tar -C "$shared" -cJf .gpu/golden.tar.xz golden
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
du -sh .gpu
echo "gpu_prepare: ready; on the GPU machine run scripts/gpu_check.sh with carry [\".gpu\"]"
