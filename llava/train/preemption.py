"""Preemption and data faults: stop after a whole optimizer step, save a checkpoint, say how to resume.

- SIGTERM (what a cluster scheduler sends before preempting) or SIGINT (Ctrl-C) while training: the
  current optimizer step finishes, the next step's start is where every rank stops together, a
  checkpoint is written through the Trainer's own saving path, and `train()` raises
  `TrainingInterrupted` (its `checkpoint`, its `exit_code`: 143 for SIGTERM, 130 for SIGINT, which
  `exit_on_interrupt` turns into the process's exit status). The same command then resumes from
  --output_dir by itself. A second signal, more than `DUPLICATE_WINDOW_S` after the first, exits at
  once without saving; repeats inside that window are the same request (a launcher forwarding what
  the scheduler or the terminal sent its whole process group).
- An unreadable sample met while the next batch is fetched (`BadSampleError`, also from a DataLoader
  worker) without --skip_bad_samples: the same stop and save, then `StoppedOnBadSample` names the
  sample, the checkpoint, and the two ways on (fix it and rerun, or add --skip_bad_samples True).

The decision is taken when a step's batches are fetched (`Trainer.get_batch_samples`, wrapped on the
trainer instance): all micro-batches of a step are fetched before its first forward, so a stop never
leaves half an accumulation behind, and the checkpoint is the last completed optimizer step with the
RNG state of that step's end. With several processes a flag (signal number, fault) is all-reduced
there once per step, so all ranks stop at the same step even when only one was signalled or only one
hit the bad sample. DataLoader workers ignore SIGINT, and SIGTERM from anyone but their training
process: a scheduler that signals the whole process group would otherwise kill them mid-step.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import sys
import threading
import time

import numpy as np
import torch
from transformers import TrainerCallback

from llava.data.dataset import BadSampleError

logger = logging.getLogger(__name__)

__all__ = [
    "DUPLICATE_WINDOW_S",
    "StopGuard",
    "StoppedOnBadSample",
    "TrainingInterrupted",
    "exit_on_interrupt",
]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DUPLICATE_WINDOW_S = 2.0  # a repeat within this many seconds of the first signal is the same request
_AUTO_RESUME = ("", "true", "latest", "auto")


class TrainingInterrupted(BaseException):
    """Training stopped on SIGTERM / SIGINT. `checkpoint`: the folder a rerun resumes from (None when
    nothing was saved); `exit_code`: 128 + the signal number (143 SIGTERM, 130 SIGINT). A BaseException
    like KeyboardInterrupt, so that no `except Exception` on the way swallows it."""

    def __init__(self, message: str, signum: int, checkpoint: str | None = None):
        super().__init__(message)
        self.signum = int(signum)
        self.checkpoint = checkpoint

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StoppedOnBadSample(BadSampleError):
    """A sample could not be loaded mid-run; `checkpoint` holds the last completed step (or None)."""

    def __init__(self, message: str, sample_id=None, index: int | None = None, checkpoint: str | None = None):
        super().__init__(message, sample_id=sample_id, index=index)
        self.checkpoint = checkpoint


def exit_on_interrupt(fn, *args, **kwargs):
    """Run a training entry from the command line: `TrainingInterrupted` becomes its message (printed
    by the main process) and its exit code (143 / 130)."""
    try:
        return fn(*args, **kwargs)
    except TrainingInterrupted as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"[llava] {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)


def _say(text: str) -> None:
    """Write from a signal handler: os.write, as a buffered stream may be in the middle of a write."""
    try:
        os.write(2, (text + "\n").encode())
    except OSError:
        pass


class _IgnoreStopSignals:
    """A DataLoader worker_init_fn: ignore SIGINT, and SIGTERM unless the worker's own training process
    sends it (as it does to end a worker that does not stop by itself); then the loader's own init."""

    def __init__(self, inner=None):
        self.inner = inner

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # a blocked SIGTERM waits for the thread below, which can see who sent it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=_exit_on_sigterm_from_parent, name="sigterm", daemon=True).start()
        if self.inner is not None:
            self.inner(worker_id)


def _exit_on_sigterm_from_parent() -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == os.getppid():
            os._exit(0)  # what torch's own worker handler does for its parent's SIGTERM


