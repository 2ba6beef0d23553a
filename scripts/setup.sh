#!/usr/bin/env bash
# Create (or reuse) the virtual environment at .venv and install the project into it.
#
#   bash scripts/setup.sh            # core + train + serve + dev extras
#   LLAVA_EXTRAS=serve bash scripts/setup.sh
#
# torch: if .venv already has a torch (for example the CUDA build a GPU user installed with
# `python3 -m venv .venv && .venv/bin/pip install torch`), it is kept. Otherwise the CPU build
# torch==2.13.0 is installed (LLAVA_TORCH overrides the requirement, e.g. LLAVA_TORCH=torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${LLAVA_EXTRAS:-train,serve,quant,dev}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
VPIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing ${LLAVA_TORCH:-torch==2.13.0} (CPU build; install your CUDA torch into .venv first to keep it)"
  "${VPIP[@]}" "${LLAVA_TORCH:-torch==2.13.0}"
else
  echo "[setup] keeping installed torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
fi
stamp=.venv/.llava-installed
want="$(cat pyproject.toml | sha1sum | cut -c1-12)-$EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing llava[$EXTRAS] (editable)"
  "${VPIP[@]}" -e ".[$EXTRAS]"
  echo "$want" > "$stamp"
else
  echo "[setup] llava[$EXTRAS] already installed"
fi
