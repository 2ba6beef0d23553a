"""train(): stage 1 then stage 2 end to end, QLoRA, flags, launch scripts, the flash-attention fallback.

The tiny kit here uses a 512-piece tokenizer fitted to the synthetic data so that training steps
take milliseconds; tests/test_train_resume.py and tests/test_train_deepspeed.py reuse it.
"""

import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]


def train_kit(tmp_path_factory) -> SimpleNamespace:
    """Data (16 image samples, 4 text-only), tokenizer, tiny LLaMA and CLIP; built once per session."""
    root = tmp_path_factory.getbasetemp() / "train-kit"
    paths = SimpleNamespace(
        root=root,
        pretrain=root / "data" / "pretrain.json",
        finetune=root / "data" / "finetune.json",
        images=root / "data" / "images",
        llm=root / "llm",
        vision=root / "clip",
    )
    if not (root / "done").exists():
        from llava.conversation import get_conv_template
        from llava.data.tools.synthetic import corpus, generate
        from llava.testing.tiny import build_small_tokenizer, make_tiny_clip, make_tiny_llm

        data = generate(root / "data", n_train=16, n_eval=0, text_only_fraction=0.25, seed=0, progress=False)
        tok = build_small_tokenizer(root / "tok", texts=corpus(data) + [get_conv_template("v1").system])
        make_tiny_llm(paths.llm, tokenizer_dir=tok)
        make_tiny_clip(paths.vision)
        (root / "done").touch()
    return paths


def stage1_args(kit, out, extra: str = "") -> list[str]:
    return (
        f"--model_name_or_path {kit.llm} --version plain --data_path {kit.pretrain} --image_folder {kit.images} "
        f"--vision_tower {kit.vision} --mm_projector_type mlp2x_gelu --tune_mm_mlp_adapter True "
        "--mm_vision_select_layer -2 --mm_use_im_start_end False --mm_use_im_patch_token False "
        f"--output_dir {out} --per_device_train_batch_size 4 --learning_rate 1e-2 --weight_decay 0. "
        f"--logging_steps 1 --report_to none --model_max_length 128 --dataloader_num_workers 0 {extra}"
    ).split()


def stage2_args(kit, out, adapter=None, extra: str = "") -> list[str]:
    adapter_flag = f"--pretrain_mm_mlp_adapter {adapter}" if adapter else ""
    return (
        f"--model_name_or_path {kit.llm} --version v1 --data_path {kit.finetune} --image_folder {kit.images} "
        f"--vision_tower {kit.vision} {adapter_flag} --mm_projector_type mlp2x_gelu "
        "--mm_vision_select_layer -2 --mm_use_im_start_end False --mm_use_im_patch_token False "
        "--image_aspect_ratio pad --group_by_modality_length True "
        f"--output_dir {out} --per_device_train_batch_size 4 --learning_rate 2e-3 --weight_decay 0. "
        f"--logging_steps 1 --report_to none --model_max_length 256 --dataloader_num_workers 0 {extra}"
    ).split()


def run(args, callbacks=None):
    from llava.train.train import train

    return train(argv=args, callbacks=callbacks)


class Probe(TrainerCallback):
    """Loss on a fixed batch at the start and at the end, and the projector at the start."""

    def __init__(self):
        self.losses, self.projector = [], None

    def _loss(self, model, dataloader):
        ds = dataloader.dataset
        batch = dataloader.collate_fn([ds[i] for i in range(len(ds))])
        was_training = model.training
        model.eval()
        with torch.no_grad():
            self.losses.append(model(**batch).loss.item())
        model.train(was_training)

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kw):
        self.projector = {
            k: v.detach().clone() for k, v in model.get_model().mm_projector.state_dict().items()
        }
        self._loss(model, train_dataloader)

    def on_train_end(self, args, state, control, model=None, train_dataloader=None, **kw):
        self._loss(model, train_dataloader)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is ~5x faster than two that spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return train_kit(tmp_path_factory)


