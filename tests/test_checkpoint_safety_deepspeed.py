"""Two-process DeepSpeed (ZeRO-2, CPU, gloo): a checkpoint is complete only once every rank wrote
its files. Rank 1 dies while checkpoint-4 is written (after rank 0 wrote trainer_state.json, its own
optimizer shard cut short) and kills rank 0 with it; the rerun skips that folder, naming it, resumes
from checkpoint-2 and reproduces the uninterrupted run's losses and final projector."""

import json

import pytest
import torch
from test_train import REPO, one_thread, stage1_args, train_kit  # noqa: F401 (fixture)
from test_train_deepspeed import ENTRY, torchrun

pytest.importorskip("deepspeed")

CRASH_ENTRY = ENTRY.replace(
    "from llava.train.train import train\n",
    '''from llava.train.train import train
import glob, os, signal, time
from llava.train.llava_trainer import LLaVATrainer

save_rng_state = LLaVATrainer._save_rng_state
pids = os.environ["PID_DIR"]
with open(os.path.join(pids, os.environ["RANK"]), "w") as f:
    f.write(str(os.getpid()))

def rank_1_dies_mid_save(self, output_dir):
    if self.args.process_index == 1 and output_dir.endswith("checkpoint-4"):
        for _ in range(600):  # until rank 0 wrote trainer_state.json
            if os.path.exists(os.path.join(output_dir, "trainer_state.json")):
                break
            time.sleep(0.05)
        for shard in glob.glob(os.path.join(output_dir, "global_step4", "*rank_1_*optim_states.pt")):
            os.truncate(shard, os.path.getsize(shard) // 2)  # still being written
        with open(os.path.join(pids, "0")) as f:
            os.kill(int(f.read()), signal.SIGKILL)  # the node is gone: every rank killed at once
        os.kill(os.getpid(), signal.SIGKILL)
    save_rng_state(self, output_dir)

LLaVATrainer._save_rng_state = rank_1_dies_mid_save
''',
)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return train_kit(tmp_path_factory)


@pytest.mark.slow
def test_zero2_rank_dying_mid_save_leaves_no_checkpoint_resume_takes(kit, tmp_path):
    extra = f"--deepspeed {REPO / 'zero2.json'} --max_steps 6 --per_device_train_batch_size 2 --save_steps 2"
    reference = tmp_path / "reference" / "out"
    torchrun(tmp_path / "reference", stage1_args(kit, reference, extra))
    marker = json.loads((reference / "checkpoint-6" / "checkpoint_complete.json").read_text())
    shards = [f for f in marker["files"] if f.startswith("global_step6/") and "optim_states" in f]
    assert len(shards) == 2 and {"rng_state_0.pth", "rng_state_1.pth"} <= set(marker["files"])

    out = tmp_path / "interrupted" / "out"
    args = stage1_args(kit, out, extra)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    torchrun(tmp_path / "interrupted", args, CRASH_ENTRY, {"PID_DIR": str(pid_dir)}, expect_ok=False)
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()  # looked complete before markers
    log = torchrun(tmp_path / "resumed", args)
    assert f"skipping {out / 'checkpoint-4'}: its save did not finish" in log
    assert f"resuming from {out / 'checkpoint-2'}" in log

    def losses(folder):
        history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
        return {h["step"]: h["loss"] for h in history if "loss" in h}

    ref, res = losses(reference), losses(out)
    assert sorted(ref) == sorted(res) == [1, 2, 3, 4, 5, 6], res
    for step in ref:
        assert res[step] == pytest.approx(ref[step], abs=1e-5), (step, res[step], ref[step])
    final_ref = torch.load(reference / "mm_projector.bin", weights_only=True)
    final_res = torch.load(out / "mm_projector.bin", weights_only=True)
    for key, value in final_ref.items():
        torch.testing.assert_close(final_res[key], value, atol=1e-6, rtol=0, msg=key)
