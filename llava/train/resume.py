"""Which checkpoint a run resumes from, checked before training starts (llava.train.checkpoints
says what a folder lacks).

- `--resume_from_checkpoint DIR`: DIR must be complete (optimizer, scheduler, RNG, a trainer state
  that parses, weights, a finished save), else ResumeError names what it lacks; with
  `--resume_weights_only True` a folder with weights and a trainer state resumes anyway (fresh
  optimizer, schedule restarted), and the log says so.
- No flag (or True / latest / auto): the newest complete `checkpoint-N` in --output_dir; the newer
  folders skipped are logged with the reason.
"""

from __future__ import annotations

import logging
import os

from llava.train.checkpoints import CheckpointCheck, check_checkpoint, newest_complete

logger = logging.getLogger(__name__)

__all__ = ["ResumeError", "choose_checkpoint"]


class ResumeError(RuntimeError):
    """A checkpoint that cannot be resumed (what it lacks, or why it does not fit this run)."""


def choose_checkpoint(value, output_dir: str, *, weights_only: bool = False, **check_kw) -> str | None:
    """The checkpoint to resume: `value` (--resume_from_checkpoint) when it names a folder, checked
    first; else (None, "", True, latest, auto) the newest complete one in `output_dir`, logging the
    newer folders skipped and why. Raises ResumeError naming what an explicit folder lacks."""
    auto = value is None or str(value).lower() in ("", "true", "latest", "auto")
    if not auto:
        if not os.path.isdir(value):
            raise FileNotFoundError(f"--resume_from_checkpoint {value} is not a folder")
        check = check_checkpoint(value, **check_kw)
        for note in check.notes:
            logger.warning("%s: %s", value, note)
        if check.complete:
            return value
        if weights_only and check.weights_resumable:
            _weights_only_resume(value, check, check_kw)
            return value
        if check.weights_resumable:
            extra = (
                ", or add --resume_weights_only True to continue from its weights and step with a fresh "
                "optimizer and the learning-rate schedule restarted"
            )
        elif weights_only:
            extra = " (--resume_weights_only needs the weights and a trainer_state.json of a finished save)"
        else:
            extra = ""
        raise ResumeError(
            f"--resume_from_checkpoint {value} cannot be resumed: {check.reason}. Resuming without what a "
            "checkpoint holds would restart Adam and the warm-up silently. Pick a complete one (whose save "
            f"finished), or leave out --resume_from_checkpoint to take the newest complete one{extra}."
        )
    found, skipped = newest_complete(output_dir, weights_only=weights_only, **check_kw)
    for check in skipped:
        logger.warning("skipping %s: %s", check.path, check.reason)
    if found is not None:
        check = check_checkpoint(found, **check_kw)
        if not check.complete:
            _weights_only_resume(found, check, check_kw)
        if skipped:
            logger.warning("resuming from %s, the newest complete checkpoint", found)
    elif value is not None and str(value).lower() != "":
        why = "".join(f"; {c.path}: {c.reason}" for c in skipped)
        raise FileNotFoundError(
            f"--resume_from_checkpoint {value}: no complete checkpoint-* in {output_dir}{why}"
        )
    elif skipped:
        logger.warning("no complete checkpoint in %s: training starts from the beginning", output_dir)
    return found


def _weights_only_resume(folder: str, check: CheckpointCheck, check_kw: dict) -> None:
    if check_kw.get("deepspeed"):
        raise ResumeError(
            f"--resume_weights_only True with --deepspeed: {folder} is not complete ({check.reason}); "
            "DeepSpeed restores only its own complete state. Start a new run from the weights instead "
            "(--model_name_or_path, or --pretrain_mm_mlp_adapter for the projector)."
        )
    logger.warning(
        "--resume_weights_only: resuming %s from its weights and step only (%s): the optimizer "
        "starts afresh and the learning-rate schedule restarts from its warm-up",
        folder,
        check.reason,
    )
