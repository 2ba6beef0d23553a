#!/usr/bin/env bash
# The embedded default: set up .venv, then run the tiny end-to-end demo on the CPU.
# (Until the full demo lands, this is a smoke run of the tiny-model kit.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False WANDB_MODE=disabled
exec .venv/bin/python -m llava.demo "$@"