def test_stage1_then_stage2_end_to_end(kit, tmp_path, caplog):
    from llava.model import LlavaLlamaForCausalLM
    from llava.train.sampler import LengthGroupedSampler

    out1 = tmp_path / "stage1"
    probe1 = Probe()
    with caplog.at_level("INFO", logger="llava"):
        run(stage1_args(kit, out1, "--num_train_epochs 2 --save_steps 3 --tf32 True"), [probe1])
    assert probe1.losses[1] < probe1.losses[0] - 0.05, probe1.losses
    table = caplog.text[caplog.text.index("parameters:") :]
    assert re.search(r"mm_projector\s*\|[^\n]*\|\s*TRAIN", table) and re.search(
        r"llm layers[^\n]*frozen", table
    )

    # mm_projector.bin in every checkpoint and at the end, plus a resumable training state
    checkpoints = sorted(out1.glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == ["checkpoint-3", "checkpoint-6", "checkpoint-8"]
    for folder in [*checkpoints, out1]:
        state = torch.load(folder / "mm_projector.bin", weights_only=True)
        assert sorted(state) == [f"model.mm_projector.{i}.{w}" for i in (0, 2) for w in ("bias", "weight")]
        assert (folder / "config.json").is_file()
    for c in checkpoints:
        assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= {
            p.name for p in c.iterdir()
        }
    assert not (out1 / "model.safetensors").exists()  # the projector stage writes no full model
    final = torch.load(out1 / "mm_projector.bin", weights_only=True)

    out2 = tmp_path / "stage2"
    probe2 = Probe()
    trainer = run(
        stage2_args(kit, out2, out1 / "mm_projector.bin", "--max_steps 4 --gradient_checkpointing True"),
        [probe2],
    )
    for key, value in final.items():  # stage 2 starts from stage 1's projector
        assert torch.equal(probe2.projector[key.removeprefix("model.mm_projector.")], value)
    assert probe2.losses[1] < probe2.losses[0] - 0.05, probe2.losses
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler) and sampler.group_by_modality
    assert trainer.model.is_gradient_checkpointing

    model = LlavaLlamaForCausalLM.from_pretrained(out2)  # the saved model reloads and scores the batch
    reloaded = Probe()
    reloaded._loss(model, trainer.get_train_dataloader())
    assert reloaded.losses[0] == pytest.approx(probe2.losses[1], abs=1e-4)


def test_qlora_4bit_trains_lora_and_projector_only(kit, tmp_path):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "qlora"
    adapter = tmp_path / "adapter.bin"
    run(stage1_args(kit, tmp_path / "s1", "--max_steps 1"))
    (tmp_path / "s1" / "mm_projector.bin").rename(adapter)
    # (no Probe here: an eval-mode forward makes bitsandbytes repack 4-bit weights for CPU inference,
    # and that kernel has no backward)
    trainer = run(
        stage2_args(
            kit,
            out,
            adapter,
            "--max_steps 3 --bits 4 --lora_enable True --lora_r 8 --lora_alpha 16 --mm_projector_lr 1e-3 "
            "--bf16 True --gradient_checkpointing True --save_steps 2",
        )
    )
    model = trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "mm_projector" in n for n in trainable)
    assert any("Linear4bit" in type(m).__name__ for m in model.modules())
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # initialised to zero: they learned
    for folder in (out, out / "checkpoint-2"):
        names = {p.name for p in folder.iterdir()}
        assert {"adapter_config.json", "non_lora_trainables.bin", "config.json"} <= names
        state = torch.load(folder / "non_lora_trainables.bin", weights_only=True)
        assert state and all("mm_projector" in k for k in state)


def test_projector_and_vision_tower_learning_rates(kit, tmp_path):
    extra = "--max_steps 1 --mm_projector_lr 1e-4 --mm_vision_tower_lr 1e-5 --unfreeze_mm_vision_tower True"
    trainer = run(stage2_args(kit, tmp_path / "out", None, extra + " --weight_decay 0.1 --save_strategy no"))
    named = dict(trainer.model.named_parameters())
    by_id = {id(p): n for n, p in named.items()}
    seen = {}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            seen[by_id[id(p)]] = (group["initial_lr"], group["weight_decay"])
    assert seen["model.mm_projector.0.weight"] == (1e-4, 0.1)
    assert seen["model.mm_projector.0.bias"] == (1e-4, 0.0)
    tower = [n for n in seen if "vision_tower" in n]
    assert tower and all(seen[n][0] == 1e-5 for n in tower)
    assert seen["model.layers.0.mlp.up_proj.weight"] == (2e-3, 0.1)
    assert seen["model.norm.weight"] == (2e-3, 0.0)
    assert set(seen) == {n for n, p in named.items() if p.requires_grad}


