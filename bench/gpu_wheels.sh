#!/usr/bin/env bash
# The wheels bench/gpu_vs_original.sh installs on the GPU machine, which has no network: fetched here.
#
#   bash bench/gpu_wheels.sh [DEST] [PYTHON_VERSION]      # defaults: .whl (ignored by git), 3.12 (the GPU image's)
#
# DEST/original: the original LLaVA (llava-torch 1.2.2.post1) and what it needs that the GPU image lacks or
#   holds only in versions too new for transformers 4.37.2 (about 14 MB): they are installed with
#   `pip --target` and put first on the original's PYTHONPATH; torch, numpy, safetensors, sentencepiece,
#   einops, pillow and protobuf are the image's own.
# DEST/ours: liger-kernel (this project's --use_liger_kernel True; the image has triton).
set -euo pipefail
dest=${1:-.whl}
py=${2:-3.12}
get() {
  local into=$1
  shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$into" "$@"
}
get "$dest/original" llava-torch==1.2.2.post1 transformers==4.37.2 tokenizers==0.15.1 huggingface-hub==0.20.3 \
  peft==0.10.0 accelerate==0.21.0 shortuuid==1.0.13
get "$dest/ours" liger-kernel==0.8.5
du -sh "$dest/original" "$dest/ours"
