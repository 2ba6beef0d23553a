"""Training with the tiny kit: a crash or a full disk during a checkpoint save loses nothing, and
what resume takes is checked first; each resume is compared with an uninterrupted run."""

import errno
import json
import logging
import shutil

import pytest
import torch
from test_train import one_thread, run, stage1_args, train_kit  # noqa: F401 (fixture)
from test_train_resume import _losses, _same_weights
from transformers.trainer_callback import TrainerState

from llava.train.checkpoints import CheckpointDiskFull, check_checkpoint
from llava.train.resume import ResumeError

EXTRA = "--max_steps 6 --save_steps 2"


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the trainer catches it."""


class KillAt:
    def __init__(self, step):
        from transformers import TrainerCallback

        class _Kill(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    raise Killed(step)

        self.callback = _Kill()


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return train_kit(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    return run(stage1_args(kit, out, EXTRA))


def _assert_same_run(reference, resumed):
    ref, res = _losses(reference.state.log_history), _losses(resumed.state.log_history)
    assert sorted(res) == sorted(ref) == [1, 2, 3, 4, 5, 6], res
    for step, loss in res.items():
        assert loss == pytest.approx(ref[step], abs=1e-5), (step, loss, ref[step])
    _same_weights(reference, resumed, "mm_projector")


def test_a_crash_while_saving_leaves_no_checkpoint_that_resume_takes(
    kit, reference, tmp_path, monkeypatch, caplog
):
    """Killed while checkpoint-4 is written (its trainer_state.json already there, its optimizer.pt
    still being written, as by another rank or an unflushed disk) with --save_total_limit 1: the
    previous checkpoint is still there and whole, and resuming equals the uninterrupted run."""
    out = tmp_path / "out"
    save_to_json = TrainerState.save_to_json

    def killed_after_state(self, json_path):
        save_to_json(self, json_path)
        if "checkpoint-4" in str(json_path):
            optimizer = out / "checkpoint-4" / "optimizer.pt"
            optimizer.write_bytes(optimizer.read_bytes()[:1000])
            raise Killed("checkpoint-4")

    with monkeypatch.context() as patch:
        patch.setattr(TrainerState, "save_to_json", killed_after_state)
        with pytest.raises(Killed):
            run(stage1_args(kit, out, EXTRA + " --save_total_limit 1"))
    assert check_checkpoint(out / "checkpoint-2").complete  # rotation waits for the new one to be whole
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()  # looked complete before markers
    with caplog.at_level(logging.INFO, logger="llava"):
        resumed = run(stage1_args(kit, out, EXTRA + " --save_total_limit 1"))
    assert "skipping" in caplog.text and "checkpoint-4: its save did not finish" in caplog.text
    assert "resuming from " + str(out / "checkpoint-2") in caplog.text
    _assert_same_run(reference, resumed)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]  # the rest rotated away


def test_automatic_resume_skips_a_truncated_trainer_state_and_names_it(kit, reference, tmp_path, caplog):
    """A checkpoint written before completion markers whose trainer_state.json was cut short (disk
    full at that file) is skipped, naming why; the run resumes from the one before."""
    out = tmp_path / "out"
    with pytest.raises(Killed):
        run(stage1_args(kit, out, EXTRA), [KillAt(5).callback])
    newest = out / "checkpoint-4"
    (newest / "checkpoint_complete.json").unlink(missing_ok=True)  # as written before markers
    state = newest / "trainer_state.json"
    state.write_text(state.read_text()[:100])
    with caplog.at_level(logging.WARNING, logger="llava"):
        resumed = run(stage1_args(kit, out, EXTRA))
    assert f"skipping {newest}: trainer_state.json does not parse" in caplog.text
    _assert_same_run(reference, resumed)


@pytest.fixture(scope="module")
def finished(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    run(stage1_args(kit, out, "--max_steps 4 --save_steps 2"))
    return out


def test_explicit_resume_without_optimizer_is_an_error_unless_weights_only(kit, finished, tmp_path, caplog):
    folder = tmp_path / "checkpoint-2"
    shutil.copytree(finished / "checkpoint-2", folder)
    (folder / "optimizer.pt").unlink()
    args = stage1_args(kit, tmp_path / "out", f"--max_steps 4 --resume_from_checkpoint {folder}")
    with pytest.raises(ResumeError, match=r"checkpoint-2 cannot be resumed: no optimizer state \(optimizer"):
        run(args)
    with caplog.at_level(logging.WARNING, logger="llava"):
        trainer = run(args + ["--resume_weights_only", "True"])
    assert f"--resume_weights_only: resuming {folder} from its weights and step only" in caplog.text
    assert trainer.state.global_step == 4 and _losses(trainer.state.log_history).keys() == {1, 2, 3, 4}


def test_explicit_resume_with_a_truncated_trainer_state_names_it(kit, finished, tmp_path):
    folder = tmp_path / "checkpoint-2"
    shutil.copytree(finished / "checkpoint-2", folder)
    (folder / "trainer_state.json").write_text('{"best_global_step": null, "best_met')
    args = stage1_args(kit, tmp_path / "out", f"--max_steps 4 --resume_from_checkpoint {folder}")
    with pytest.raises(ResumeError, match=r"checkpoint-2 cannot be resumed: .*trainer_state\.json does not"):
        run(args + ["--resume_weights_only", "True"])


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1282112 vs 1282000"),
    ],
    ids=["ENOSPC", "torch-unexpected-pos"],
)
def test_disk_full_names_the_folder_removes_the_partial_checkpoint_and_keeps_the_last(
    kit, reference, tmp_path, monkeypatch, error
):
    out = tmp_path / "out"
    save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt") and "checkpoint-4" in str(f):
            with open(f, "wb") as partial:
                partial.write(b"PK" * 100)
            raise error
        return save(obj, f, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", full_disk)
        with pytest.raises(CheckpointDiskFull) as caught:
            run(stage1_args(kit, out, EXTRA))
    message = str(caught.value)
    assert "no space left" in message and str(out / "checkpoint-4") in message
    assert f"the last complete checkpoint, {out / 'checkpoint-2'}, is kept" in message
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(out / "checkpoint-4")
    assert not (out / "checkpoint-4").exists() and check_checkpoint(out / "checkpoint-2").complete
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2"]  # nothing else left behind
    _assert_same_run(reference, run(stage1_args(kit, out, EXTRA)))


def test_a_save_warns_early_when_the_disk_looks_too_full(kit, tmp_path, monkeypatch, caplog):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 1000, 1000))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="llava"):
        run(stage1_args(kit, out, "--max_steps 2 --save_steps 1"))
    warnings = [r.getMessage() for r in caplog.records if "GiB free on the disk of" in r.getMessage()]
    assert len(warnings) == 2 and all(str(out) in w for w in warnings), warnings
    assert "estimated from the model" in warnings[0] and f"the size of {out / 'checkpoint-1'}" in warnings[1]
    assert json.loads((out / "checkpoint-2" / "checkpoint_complete.json").read_text())["global_step"] == 2