# ---------------------------------------------------------------------------- flags and scripts
ORIGINAL_DEFAULTS = {
    # haotian-liu/LLaVA llava/train/train.py (v1.5/v1.6), hand-copied
    "model": dict(
        model_name_or_path="facebook/opt-125m", version="v0", freeze_backbone=False, tune_mm_mlp_adapter=False,
        vision_tower=None, mm_vision_select_layer=-1, pretrain_mm_mlp_adapter=None, mm_projector_type="linear",
        mm_use_im_start_end=False, mm_use_im_patch_token=True, mm_patch_merge_type="flat",
        mm_vision_select_feature="patch", unfreeze_mm_vision_tower=False,
    ),
    "data": dict(
        data_path=None, lazy_preprocess=False, is_multimodal=False, image_folder=None,
        image_aspect_ratio="square", image_grid_pinpoints=None,
    ),
    "training": dict(
        cache_dir=None, optim="adamw_torch", remove_unused_columns=False, freeze_mm_mlp_adapter=False,
        mpt_attn_impl="triton", model_max_length=512, double_quant=True, quant_type="nf4", bits=16,
        lora_enable=False, lora_r=64, lora_alpha=16, lora_dropout=0.05, lora_weight_path="", lora_bias="none",
        mm_projector_lr=None, mm_vision_tower_lr=None, group_by_modality_length=False,
    ),
}  # fmt: skip


def test_argument_defaults_match_the_original(tmp_path):
    from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments

    objs = {
        "model": ModelArguments(),
        "data": DataArguments(),
        "training": TrainingArguments(output_dir=str(tmp_path)),
    }
    for kind, defaults in ORIGINAL_DEFAULTS.items():
        for name, value in defaults.items():
            got = getattr(objs[kind], name)
            got = getattr(got, "value", got)  # enums (optim)
            assert got == value, f"{kind}.{name}: {got!r} != {value!r}"


SCRIPTS = ("pretrain", "finetune", "finetune_lora", "finetune_task", "finetune_task_lora")
PUBLISHED = {  # (global batch on 8 GPUs, lr, deepspeed config)
    "pretrain": (256, 1e-3, "zero2"),
    "finetune": (128, 2e-5, "zero3"),
    "finetune_lora": (128, 2e-4, "zero3"),
    "finetune_task": (128, 2e-5, "zero3"),
    "finetune_task_lora": (128, 2e-4, "zero3"),
}


def _script_flags(name: str) -> list[str]:
    text = (REPO / "scripts" / "v1_5" / f"{name}.sh").read_text()
    command = text[text.index("llava/train/train_mem.py") :].split('"$@"')[0].replace("\\\n", " ")
    return shlex.split(command)[1:]


@pytest.mark.parametrize("name", SCRIPTS)
def test_launch_scripts_parse_with_published_hyperparameters(name, tmp_path):
    from transformers import HfArgumentParser

    from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments

    flags = _script_flags(name)
    flags[flags.index("--output_dir") + 1] = str(tmp_path / name)
    flags[flags.index("--deepspeed") + 1] = "none"  # parsed below without starting DeepSpeed
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    ds_config = _script_flags(name)[_script_flags(name).index("--deepspeed") + 1]
    flags = flags[: flags.index("--deepspeed")] + flags[flags.index("--deepspeed") + 2 :]
    model_args, data_args, args = parser.parse_args_into_dataclasses(args=flags)
    batch, lr, zero = PUBLISHED[name]
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * 8 == batch
    assert args.learning_rate == lr and args.num_train_epochs == 1 and args.model_max_length == 2048
    assert ds_config == f"./scripts/{zero}.json" and (REPO / ds_config).resolve().is_file()
    assert args.bf16 and args.gradient_checkpointing and args.warmup_steps == 0.03
    assert model_args.mm_projector_type == "mlp2x_gelu" and model_args.mm_vision_select_layer == -2
    if name != "pretrain":
        assert data_args.image_aspect_ratio == "pad" and args.group_by_modality_length
    if name.endswith("lora"):
        assert (args.lora_enable, args.lora_r, args.lora_alpha, args.mm_projector_lr) == (
            True,
            128,
            256,
            2e-5,
        )
    text = (REPO / "scripts" / "v1_5" / f"{name}.sh").read_text()
    assert "num_gpus x per_device_train_batch_size x gradient_accumulation_steps" in text


