"""SIGTERM / SIGINT and an unreadable image mid-run: a checkpoint of the last whole step, a clear stop,
and the same command resumes to the uninterrupted run's losses and weights (llava.train.preemption).

Stage 1 on the tiny kit: 16 samples, batch 4, 2 epochs = 8 steps, no scheduled checkpoint before the
end (--save_steps 100), one DataLoader worker; images are a private copy the fault test may spoil.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from test_train import one_thread, run, stage1_args, train_kit  # noqa: F401 (fixture)
from transformers import TrainerCallback

from llava.train import preemption
from llava.train.preemption import StoppedOnBadSample, TrainingInterrupted

SIGNAL_ENTRY = textwrap.dedent(
    """
    import os, subprocess, sys
    from transformers import TrainerCallback
    from llava.train.preemption import exit_on_interrupt
    from llava.train.train import train

    class SignalAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == int(os.environ["SIGNAL_AT_STEP"]):
                # as a scheduler does: from another process, to the whole group (loader workers too)
                kill = ["kill", "-TERM", "--", f"-{os.getpgid(0)}"]
                subprocess.run(kill, check=True, start_new_session=True)

    exit_on_interrupt(train, argv=sys.argv[1:], callbacks=[SignalAt()])
    """
)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return train_kit(tmp_path_factory)


@pytest.fixture(scope="module")
def images(kit, tmp_path_factory):
    folder = tmp_path_factory.mktemp("preemption") / "images"
    shutil.copytree(kit.images, folder)
    return folder


def _args(kit, images, out) -> list[str]:
    extra = f"--num_train_epochs 2 --save_steps 100 --image_folder {images} --dataloader_num_workers 1"
    return stage1_args(kit, out, extra)


@pytest.fixture(scope="module")
def reference(kit, images, tmp_path_factory):
    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    trainer = run(_args(kit, images, tmp_path_factory.mktemp("reference")))
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == before  # restored
    return trainer


def _losses(trainer) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


def _same_run(reference, resumed, out) -> None:
    """Losses step for step and the final projector equal the uninterrupted run's."""
    ref, res = _losses(reference), _losses(resumed)
    assert sorted(res) == sorted(ref) == list(range(1, 9)), res
    for step, loss in res.items():
        assert loss == pytest.approx(ref[step], abs=1e-5), (step, loss, ref[step])
    final_ref = torch.load(os.path.join(reference.args.output_dir, "mm_projector.bin"), weights_only=True)
    final_res = torch.load(out / "mm_projector.bin", weights_only=True)
    assert sorted(final_ref) == sorted(final_res)
    for key, value in final_ref.items():
        assert torch.allclose(value, final_res[key], atol=1e-6), key


def _checkpoint_step(folder) -> int:
    for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth", "mm_projector.bin"):
        assert (folder / name).is_file(), (folder, name)
    return json.loads((folder / "trainer_state.json").read_text())["global_step"]


