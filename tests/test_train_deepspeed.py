"""DeepSpeed on the CPU with two processes (torchrun, gloo): ZeRO-2 stage 1, ZeRO-3 stage 2.

Stage 2 loads stage 1's mm_projector.bin into ZeRO-3-partitioned parameters, trains with the
projector's learning rate at 0 (so its final weights must equal the adapter exactly while the LLM
changes), and saves a full model that reloads with from_pretrained.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from test_train import REPO, one_thread, stage1_args, stage2_args, train_kit  # noqa: F401 (fixture)

pytest.importorskip("deepspeed")

# The entry skips DeepSpeed's shared-memory collective op (a ~60 s C++ build on first use); gloo
# does the collectives instead.
ENTRY = textwrap.dedent(
    """
    import importlib, sys
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    from llava.train.train import train
    train(argv=sys.argv[1:])
    """
)


# The same entry with a callback that SIGKILLs every rank at the end of step KILL_AT_STEP.
KILLER_ENTRY = ENTRY.replace(
    "train(argv=sys.argv[1:])",
    textwrap.dedent(
        """
        import os, signal
        from transformers import TrainerCallback

        class KillAfter(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == int(os.environ["KILL_AT_STEP"]):
                    os.kill(os.getpid(), signal.SIGKILL)

        train(argv=sys.argv[1:], callbacks=[KillAfter()])
        """
    ),
)


def torchrun(tmp_path, args, entry_code: str = ENTRY, env_extra=None, expect_ok: bool = True) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    entry = tmp_path / "entry.py"
    entry.write_text(entry_code)
    # --standalone: torchrun picks a free port itself (no race with other tests for a port)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(entry), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **(env_extra or {})}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=REPO)
    log = proc.stdout + proc.stderr
    (tmp_path / "torchrun.log").write_text(log)
    noise = ("FutureWarning", "return func(", "it/s]", "s/it]")
    tail = "\n".join([line for line in proc.stderr.splitlines() if not any(n in line for n in noise)][-60:])
    assert (proc.returncode == 0) == expect_ok, (
        f"torchrun exited {proc.returncode}; log in {tmp_path / 'torchrun.log'}\n{tail}"
    )
    return log


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return train_kit(tmp_path_factory)


@pytest.fixture(scope="module")
def zero2_stage1(kit, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero2")
    out = tmp / "out"
    extra = f"--deepspeed {REPO / 'zero2.json'} --max_steps 3 --per_device_train_batch_size 2 --save_steps 2"
    log = torchrun(tmp, stage1_args(kit, out, extra))
    return out, log


@pytest.mark.slow
def test_zero2_stage1_two_processes(zero2_stage1):
    out, _ = zero2_stage1
    state = json.loads((out / "trainer_state.json").read_text())
    # two ranks x 2 samples per step: 3 steps cover 12 of the 16 samples
    assert state["global_step"] == 3 and state["log_history"][-1]["epoch"] == pytest.approx(0.75)
    ckpt = out / "checkpoint-2"
    names = {p.name for p in ckpt.iterdir()}
    assert {
        "mm_projector.bin",
        "config.json",
        "trainer_state.json",
        "rng_state_0.pth",
        "rng_state_1.pth",
    } <= names
    assert (ckpt / "global_step2").is_dir()  # DeepSpeed's optimizer/module state: resumable
    first = torch.load(ckpt / "mm_projector.bin", weights_only=True)
    final = torch.load(out / "mm_projector.bin", weights_only=True)
    assert sorted(final) == sorted(first) and all(k.startswith("model.mm_projector.") for k in final)
    assert not torch.equal(first["model.mm_projector.0.weight"], final["model.mm_projector.0.weight"])
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == 3 and all(0 < x < 20 for x in losses)


@pytest.mark.slow
def test_zero3_stage2_loads_adapter_into_partitions_and_saves_a_model_that_reloads(
    kit, zero2_stage1, tmp_path
):
    from safetensors.torch import load_file

    from llava.model import LlavaLlamaForCausalLM

    adapter = zero2_stage1[0] / "mm_projector.bin"
    out = tmp_path / "out"
    extra = f"--deepspeed {REPO / 'zero3.json'} --max_steps 2 --per_device_train_batch_size 2 --save_steps 2"
    extra += " --mm_projector_lr 0 --learning_rate 1e-2"
    log = torchrun(tmp_path, stage2_args(kit, out, adapter, extra))
    assert "into ZeRO-3 partitions" in log  # the projector was partitioned when the adapter was loaded
    ckpt = out / "checkpoint-2" / "global_step2"
    assert len([p for p in ckpt.iterdir() if "optim_states" in p.name]) == 2  # one shard per rank

    saved = load_file(out / "model.safetensors")
    stage1 = torch.load(adapter, weights_only=True)
    for key, value in stage1.items():
        assert torch.equal(saved[key], value), key  # loaded into the partitions, untouched at lr 0
    base = load_file(kit.llm / "model.safetensors")
    key = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(saved[key], base[key])  # while the LLM trained

    model = LlavaLlamaForCausalLM.from_pretrained(out)
    for key, value in stage1.items():
        assert torch.equal(model.state_dict()[key], value)
    tokenizer_files = {p.name for p in out.iterdir()}
    assert {"config.json", "tokenizer_config.json"} <= tokenizer_files
    images = torch.zeros(1, 3, 32, 32)
    ids = torch.tensor([[1, -200, 5, 6, 7]])
    loss = model(input_ids=ids, images=images, labels=torch.tensor([[-100, -100, 5, 6, 7]])).loss
    assert torch.isfinite(loss)


@pytest.mark.slow
def test_zero3_stage2_killed_then_resumed_equals_the_uninterrupted_run(kit, zero2_stage1, tmp_path):
    """Every rank SIGKILLed one step after checkpoint-2; the same command resumes from DeepSpeed's
    partitioned optimizer state and reproduces the uninterrupted run's losses and final weights."""
    from safetensors.torch import load_file

    adapter = zero2_stage1[0] / "mm_projector.bin"
    extra = f"--deepspeed {REPO / 'zero3.json'} --max_steps 4 --per_device_train_batch_size 2 --save_steps 2"
    extra += " --learning_rate 1e-2 --mm_projector_lr 1e-3"
    torchrun(tmp_path / "reference", stage2_args(kit, tmp_path / "reference" / "out", adapter, extra))
    out = tmp_path / "interrupted" / "out"
    args = stage2_args(kit, out, adapter, extra)
    torchrun(tmp_path / "interrupted", args, KILLER_ENTRY, {"KILL_AT_STEP": "3"}, expect_ok=False)
    assert (out / "checkpoint-2" / "global_step2").is_dir() and not (out / "trainer_state.json").exists()
    log = torchrun(tmp_path / "resumed", args)  # finds checkpoint-2 by itself
    assert "resuming from" in log and "checkpoint-2" in log

    def losses(folder):
        history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
        return {h["step"]: h["loss"] for h in history if "loss" in h}

    ref, res = losses(tmp_path / "reference" / "out"), losses(out)
    assert sorted(ref) == sorted(res) == [1, 2, 3, 4], res
    for step in ref:
        assert res[step] == pytest.approx(ref[step], abs=1e-5), (step, res[step], ref[step])
    final_ref, final_res = (
        load_file(tmp_path / "reference" / "out" / "model.safetensors"),
        load_file(out / "model.safetensors"),
    )
    assert sorted(final_ref) == sorted(final_res)
    for key, value in final_ref.items():
        torch.testing.assert_close(final_res[key], value, atol=1e-6, rtol=0, msg=key)


@pytest.mark.slow
def test_zero3_applies_the_tower_weights_a_checkpoint_stores(kit, tmp_path):
    """Fine-tuning a LLaVA checkpoint that stores its own (trained) tower, as 1.6 and OneVision models do:
    under ZeRO-3 the stored tower weights go into the partitions, not the tower folder's."""
    from types import SimpleNamespace

    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from llava.testing.tiny import build_tiny_llava

    ckpt = tmp_path / "llava-ckpt"
    model = build_tiny_llava(SimpleNamespace(llm=kit.llm, vision=kit.vision, tokenizer=None))
    with torch.no_grad():
        for p in model.get_vision_tower().vision_tower.parameters():
            p.add_(0.25)  # differs from the tower folder everywhere
    model.config.image_aspect_ratio = "pad"
    model.save_pretrained(ckpt)
    AutoTokenizer.from_pretrained(kit.llm).save_pretrained(ckpt)
    stored = {k: v for k, v in load_file(ckpt / "model.safetensors").items() if ".vision_tower." in k}
    assert stored

    out = tmp_path / "out"
    args = stage2_args(kit, out, extra=f"--deepspeed {REPO / 'zero3.json'} --max_steps 1 --save_strategy no")
    args[args.index("--model_name_or_path") + 1] = str(ckpt)
    log = torchrun(tmp_path, args)
    assert "not applied" not in log
    saved = load_file(out / "model.safetensors")
    for key, value in stored.items():  # the tower is frozen in stage 2: exactly the stored weights
        assert torch.equal(saved[key], value), key


@pytest.mark.slow
def test_zero3_chunked_loss_equals_the_whole_logits_loss(kit, zero2_stage1, tmp_path):
    """--loss_chunk_tokens under ZeRO-3 (the head's weight partitioned, gathered by the module call,
    again in the backward's recomputation) with gradient checkpointing: the same per-step losses and
    gradient norms as transformers' loss on the whole logits."""
    adapter = zero2_stage1[0] / "mm_projector.bin"
    extra = f"--deepspeed {REPO / 'zero3.json'} --max_steps 3 --per_device_train_batch_size 2 --save_strategy no"
    extra += " --gradient_checkpointing True"
    history = {}
    for name, more in (("whole", ""), ("chunked", " --loss_chunk_tokens 5")):
        out = tmp_path / name / "out"
        torchrun(tmp_path / name, stage2_args(kit, out, adapter, extra + more))
        logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
        history[name] = [(h["loss"], h["grad_norm"]) for h in logs if "loss" in h]
    assert len(history["whole"]) == 3
    for (loss, norm), (ref_loss, ref_norm) in zip(history["chunked"], history["whole"], strict=True):
        assert loss == pytest.approx(ref_loss, abs=1e-5) and norm == pytest.approx(ref_norm, rel=1e-4)
