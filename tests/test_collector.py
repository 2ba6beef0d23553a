"""llava.utils.collector: the garbage collector paused for the entry points' imports and kept off the
libraries' objects during a run, with nothing left changed after it (tests call train() many times)."""

import gc

import pytest
from transformers import TrainerCallback

from llava.utils.collector import collection_paused, frozen


@pytest.fixture(autouse=True)
def _restore_collector():
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()


def test_collection_paused_restores_the_state_it_found():
    gc.enable()
    with collection_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    with collection_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the caller's own choice is kept


def test_collection_paused_restores_it_after_an_error():
    gc.enable()
    with pytest.raises(ImportError), collection_paused():
        raise ImportError("no such module")
    assert gc.isenabled()


def test_frozen_moves_the_live_objects_out_of_the_passes_and_back():
    assert gc.get_freeze_count() == 0
    with frozen():
        assert gc.get_freeze_count() > 1000
    assert gc.get_freeze_count() == 0


def test_frozen_keeps_a_freeze_the_program_made_itself():
    gc.freeze()
    before = gc.get_freeze_count()
    with frozen():
        pass
    assert gc.get_freeze_count() == before  # not undone by our exit


def test_cycles_made_inside_frozen_are_still_collected():
    class Node:
        pass

    with frozen():
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        assert gc.collect() >= 2  # the new objects are not frozen: the pass finds the cycle


class _SeesFrozen(TrainerCallback):
    counts: list

    def __init__(self):
        self.counts = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.counts.append(gc.get_freeze_count())


def test_train_runs_with_the_heap_frozen_and_unfreezes_after(tmp_path_factory, tmp_path):
    from test_train import run, stage2_args, train_kit

    kit = train_kit(tmp_path_factory)
    seen = _SeesFrozen()
    run(stage2_args(kit, tmp_path / "out", extra="--max_steps 2 --save_strategy no"), callbacks=[seen])
    assert len(seen.counts) == 2 and min(seen.counts) > 1000
    assert gc.get_freeze_count() == 0
