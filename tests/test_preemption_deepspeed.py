"""Two-process DeepSpeed ZeRO-3 (torchrun, gloo, CPU): SIGTERM to one rank stops both at the same step
with a checkpoint of every rank's partition; the same command resumes to the uninterrupted run."""

import json
import textwrap

import pytest
import torch
from test_train import REPO, one_thread, stage2_args, train_kit  # noqa: F401 (fixture)
from test_train_deepspeed import ENTRY, torchrun

# The DeepSpeed entry with a callback that sends SIGTERM to rank SIGNAL_RANK alone at step SIGNAL_AT_STEP
SIGNAL_ENTRY = ENTRY.replace(
    "train(argv=sys.argv[1:])",
    textwrap.dedent(
        """
        import os, signal
        from transformers import TrainerCallback
        from llava.train.preemption import exit_on_interrupt

        class SignalAt(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                at, rank = int(os.environ["SIGNAL_AT_STEP"]), os.environ["SIGNAL_RANK"]
                if state.global_step == at and os.environ["RANK"] == rank:
                    os.kill(os.getpid(), signal.SIGTERM)

        exit_on_interrupt(train, argv=sys.argv[1:], callbacks=[SignalAt()])
        """
    ),
)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return train_kit(tmp_path_factory)


def _losses(folder) -> dict[int, float]:
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


@pytest.mark.slow
def test_zero3_sigterm_to_one_rank_stops_both_with_a_checkpoint_and_resumes_to_the_uninterrupted_run(
    kit, tmp_path
):
    from safetensors.torch import load_file

    extra = f"--deepspeed {REPO / 'zero3.json'} --max_steps 4 --per_device_train_batch_size 2 --save_steps 10"
    extra += " --learning_rate 1e-2 --mm_projector_lr 1e-3"
    reference = tmp_path / "reference" / "out"
    torchrun(tmp_path / "reference", stage2_args(kit, reference, None, extra))
    out = tmp_path / "interrupted" / "out"
    args = stage2_args(kit, out, None, extra)
    env = {"SIGNAL_AT_STEP": "2", "SIGNAL_RANK": "1"}
    log = torchrun(tmp_path / "interrupted", args, SIGNAL_ENTRY, env, expect_ok=False)
    assert "rank 1: SIGTERM received" in log and "rank 0: SIGTERM received" not in log
    assert f"saved {out / 'checkpoint-2'} (step 2 of 4)" in log  # the main process says it
    assert "exitcode: 143" in log or "exit code 143" in log
    ckpt = out / "checkpoint-2"
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 2
    assert len([p for p in (ckpt / "global_step2").iterdir() if "optim_states" in p.name]) == 2  # both ranks
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in ckpt.iterdir()}
    assert not (out / "model.safetensors").exists() and not (out / "checkpoint-3").exists()

    log = torchrun(tmp_path / "resumed", args)  # finds checkpoint-2 by itself
    assert "resuming from" in log and "checkpoint-2" in log
    ref, res = _losses(reference), _losses(out)
    assert sorted(ref) == sorted(res) == [1, 2, 3, 4], res
    for step in ref:
        assert res[step] == pytest.approx(ref[step], abs=1e-5), (step, res[step], ref[step])
    final_ref, final_res = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    assert sorted(final_ref) == sorted(final_res)
    for key, value in final_ref.items():
        torch.testing.assert_close(final_res[key], value, atol=1e-6, rtol=0, msg=key)


# The DeepSpeed entry where rank 1 alone cannot load any sample after step 2 (rank 0 can)
FAULT_ENTRY = ENTRY.replace(
    "train(argv=sys.argv[1:])",
    textwrap.dedent(
        """
        import os
        from transformers import TrainerCallback
        from llava.data import dataset

        def unreadable(self, i):
            raise self._error(i, "image file unreadable.png cannot be read (test)")

        class SpoilRankOne(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 2 and os.environ["RANK"] == "1":
                    dataset.LazySupervisedDataset._load = unreadable

        train(argv=sys.argv[1:], callbacks=[SpoilRankOne()])
        """
    ),
)


@pytest.mark.slow
def test_zero3_a_bad_sample_on_one_rank_stops_both_with_a_checkpoint_naming_it(kit, tmp_path):
    extra = f"--deepspeed {REPO / 'zero3.json'} --max_steps 4 --per_device_train_batch_size 2 --save_steps 10"
    out = tmp_path / "out"
    log = torchrun(tmp_path, stage2_args(kit, out, None, extra), FAULT_ENTRY, expect_ok=False)
    # both ranks raise StoppedOnBadSample naming rank 1's sample and the checkpoint: nobody hangs
    assert log.count("StoppedOnBadSample: sample ") >= 2, log[-3000:]
    assert log.count("unreadable.png cannot be read (test)") >= 2
    assert f"Training stopped there and saved {out / 'checkpoint-2'} (step 2 of 4)" in log
    ckpt = out / "checkpoint-2"
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 2
    assert len([p for p in (ckpt / "global_step2").iterdir() if "optim_states" in p.name]) == 2
