"""Training checkpoints that are whole or are not taken for one.

A save (LLaVATrainer._save_checkpoint) runs in three steps:
1. `begin_save`: the main process removes any older folder of the same name, creates
   `checkpoint-N/` and writes `IN_PROGRESS` into it before any rank writes a file (a barrier follows);
2. every rank writes its files (the Trainer's model, optimizer, scheduler, RNG, trainer state;
   DeepSpeed's `global_stepN/` shards);
3. `publish`: after a barrier, the main process flushes every file to disk, writes `MARKER`
   (`checkpoint_complete.json`: the step and each file with its size) and removes `IN_PROGRESS`.
   Only then does `rotate` delete older checkpoints (`--save_total_limit`).

`check_checkpoint` says what a folder lacks for a resume, in words: a marked folder must still
hold every file it lists at the listed size; a folder with `IN_PROGRESS` and no marker did not
finish; a folder with neither (written before this module existed) is accepted when it holds
what a resume needs. Every folder also needs a `trainer_state.json` that parses, weights, the
optimizer and scheduler state (or DeepSpeed's, one shard per rank) and the RNG state.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass

from llava.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)

MARKER = "checkpoint_complete.json"
IN_PROGRESS = "checkpoint_saving_in_progress"
TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES = (
    "mm_projector.bin",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
SCHEDULER_FILE = "scheduler.pt"
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
_ZERO_SHARD = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")

__all__ = [
    "IN_PROGRESS",
    "MARKER",
    "CheckpointCheck",
    "CheckpointDiskFull",
    "begin_save",
    "check_options",
    "check_checkpoint",
    "checkpoints_in",
    "discard",
    "free_space_warning",
    "is_disk_full",
    "newest_complete",
    "publish",
    "rotate",
]


class CheckpointDiskFull(OSError):
    """The disk filled up while a checkpoint was written (`errno` ENOSPC, `filename` the folder)."""

    def __init__(self, message: str, folder: str):
        super().__init__(errno.ENOSPC, message, folder)


@dataclass(frozen=True)
class CheckpointCheck:
    """What `check_checkpoint` found. `missing`: what a full resume needs and the folder lacks (empty
    when complete); `whole`: its save finished (marker valid, or an unmarked older folder);
    `weights` and `state`: it holds model weights and a trainer_state.json that parses (enough for
    a weights-only resume); `notes`: things to say that do not stop a resume."""

    path: str
    missing: tuple[str, ...]
    whole: bool
    finished: bool
    weights: bool
    state: bool
    notes: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def weights_resumable(self) -> bool:
        return self.finished and self.weights and self.state

    @property
    def reason(self) -> str:
        return "; ".join(self.missing) or "complete"


def _files(folder: str) -> dict[str, int]:
    """Every file under `folder` (relative path -> size), but the marker and the in-progress file."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel not in (MARKER, IN_PROGRESS) and os.path.isfile(path):
                out[rel] = os.path.getsize(path)
    return out


def _is_training_state(rel: str) -> bool:
    """Optimizer, scheduler, scaler or RNG state: what a weights-only resume does without."""
    name = os.path.basename(rel)
    return rel in OPTIMIZER_FILES + (SCHEDULER_FILE, "scaler.pt") or (
        "/" not in rel and name.startswith("rng_state") and name.endswith(".pth")
    )


def _marker_problems(folder: str) -> tuple[list[str], set[str]]:
    """What no longer matches the marker, in words, and the files concerned (None: no marker)."""
    try:
        with open(os.path.join(folder, MARKER)) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"{MARKER} is unreadable ({type(err).__name__})"], {MARKER}
    problems, damaged = [], set()
    for rel, size in sorted(files.items()):
        path = os.path.join(folder, rel)
        if not os.path.isfile(path):
            damaged.add(rel)
            if not _is_training_state(rel) and rel != TRAINER_STATE:  # those are named below
                problems.append(f"{rel}, listed in {MARKER}, is gone")
        elif os.path.getsize(path) != size:
            damaged.add(rel)
            problems.append(
                f"{rel} is {os.path.getsize(path)} bytes where {MARKER} says {size} (truncated or changed)"
            )
    return problems, damaged


def _state_problem(folder: str) -> str | None:
    path = os.path.join(folder, TRAINER_STATE)
    if not os.path.isfile(path):
        return f"no {TRAINER_STATE} (step, sampler position and log)"
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError) as err:
        return f"{TRAINER_STATE} does not parse (truncated? {type(err).__name__}: {str(err)[:80]})"
    if not isinstance(state, dict) or "global_step" not in state:
        return f"{TRAINER_STATE} holds no global_step"
    return None


