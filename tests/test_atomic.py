"""llava.utils.atomic: a failed write leaves the old file and no temporary behind."""

import pytest

from llava.utils.atomic import atomic_path, atomic_write_text


def test_success_replaces_and_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "sub" / "answers.jsonl"
    assert atomic_write_text(target, "old\n") == target and target.read_text() == "old\n"
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert [p.name for p in target.parent.iterdir()] == ["answers.jsonl"]  # no temporary left
    with atomic_path(target, suffix=".jpg") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".jpg") and not tmp.exists()
        tmp.write_text("new\n")
    assert target.read_text() == "new\n" and len(list(target.parent.iterdir())) == 1