def _rng_snapshot() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# llava.data.dataset's message: "sample 'x' (index 4, row 4 of data.json): ..." (streaming: "position 4 of epoch 0")
_NAMED = re.compile(r"sample (.+?) \((?:index|position) (\d+)[,)]")


def _describe(err: BadSampleError) -> str:
    """The error's own line (a DataLoader worker's re-raise wraps it in a traceback)."""
    text = str(err)
    lines = [line.split("BadSampleError: ", 1)[1] for line in text.splitlines() if "BadSampleError: " in line]
    return lines[-1] if lines else text.strip()


def _quiet_empty_epoch(record: logging.LogRecord) -> bool:
    """After a stop on an epoch's first step the Trainer thinks the epoch was empty: not so."""
    return not str(record.msg).startswith("There seems not to be a single sample")


class StopGuard(TrainerCallback):
    """For the duration of `with StopGuard(trainer, resumed_from):` -- trainer.train() and the final
    save -- SIGINT/SIGTERM stop training after the current step with a checkpoint, and so does a bad
    sample; `raise_if_stopped()` after trainer.train() then raises what happened. The previous signal
    handlers are restored on leaving."""

    def __init__(self, trainer, resumed_from: str | None = None):
        self.trainer = trainer
        self.resumed_from = resumed_from
        self.signum = 0  # the first stop signal this process received
        self._first_at = 0.0
        self._fault: BadSampleError | None = None  # a bad sample this process met
        self.decision: tuple[int, bool] | None = None  # (signal number, some rank met a bad sample)
        self._fault_text: str | None = None
        self._rng: dict | None = None  # at the end of the last step
        self._saved_step: int | None = None  # the step of the newest checkpoint of this run
        self._saved: str | None = resumed_from
        self._previous: dict = {}
        self._patched: dict = {}
        self._pid = os.getpid()

    # ---------------------------------------------------------------- context
    def __enter__(self):
        trainer = self.trainer
        trainer.add_callback(self)
        hooks = (("get_batch_samples", self._get_batch_samples), ("get_train_dataloader", self._loader))
        for name, fn in hooks:
            self._patched[name] = (trainer.__dict__.get(name), getattr(trainer, name))
            setattr(trainer, name, fn)
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        else:
            logger.warning("train() runs outside the main thread: SIGINT/SIGTERM will not save a checkpoint")
        return self

    def __exit__(self, exc_type, exc, tb):
        self._restore_handlers()
        for name, (own, _) in self._patched.items():
            if own is None:
                self.trainer.__dict__.pop(name, None)
            else:
                setattr(self.trainer, name, own)
        self._patched.clear()
        self.trainer.remove_callback(self)
        logging.getLogger("transformers.trainer").removeFilter(_quiet_empty_epoch)
        if exc_type is None and self.signum and self.decision is None and self.trainer.args.should_log:
            name = signal.Signals(self.signum).name
            logger.warning("%s arrived after the last training step: the run finished and saved it", name)
        return False

    def _restore_handlers(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _on_signal(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked child's copy of this handler
            return
        name, rank = signal.Signals(signum).name, os.environ.get("RANK", "0")
        now = time.monotonic()
        if not self.signum:
            self.signum, self._first_at = signum, now
            _say(
                f"[llava] rank {rank}: {name} received: finishing this optimizer step, then saving a "
                f"checkpoint and exiting (send it again after {DUPLICATE_WINDOW_S:g} s to exit at once "
                "without saving)"
            )
            return
        if now - self._first_at < DUPLICATE_WINDOW_S:
            return  # the same request, forwarded by a launcher or sent to the whole process group
        self._restore_handlers()
        raise TrainingInterrupted(
            f"{name} received a second time: exited at once without saving. The same command resumes "
            "from the newest complete checkpoint in --output_dir, if there is one.",
            signum,
        )

    # ---------------------------------------------------------------- trainer hooks
    def _loader(self):
        loader = self._patched["get_train_dataloader"][1]()
        # accelerate's DataLoaderShard iterates the DataLoader it wraps (base_dataloader): set both
        for each in (loader, getattr(loader, "base_dataloader", None)):
            init = getattr(each, "worker_init_fn", None)
            if getattr(each, "num_workers", 0) > 0 and not isinstance(init, _IgnoreStopSignals):
                each.worker_init_fn = _IgnoreStopSignals(init)
        return loader

    def _get_batch_samples(self, epoch_iterator, num_batches, device):
        # The step's batches are drawn here, then every rank agrees to go on or stop, and only then the
        # Trainer's own get_batch_samples runs on them: it may hold a collective (the token count
        # across ranks) that all ranks must reach together or none.
        fetched = []
        if not self.signum:  # a signalled rank draws nothing: its loader workers may be gone
            try:
                for _ in range(num_batches):
                    fetched.append(next(epoch_iterator))
            except StopIteration:
                pass
            except BadSampleError as err:
                self._fault = err
        signum, faulty = self._agree(self.signum, self._fault is not None)
        if signum or faulty:
            self._stop(signum, faulty)
            return [], None
        return self._patched["get_batch_samples"][1](iter(fetched), len(fetched), device)

    def _agree(self, signum: int, faulty: bool) -> tuple[int, bool]:
        """The same answer on every rank: the largest signal number and whether any rank met a fault."""
        if not _distributed():
            return signum, faulty
        import torch.distributed as dist

        flags = torch.tensor([signum, int(faulty)], dtype=torch.int64, device=self.trainer.args.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return int(flags[0]), bool(flags[1])

    def _stop(self, signum: int, faulty: bool) -> None:
        state, control = self.trainer.state, self.trainer.control
        self.decision = (signum, faulty)
        logging.getLogger("transformers.trainer").addFilter(_quiet_empty_epoch)
        if faulty:
            self._fault_text = self._gather_fault()
        control.should_training_stop = True
        control.should_save = self._needs_save(state)
        if control.should_save:  # this step's fetch may have drawn from the RNGs (a new epoch's shuffle)
            _restore_rng(self._rng)

    def _needs_save(self, state) -> bool:
        return state.global_step > (self._saved_step if self._saved_step is not None else 0)

    def _gather_fault(self) -> str:
        mine = _describe(self._fault) if self._fault is not None else None
        if not _distributed():
            return mine
        import torch.distributed as dist

        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, mine)
        return next(text for text in every if text)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.resumed_from is not None:
            self._saved_step = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        self._rng = _rng_snapshot()

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.decision is not None:  # after a stop: save only if this run has a step to save, no eval
            control.should_save = self._needs_save(state)
            control.should_evaluate = False

    def on_save(self, args, state, control, **kwargs):
        self._saved_step = state.global_step
        self._saved = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")

    # ---------------------------------------------------------------- outcome
    def raise_if_stopped(self) -> None:
        """After trainer.train(): raise TrainingInterrupted or StoppedOnBadSample if training stopped."""
        if self.decision is None:
            return
        self.trainer.accelerator.wait_for_everyone()  # nobody leaves before the checkpoint is whole
        signum, faulty = self.decision
        state, args = self.trainer.state, self.trainer.args
        saved_now = self._saved_step == state.global_step and self._saved != self.resumed_from
        if saved_now:
            where = f"saved {self._saved} (step {state.global_step} of {state.max_steps})"
        elif self._saved:
            where = (
                f"no step completed in this run, nothing new to save; the last checkpoint is {self._saved}"
            )
        else:
            where = "no step had completed, nothing was saved"
        value = args.resume_from_checkpoint
        explicit = value is not None and str(value).lower() not in _AUTO_RESUME
        if not self._saved:
            again = "run the same command again to start"
        elif explicit and self._saved != args.resume_from_checkpoint:
            again = f"rerun with --resume_from_checkpoint {self._saved} to resume"
        else:
            again = f"run the same command again: it resumes from the newest checkpoint in {args.output_dir}"
        if faulty:
            text = self._fault_text or "a sample could not be loaded"
            found = _NAMED.search(text)
            sample_id = found.group(1).strip("'\"") if found else getattr(self._fault, "sample_id", None)
            index = int(found.group(2)) if found else getattr(self._fault, "index", None)
            raise StoppedOnBadSample(
                f"{text}\nTraining stopped there and {where}. Fix the sample and {again}; or add "
                "--skip_bad_samples True to that command to replace unreadable samples by the next good one.",
                sample_id=sample_id,
                index=index,
                checkpoint=self._saved,
            )
        name = signal.Signals(signum).name
        raise TrainingInterrupted(
            f"{name}: training stopped after a whole optimizer step and {where}. {again[0].upper()}"
            f"{again[1:]} (exit code {128 + signum}).",
            signum,
            checkpoint=self._saved,
        )