def _deepspeed_tag(folder: str) -> str | None:
    """The global_stepN folder DeepSpeed's `latest` file names, when both exist."""
    try:
        with open(os.path.join(folder, "latest")) as f:
            tag = f.read().strip()
    except OSError:
        return None
    return tag if tag and os.path.isdir(os.path.join(folder, tag)) else None


def _deepspeed_problems(folder: str, tag: str | None, world_size: int) -> list[str]:
    if tag is None:
        return ["no DeepSpeed state (a `latest` file naming its global_stepN/ folder)"]
    names = os.listdir(os.path.join(folder, tag))
    ranks = {int(m.group(1)) for n in names if (m := _ZERO_SHARD.search(n))}
    if not ranks:  # ZeRO stage 0 keeps the optimizer in the module states
        if not any(n.endswith("model_states.pt") for n in names):
            return [f"no DeepSpeed optimizer state in {tag}/"]
        return []
    absent = sorted(set(range(world_size)) - ranks)
    if absent:
        return [
            f"no DeepSpeed optimizer shards of rank(s) {absent} in {tag}/ (it holds ranks {sorted(ranks)}; "
            f"this run has {world_size})"
        ]
    return []


def _rng_problems(names: set[str], world_size: int) -> tuple[list[str], list[str]]:
    wanted = ["rng_state.pth"] if world_size <= 1 else [f"rng_state_{i}.pth" for i in range(world_size)]
    absent = [n for n in wanted if n not in names]
    if not absent:
        return [], []
    others = sorted(n for n in names if n.startswith("rng_state"))
    if others:  # written by another number of processes: the Trainer resumes, with other random numbers
        return [], [f"its RNG state ({', '.join(others)}) is not of this run's {world_size} process(es)"]
    return [f"no RNG state ({', '.join(absent)})"], []


def check_checkpoint(
    folder: str, *, world_size: int = 1, deepspeed: bool = False, deepspeed_scheduler: bool = False
) -> CheckpointCheck:
    """What `folder` lacks for resuming a run of `world_size` processes (with DeepSpeed or not;
    `deepspeed_scheduler`: the DeepSpeed config has its own scheduler, saved in its state)."""
    folder = str(folder)
    names = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    missing: list[str] = []
    damaged: set[str] = set()
    finished = True
    if MARKER in names:
        missing, damaged = _marker_problems(folder)
        finished = MARKER not in damaged
    elif IN_PROGRESS in names:
        missing.append(f"its save did not finish (no {MARKER})")
        finished = False
    whole = finished and not damaged
    state_problem = _state_problem(folder)
    if state_problem:
        missing.append(state_problem)
    tag = _deepspeed_tag(folder)
    weights = any(n in names for n in WEIGHT_FILES) or tag is not None
    if not weights:
        missing.append("no model weights (mm_projector.bin, model*.safetensors or adapter_model.*)")
    if deepspeed:
        missing += _deepspeed_problems(folder, tag, world_size)
    elif not any(n in names for n in OPTIMIZER_FILES):
        hint = f" (its optimizer state is DeepSpeed's, in {tag}/: resume with --deepspeed)" if tag else ""
        missing.append(f"no optimizer state (optimizer.pt){hint}")
    if SCHEDULER_FILE not in names and not (deepspeed and deepspeed_scheduler):
        missing.append(f"no learning-rate scheduler state ({SCHEDULER_FILE})")
    rng_missing, notes = _rng_problems(names, world_size)
    missing += rng_missing
    weights = weights and all(_is_training_state(rel) or rel == TRAINER_STATE for rel in damaged)
    state = state_problem is None and TRAINER_STATE not in damaged
    return CheckpointCheck(folder, tuple(missing), whole, finished, weights, state, tuple(notes))


def check_options(training_args) -> dict:
    """`check_checkpoint`'s keywords for a run: its processes, DeepSpeed, a DeepSpeed scheduler."""
    ds = getattr(training_args, "deepspeed", None)
    config = getattr(getattr(training_args, "hf_deepspeed_config", None), "config", None)
    if config is None and isinstance(ds, dict):
        config = ds
    elif config is None and isinstance(ds, str) and os.path.isfile(ds):
        try:
            with open(ds) as f:
                config = json.load(f)
        except (OSError, ValueError):
            config = None
    return {
        "world_size": max(1, int(getattr(training_args, "world_size", 1) or 1)),
        "deepspeed": bool(ds),
        "deepspeed_scheduler": isinstance(config, dict) and "scheduler" in config,
    }