def test_multinode_launch_documented():
    text = (REPO / "scripts" / "v1_5" / "pretrain.sh").read_text()
    assert "--hostfile" in text and "torchrun --nnodes" in text


def test_train_mem_falls_back_to_sdpa_and_says_so(capsys, monkeypatch):
    import builtins

    from llava.train.train_mem import pick_attn_implementation

    real_import = builtins.__import__

    def no_flash(name, *a, **k):
        if name == "flash_attn":
            raise ImportError("No module named 'flash_attn'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_flash)
    assert pick_attn_implementation() == "sdpa"
    assert "falling back to PyTorch SDPA" in capsys.readouterr().out

    # A CUDA GPU without flash-attn: PyTorch's own varlen kernel, when this torch ships it.
    from llava.model import varlen_attention

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(varlen_attention, "varlen_kernel", lambda: object())
    assert pick_attn_implementation() == "torch_varlen"
    assert "falling back to PyTorch's flash varlen kernel" in capsys.readouterr().out
    monkeypatch.setattr(varlen_attention, "varlen_kernel", lambda: None)
    assert pick_attn_implementation() == "sdpa"


def test_cpu_workaround_is_a_no_op_with_an_accelerator(monkeypatch):
    from llava.train import cpu_distributed

    args = SimpleNamespace(use_cpu=False, tf32=True, deepspeed="zero3.json", accelerator_config=None)
    monkeypatch.setattr(cpu_distributed, "has_accelerator", lambda: True)
    cpu_distributed.configure_cpu_distributed(args)
    assert args == SimpleNamespace(use_cpu=False, tf32=True, deepspeed="zero3.json", accelerator_config=None)
    monkeypatch.setattr(cpu_distributed, "has_accelerator", lambda: False)
    plain = SimpleNamespace(use_cpu=False, tf32=True, deepspeed=None, accelerator_config=None)
    cpu_distributed.configure_cpu_distributed(plain)
    assert plain.use_cpu and plain.tf32 is None and plain.accelerator_config is None


def test_resume_picks_the_newest_complete_checkpoint(tmp_path):
    from llava.train.train import latest_complete_checkpoint

    for step, complete in ((2, True), (10, True), (12, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:  # what a resume needs (llava.train.checkpoints.check_checkpoint)
            for name in ("mm_projector.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
                (folder / name).write_bytes(b"x")
            (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    (tmp_path / "checkpoint-x").mkdir()
    assert latest_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert latest_complete_checkpoint(str(tmp_path / "absent")) is None


@pytest.mark.slow
@pytest.mark.parametrize("merge", ["flat", "spatial_unpad"])
def test_anyres_training_loss_goes_down(kit, tmp_path, merge):
    """anyres images (tiles of the tiny 32 px tower + the overview) through train()."""
    args = stage2_args(
        kit,
        tmp_path,
        extra="--max_steps 4 --image_grid_pinpoints [(32,64),(64,32),(64,64)] --model_max_length 512 "
        f"--mm_patch_merge_type {merge}",
    )
    args[args.index("--image_aspect_ratio") + 1] = "anyres"
    probe = Probe()
    trainer = run(args, [probe])
    assert probe.losses[1] < probe.losses[0] - 0.05, probe.losses
    batch = next(iter(trainer.get_train_dataloader()))
    tiles = [x for x in batch["images"] if x.count_nonzero() > 0]
    assert tiles and all(x.ndim == 4 and x.shape[0] >= 3 for x in tiles)  # overview + >= 2 tiles
    assert trainer.model.config.mm_patch_merge_type == merge


def test_resume_with_other_flags_names_the_checkpoint(kit, tmp_path):
    from llava.train.train import ResumeError

    run(stage2_args(kit, tmp_path, extra="--max_steps 2 --save_steps 2"))
    with pytest.raises(ResumeError, match=r"could not resume from .*checkpoint-2 .*new --output_dir"):
        run(stage2_args(kit, tmp_path, extra="--max_steps 4 --save_steps 2 --lora_enable True --lora_r 4"))