@pytest.mark.slow
def test_sigterm_to_the_process_group_saves_the_step_and_the_same_command_resumes(
    kit, images, reference, tmp_path
):
    out = tmp_path / "out"
    script = tmp_path / "entry.py"
    script.write_text(SIGNAL_ENTRY)
    proc = subprocess.run(
        [sys.executable, str(script), *_args(kit, images, out)],
        env={**os.environ, "SIGNAL_AT_STEP": "3", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,  # its own process group, as a job's
    )
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "SIGTERM received: finishing this optimizer step" in proc.stderr
    assert f"saved {out / 'checkpoint-3'} (step 3 of 8)" in proc.stderr
    assert f"Run the same command again: it resumes from the newest checkpoint in {out}" in proc.stderr
    assert _checkpoint_step(out / "checkpoint-3") == 3
    assert not (out / "mm_projector.bin").exists()  # it stopped: no final model
    resumed = run(_args(kit, images, out))  # finds checkpoint-3 by itself
    _same_run(reference, resumed, out)


class _SignalAt(TrainerCallback):
    def __init__(self, step: int, signals, pause: float = 0.0):
        self.step, self.signals, self.pause = step, signals, pause

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            for i, sig in enumerate(self.signals):
                if i:
                    time.sleep(self.pause)
                os.kill(os.getpid(), sig)


@pytest.fixture
def own_handlers():
    """Recording handlers in place of the defaults: train() must put them back, and never call them."""
    seen = []

    def record(signum, frame):
        seen.append(signum)

    previous = {s: signal.signal(s, record) for s in (signal.SIGINT, signal.SIGTERM)}
    yield record, seen
    for s, handler in previous.items():
        signal.signal(s, handler)


def test_a_second_sigint_exits_at_once_without_saving(kit, images, tmp_path, monkeypatch, own_handlers):
    record, seen = own_handlers
    monkeypatch.setattr(preemption, "DUPLICATE_WINDOW_S", 0.05)
    out = tmp_path / "out"
    with pytest.raises(TrainingInterrupted, match="second time: exited at once") as e:
        run(_args(kit, images, out), [_SignalAt(2, [signal.SIGINT, signal.SIGINT], pause=0.2)])
    assert e.value.checkpoint is None and e.value.exit_code == 130 and e.value.signal_name == "SIGINT"
    assert not list(out.glob("checkpoint-*"))
    assert signal.getsignal(signal.SIGINT) is record and signal.getsignal(signal.SIGTERM) is record
    assert seen == []


def test_repeats_within_the_window_are_one_request_and_stop_after_the_step(
    kit, images, tmp_path, own_handlers
):
    record, seen = own_handlers
    out = tmp_path / "out"
    # the scheduler's SIGTERM, then the launcher forwarding it, then the terminal's SIGINT
    signals = [signal.SIGTERM, signal.SIGTERM, signal.SIGINT]
    with pytest.raises(TrainingInterrupted) as e:
        run(_args(kit, images, out), [_SignalAt(2, signals)])
    assert e.value.exit_code == 143 and e.value.checkpoint == str(out / "checkpoint-2"), str(e.value)
    assert _checkpoint_step(out / "checkpoint-2") == 2
    assert sorted(out.glob("checkpoint-*")) == [out / "checkpoint-2"]
    assert signal.getsignal(signal.SIGINT) is record and signal.getsignal(signal.SIGTERM) is record
    assert seen == []


class _SpoilImages(TrainerCallback):
    """At the end of step 2, every image file becomes text: the next batches a worker loads fail."""

    def __init__(self, folder):
        self.folder = folder

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            for path in self.folder.rglob("*"):
                if path.is_file():
                    path.write_text("not an image")


@pytest.mark.slow
def test_an_unreadable_image_mid_run_saves_the_last_step_names_it_and_resumes_once_fixed(
    kit, images, reference, tmp_path
):
    out = tmp_path / "out"
    try:
        with pytest.raises(StoppedOnBadSample) as e:
            run(_args(kit, images, out), [_SpoilImages(images)])
    finally:
        shutil.rmtree(images)
        shutil.copytree(kit.images, images)
    message = str(e.value)
    # the DataLoader worker's own error, its sample named, then where it stopped and the two ways on
    assert message.startswith("sample ") and "cannot be read" in message and str(images) in message
    assert e.value.sample_id and e.value.index is not None and f"sample {e.value.sample_id!r}" in message
    step = _checkpoint_step(out / os.path.basename(e.value.checkpoint))
    assert 2 <= step <= 4 and e.value.checkpoint == str(out / f"checkpoint-{step}")
    assert f"saved {e.value.checkpoint} (step {step} of 8)" in message
    assert "Fix the sample and run the same command again" in message
    assert "add --skip_bad_samples True" in message
    assert not (out / "mm_projector.bin").exists()
    resumed = run(_args(kit, images, out))  # the image fixed: resumes from the checkpoint by itself
    _same_run(reference, resumed, out)


def test_an_unreadable_image_at_the_first_step_saves_nothing_and_says_so(kit, images, tmp_path):
    spoilt = tmp_path / "images"
    shutil.copytree(kit.images, spoilt)
    for path in spoilt.rglob("*"):
        if path.is_file():
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # a truncated PNG
    args = [
        *_args(kit, images, tmp_path / "out"),
        "--image_folder",
        str(spoilt),
        "--dataloader_num_workers",
        "0",
    ]
    with pytest.raises(StoppedOnBadSample, match="no step had completed, nothing was saved") as e:
        run(args)
    assert e.value.checkpoint is None and "run the same command again to start" in str(e.value)
    assert e.value.sample_id is not None and not list((tmp_path / "out").glob("checkpoint-*"))
