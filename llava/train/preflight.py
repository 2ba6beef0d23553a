"""Checks run right after the command line is parsed, before minutes go into loading models.

- flags of different groups that cannot go together;
- `--report_to wandb` (the published scripts' setting) without wandb installed, or without a W&B
  key where wandb cannot ask for one (no terminal): wandb would fail only when training begins.
"""

from __future__ import annotations

import netrc
import os
import sys
from urllib.parse import urlparse

_WANDB_NO_KEY_MODES = ("offline", "disabled", "dryrun")


def check_flag_combinations(data_args, training_args) -> None:
    from llava.data.length_budget import FIXED_COST_MODES

    mode = data_args.image_aspect_ratio
    if getattr(training_args, "packing", False) and mode not in FIXED_COST_MODES:
        raise ValueError(
            f"--packing True with --image_aspect_ratio {mode}: packing counts the tower's fixed number of "
            "tokens per image (llava.data.length_budget), while anyres gives each image as many as its "
            "tiles; use one or the other"
        )


def _wandb_key_in_netrc(host: str) -> bool:
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def check_wandb(training_args, interactive: bool | None = None) -> None:
    report_to = training_args.report_to or []
    if "wandb" not in (report_to if isinstance(report_to, list) else [report_to]):
        return
    try:
        import wandb  # noqa: F401
    except ImportError as err:
        raise ValueError(
            "--report_to wandb: wandb is not installed (pip install wandb, or the [train] extra); "
            "pass --report_to none to train without it"
        ) from err
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE", "").lower() in _WANDB_NO_KEY_MODES:
        return
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    if _wandb_key_in_netrc(host):
        return
    if interactive is None:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    if not interactive:
        raise ValueError(
            f"--report_to wandb: no W&B key for {host} (WANDB_API_KEY, or `wandb login` once) and no "
            "terminal for wandb to ask for one; set WANDB_MODE=offline to log locally, or pass "
            "--report_to none"
        )


def preflight(data_args, training_args) -> None:
    check_flag_combinations(data_args, training_args)
    check_wandb(training_args)
