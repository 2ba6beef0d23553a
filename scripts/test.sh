#!/usr/bin/env bash
# Set up .venv (see scripts/setup.sh) and run the whole test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False WANDB_MODE=disabled
export DS_ACCELERATOR=cpu TOKENIZERS_PARALLELISM=false
.venv/bin/python -m ruff check llava tests scripts bench
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
