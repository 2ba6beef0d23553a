"""Resume after SIGKILL: the loss curve from the checkpoint on equals the uninterrupted run's.

A run is started in a subprocess that kills itself (SIGKILL) one step after a checkpoint, so the
step after the checkpoint is lost and a `checkpoint-N` folder of the next save may be missing. The
same command then resumes (it finds the checkpoint itself) and must reproduce, step for step, the
losses and the final weights of a run that was never interrupted: optimizer, scheduler, RNG and
sampler position all restored. CPU, fp32, same seed.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from test_train import one_thread, run, stage1_args, stage2_args, train_kit  # noqa: F401 (fixture)

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from transformers import TrainerCallback
    from llava.train.train import train

    class KillAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == int(os.environ["KILL_AT_STEP"]):
                os.kill(os.getpid(), signal.SIGKILL)

    train(argv=sys.argv[1:], callbacks=[KillAfter()])
    """
)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return train_kit(tmp_path_factory)


def _losses(log_history) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in log_history if "loss" in h}


def _kill_then_resume(tmp_path, make_args, kill_at: int, checkpoint: int):
    reference = run(make_args(tmp_path / "reference"))
    out = tmp_path / "interrupted"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run(
        [sys.executable, str(script), *make_args(out)],
        env={**os.environ, "KILL_AT_STEP": str(kill_at), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert (out / f"checkpoint-{checkpoint}" / "trainer_state.json").is_file()
    assert not (out / "trainer_state.json").exists()  # it did not finish
    state = json.loads((out / f"checkpoint-{checkpoint}" / "trainer_state.json").read_text())
    assert state["global_step"] == checkpoint
    resumed = run(make_args(out))  # finds checkpoint-N by itself
    assert resumed.state.global_step == reference.state.global_step
    ref, res = _losses(reference.state.log_history), _losses(resumed.state.log_history)
    # the resumed history holds the killed run's steps up to the checkpoint, then its own
    assert sorted(res) == sorted(ref) == list(range(1, max(ref) + 1)), res
    for step, loss in res.items():
        assert loss == pytest.approx(ref[step], abs=1e-5), (step, loss, ref[step])
    return reference, resumed


def _same_weights(a, b, substr=""):
    pa = {n: p for n, p in a.model.named_parameters() if substr in n and p.requires_grad}
    pb = dict(b.model.named_parameters())
    assert pa
    for n, p in pa.items():
        assert torch.allclose(p, pb[n], atol=1e-6), n


@pytest.mark.slow
def test_resume_stage1_projector_only(kit, tmp_path):
    # 16 samples / batch 4 = 4 steps per epoch; checkpoint at step 6 (mid epoch 2), killed at 7
    ref, res = _kill_then_resume(
        tmp_path, lambda out: stage1_args(kit, out, "--num_train_epochs 2 --save_steps 3"), 7, 6
    )
    _same_weights(ref, res, "mm_projector")
    final_ref = torch.load(tmp_path / "reference" / "mm_projector.bin", weights_only=True)
    final_res = torch.load(tmp_path / "interrupted" / "mm_projector.bin", weights_only=True)
    for key, value in final_ref.items():
        assert torch.allclose(value, final_res[key], atol=1e-6), key


@pytest.fixture(scope="module")
def adapter(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter")
    run(stage1_args(kit, out, "--max_steps 2 --save_strategy no"))
    return out / "mm_projector.bin"


@pytest.mark.slow
def test_resume_stage2_with_modality_grouped_sampler(kit, adapter, tmp_path):
    # 20 samples / batch 4 = 5 steps per epoch; 2 epochs; checkpoint at 4, killed at 6 (next epoch)
    extra = "--num_train_epochs 2 --save_steps 4 --mm_projector_lr 1e-3"
    _kill_then_resume(tmp_path, lambda out: stage2_args(kit, out, adapter, extra), 6, 4)


@pytest.mark.slow
def test_resume_lora(kit, adapter, tmp_path):
    extra = (
        "--max_steps 6 --save_steps 3 --lora_enable True --lora_r 8 --lora_alpha 16 --mm_projector_lr 1e-3"
    )
    ref, res = _kill_then_resume(tmp_path, lambda out: stage2_args(kit, out, adapter, extra), 4, 3)
    ckpt = tmp_path / "interrupted" / "checkpoint-3"
    assert (ckpt / "non_lora_trainables.bin").is_file() and (ckpt / "adapter_config.json").is_file()
    _same_weights(ref, res, "lora_")
    _same_weights(ref, res, "mm_projector")
