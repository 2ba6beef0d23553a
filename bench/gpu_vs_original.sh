#!/usr/bin/env bash
# bench_vs_original.py on a GPU machine: both stages, both sides, LLaMA-7B / CLIP-L/336 shapes (issue 21).
#
#   here, once:  bash bench/gpu_wheels.sh                     # the wheels into .whl/ (about 15 MB)
#   there:       bash bench/gpu_vs_original.sh                # e.g. the device tool's run, carry [".whl"]
#
# The machine's python3 (torch with CUDA, transformers 5) runs this project, with liger-kernel from
# .whl/ours; the original runs on the same python with its wheels (.whl/original: llava-torch 1.2.2.post1,
# transformers 4.37.2, ...) installed under /tmp/original-site, first on its PYTHONPATH. The models are
# random, built on the GPU and saved under $WORK (13.5 GB at 32 layers). Sized for one 10-minute command
# on an H100/H200; if that is too long, LAYERS=16 halves the model (MFU stays comparable).
# Environment: LAYERS (32), STEPS (5: the first warms up), WORK (/tmp/bvo), WHEELS (.whl), PYTHON (python3),
# OUT (a folder for the log; the device tool sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
whl=${WHEELS:-.whl}
for side in original ours; do
  ls "$whl/$side"/*.whl > /dev/null || { echo "no wheels in $whl/$side: run bench/gpu_wheels.sh first" >&2; exit 2; }
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "/tmp/$side-site" \
    "$whl/$side"/*.whl
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
log=${OUT:-/tmp}/bench_vs_original.log
"$py" bench/bench_vs_original.py --shape 7b --device cuda --layers "${LAYERS:-32}" --steps "${STEPS:-5}" \
  --peer "$py" --peer-path /tmp/original-site --ours-path /tmp/ours-site --work "${WORK:-/tmp/bvo}" 2>&1 | tee "$log"
