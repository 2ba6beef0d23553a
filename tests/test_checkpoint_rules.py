"""llava.train.checkpoints on hand-made folders: what makes a checkpoint complete, publishing,
rotation, the disk-full test and the choice of the checkpoint to resume (llava.train.resume)."""

import errno
import json
import logging
import shutil
from collections import namedtuple

import pytest

from llava.train import checkpoints
from llava.train.checkpoints import IN_PROGRESS, MARKER, check_checkpoint
from llava.train.resume import ResumeError, choose_checkpoint

FULL = ("mm_projector.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")


def make(folder, names=FULL, step=2, published=True):
    """A checkpoint folder holding `names` (trainer_state.json valid); published: with its marker."""
    folder.mkdir(parents=True)
    for name in names:
        text = json.dumps({"global_step": step}) if name == "trainer_state.json" else "x" * 64
        (folder / name).write_text(text)
    if published:
        checkpoints.publish(str(folder), global_step=step, world_size=1)
    return folder


def test_a_checkpoint_written_before_markers_is_complete_when_it_holds_everything(tmp_path):
    assert check_checkpoint(make(tmp_path / "old", published=False)).complete
    check = check_checkpoint(make(tmp_path / "half", FULL[:1] + FULL[4:], published=False))
    assert not check.complete and check.weights_resumable
    assert all(name in check.reason for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"))


def test_a_truncated_trainer_state_or_file_and_an_unfinished_save_are_not_complete(tmp_path):
    legacy = make(tmp_path / "legacy", published=False)
    (legacy / "trainer_state.json").write_text('{"global_st')
    assert "trainer_state.json does not parse" in check_checkpoint(legacy).reason

    marked = make(tmp_path / "marked")
    assert json.loads((marked / MARKER).read_text())["files"]["optimizer.pt"] == 64
    (marked / "optimizer.pt").write_text("x" * 10)
    check = check_checkpoint(marked)
    assert not check.whole and "optimizer.pt is 10 bytes where" in check.reason

    unfinished = make(tmp_path / "unfinished", published=False)
    (unfinished / IN_PROGRESS).write_text("")
    assert not check_checkpoint(unfinished).whole  # every file there, but its save never finished
    assert f"no {MARKER}" in check_checkpoint(unfinished).reason


def test_deepspeed_needs_a_shard_per_rank_and_its_latest_tag(tmp_path):
    folder = make(
        tmp_path / "ds",
        ("mm_projector.bin", "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"),
        published=False,
    )
    kw = {"world_size": 2, "deepspeed": True}
    assert "latest" in check_checkpoint(folder, **kw).reason
    (folder / "global_step2").mkdir()
    (folder / "latest").write_text("global_step2")
    (folder / "global_step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_text("x")
    assert "rank(s) [1]" in check_checkpoint(folder, **kw).reason
    (folder / "global_step2" / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt").write_text("x")
    assert check_checkpoint(folder, **kw).complete
    # without --deepspeed the same folder has no optimizer.pt, and the message says why
    assert "resume with --deepspeed" in check_checkpoint(folder, world_size=2).reason


def test_rotation_keeps_the_newest_complete_and_removes_unfinished_older_folders(tmp_path, monkeypatch):
    for step in (2, 4, 8):
        make(tmp_path / f"checkpoint-{step}", step=step)
    make(tmp_path / "checkpoint-6", FULL[:2], step=6, published=False)  # a crash mid-save
    (tmp_path / "checkpoint-6" / IN_PROGRESS).write_text("")
    make(tmp_path / "checkpoint-10", FULL[:2], step=10, published=False)  # newer: not counted, kept
    (tmp_path / "checkpoint-10" / IN_PROGRESS).write_text("")
    removed = checkpoints.rotate(str(tmp_path), 1)
    assert sorted(p.rsplit("-", 1)[1] for p in removed) == ["2", "4", "6"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-8"]

    # a kill during the deletion leaves no half-deleted checkpoint-N: it was renamed away first
    make(tmp_path / "checkpoint-12", step=12)
    monkeypatch.setattr(shutil, "rmtree", lambda path, ignore_errors=False: None)
    checkpoints.rotate(str(tmp_path), 1)
    assert not (tmp_path / "checkpoint-8").exists()
    assert any(p.name.startswith(".checkpoint-8.deleting") for p in tmp_path.iterdir())
    monkeypatch.undo()
    checkpoints.rotate(str(tmp_path), 1)  # finishes that deletion; checkpoint-10 is now older, unfinished
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-12"]


def test_an_unfinished_folder_never_counts_as_the_kept_checkpoint(tmp_path):
    make(tmp_path / "checkpoint-2", step=2)
    make(tmp_path / "checkpoint-4", FULL[:1] + FULL[4:], step=4, published=False)  # no optimizer
    assert checkpoints.rotate(str(tmp_path), 1) == []
    assert (tmp_path / "checkpoint-2").is_dir()


def test_begin_save_replaces_a_stale_folder_and_marks_the_new_one_in_progress(tmp_path):
    stale = make(tmp_path / "checkpoint-4", FULL[:2], published=False)
    checkpoints.begin_save(str(stale))
    assert sorted(p.name for p in stale.iterdir()) == [IN_PROGRESS]
    assert not check_checkpoint(stale).whole
    for name in FULL:
        (stale / name).write_text(json.dumps({"global_step": 4}))
    checkpoints.publish(str(stale), global_step=4, world_size=1)
    assert check_checkpoint(stale).complete and not (stale / IN_PROGRESS).exists()


@pytest.mark.parametrize(
    "err",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1282112 vs 1282000"),
    ],
)
def test_disk_full_is_recognised_also_when_wrapped(err):
    assert checkpoints.is_disk_full(err)
    try:
        try:
            raise err
        except Exception as inner:
            raise ValueError("saving failed") from inner
    except ValueError as outer:
        assert checkpoints.is_disk_full(outer)
    assert not checkpoints.is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_free_space_warning_names_the_folder_and_the_numbers(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 9 * 2**30, 2**30))
    message = checkpoints.free_space_warning(str(tmp_path), 3 * 2**30, "the size of checkpoint-2")
    assert message and str(tmp_path) in message and "1.00 GiB free" in message and "3.00 GiB" in message
    assert checkpoints.free_space_warning(str(tmp_path), 2**20, "x") is None


def test_explicit_resume_names_what_is_missing_and_weights_only_allows_it(tmp_path, caplog):
    folder = make(tmp_path / "checkpoint-2", FULL[:1] + FULL[4:], published=False)
    with pytest.raises(ResumeError, match=r"checkpoint-2 cannot be resumed: no optimizer state"):
        choose_checkpoint(str(folder), str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="llava"):
        assert choose_checkpoint(str(folder), str(tmp_path), weights_only=True) == str(folder)
    assert "--resume_weights_only: resuming" in caplog.text and "fresh" in caplog.text
    with pytest.raises(ResumeError, match="--deepspeed"):
        choose_checkpoint(str(folder), str(tmp_path), weights_only=True, deepspeed=True)
    (folder / "trainer_state.json").write_text("{")
    with pytest.raises(ResumeError, match=r"trainer_state.json does not parse"):
        choose_checkpoint(str(folder), str(tmp_path), weights_only=True)


def test_automatic_resume_falls_back_and_says_what_it_skipped(tmp_path, caplog):
    make(tmp_path / "checkpoint-2", step=2)
    make(tmp_path / "checkpoint-4", step=4, published=False)
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text('{"glo')
    make(tmp_path / "checkpoint-6", FULL[:2], step=6, published=False)
    with caplog.at_level(logging.WARNING, logger="llava"):
        assert choose_checkpoint(None, str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert "skipping" in caplog.text and "checkpoint-6: " in caplog.text and "checkpoint-4: " in caplog.text
    assert "trainer_state.json does not parse" in caplog.text
    assert choose_checkpoint(None, str(tmp_path / "absent")) is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        choose_checkpoint("latest", str(tmp_path / "absent"))