def checkpoints_in(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every `checkpoint-N` folder in `output_dir`, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = CHECKPOINT_NAME.match(name)
        if m and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(m.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def newest_complete(
    output_dir: str, *, weights_only: bool = False, **check_kw
) -> tuple[str | None, list[CheckpointCheck]]:
    """The newest complete checkpoint in `output_dir` (with `weights_only`: or the newest one that
    holds weights and a trainer state), and the checks of the newer folders it skipped."""
    skipped = []
    for _, path in reversed(checkpoints_in(output_dir)):
        check = check_checkpoint(path, **check_kw)
        if check.complete or (weights_only and check.weights_resumable):
            return path, skipped
        skipped.append(check)
    return None, skipped


# ---------------------------------------------------------------------------- saving
def _remove(folder: str) -> None:
    """Rename `folder` out of the `checkpoint-N` namespace first (atomic), then delete it: a kill
    during the deletion leaves no half-deleted folder that looks like a checkpoint."""
    parent, name = os.path.split(os.path.abspath(folder))
    doomed = os.path.join(parent, f".{name}.deleting-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(folder, doomed)
    except OSError:
        doomed = folder
    shutil.rmtree(doomed, ignore_errors=True)


def begin_save(folder: str) -> None:
    """Main process, before any rank writes: a fresh `folder` holding only the in-progress file."""
    if os.path.isdir(folder):
        check = check_checkpoint(folder)
        if check.whole:
            logger.warning("replacing %s (this run saves the same step again)", folder)
        else:
            logger.info("removing %s, left unfinished by an earlier run", folder)
        _remove(folder)
    os.makedirs(folder)
    atomic_write_text(
        os.path.join(folder, IN_PROGRESS),
        f"being written by pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n",
    )


def _fsync(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync folders
        pass
    finally:
        os.close(fd)


def publish(folder: str, *, global_step: int, world_size: int) -> dict[str, int]:
    """Main process, after every rank wrote its files: flush them, write the marker (the files and
    their sizes, written last and atomically) and remove the in-progress file. Returns the files."""
    files = _files(folder)
    for rel in files:
        _fsync(os.path.join(folder, rel))
    for root, _, _ in os.walk(folder):
        _fsync(root)
    record = {"format": 1, "global_step": global_step, "world_size": world_size, "files": files}
    atomic_write_text(os.path.join(folder, MARKER), json.dumps(record, indent=1, sort_keys=True) + "\n")
    _fsync(folder)
    try:
        os.remove(os.path.join(folder, IN_PROGRESS))
    except FileNotFoundError:
        pass
    return files


def discard(folder: str) -> None:
    """Remove a checkpoint whose save failed."""
    if os.path.isdir(folder):
        _remove(folder)
        logger.warning("removed the partial checkpoint %s", folder)


def rotate(
    output_dir: str, limit: int | None, *, keep: tuple[str, ...] = (), need_state: bool = True, **check_kw
) -> list[str]:
    """`--save_total_limit`: keep the newest `limit` complete checkpoints (with `need_state` False, as
    with --save_only_model: whole ones) and those in `keep` (the best model); delete older complete
    ones and every unfinished folder older than the newest complete one. Returns the removed paths."""
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else ():
        if name.startswith(".checkpoint-") and ".deleting-" in name:  # a deletion that was cut short
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
    if not limit or limit <= 0:
        return []
    found = [(step, path, check_checkpoint(path, **check_kw)) for step, path in checkpoints_in(output_dir)]
    good = [(step, path) for step, path, c in found if (c.complete if need_state else c.whole)]
    if not good:
        return []
    kept = {path for _, path in good[-limit:]} | {os.path.abspath(k) for k in keep if k}
    newest = good[-1][0]
    removed = []
    for step, path, check in found:
        if path in kept or os.path.abspath(path) in kept:
            continue
        is_good = check.complete if need_state else check.whole
        if is_good or step < newest:
            why = "save_total_limit" if is_good else f"unfinished: {check.reason}"
            logger.info("deleting %s (%s)", path, why)
            _remove(path)
            removed.append(path)
    return removed


# ---------------------------------------------------------------------------- disk space
_FULL_MESSAGES = ("no space left", "disk quota exceeded", "unexpected pos")


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC / EDQUOT, or torch's "[enforce fail at inline_container.cc] unexpected pos" (what a
    short write of torch.save's zip writer says), in `err` or what it was raised from."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(m in str(err).lower() for m in _FULL_MESSAGES):
            return True
        err = err.__cause__ or err.__context__
    return False


def folder_bytes(folder: str) -> int:
    return sum(_files(folder).values())


def free_space_warning(output_dir: str, needed: int, basis: str) -> str | None:
    """A warning (also logged) when the disk of `output_dir` has less than `needed` bytes (+10%) free."""
    try:
        free = shutil.disk_usage(output_dir).free
    except OSError:
        return None
    if free >= needed * 1.1:
        return None
    message = (
        f"only {free / 2**30:.2f} GiB free on the disk of {output_dir}, and the next checkpoint needs "
        f"about {needed / 2**30:.2f} GiB ({basis}): the save may fail for lack of space. Free some "
        "space or lower --save_total_limit"
    )
    logger.warning(message)
    return message
