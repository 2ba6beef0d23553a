"""The per-stage freeze policy (llava.train.freeze), LoRA targets, the quantisation skip list, the
optimiser's lr groups and mm_projector.bin, all by the model's parts (llava.model.parts).

The expected trainable sets are the original LLaVA's (and this project's before the policy moved
into one function); LoRA from a LLaVA checkpoint no longer puts adapters into the CLIP tower.
"""

import pytest
import torch
import transformers

from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments
from llava.train.freeze import FreezePolicy, apply_freeze_policy
from llava.train.model_setup import build_model_and_tokenizer, find_all_linear_names

PROJECTOR = {f"model.mm_projector.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}


@pytest.fixture(scope="module")
def checkpoints(tiny_kit, tmp_path_factory):
    from llava.testing.tiny import save_tiny_llava

    root = tmp_path_factory.mktemp("freeze")
    return {
        "flat": save_tiny_llava(tiny_kit, root / "llava"),
        "unpad": save_tiny_llava(tiny_kit, root / "llava-unpad", mm_patch_merge_type="spatial_unpad"),
    }


def parse(flags: str, tmp_path):
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    argv = flags.split() + ["--output_dir", str(tmp_path / "out"), "--report_to", "none"]
    return parser.parse_args_into_dataclasses(args=argv)


def build(flags: str, tmp_path):
    model_args, data_args, training_args = parse(flags, tmp_path)
    torch.manual_seed(0)
    model, _, _ = build_model_and_tokenizer(model_args, data_args, training_args)
    return model


def trainable(model) -> set[str]:
    return {n.removeprefix("base_model.model.") for n, p in model.named_parameters() if p.requires_grad}


def names(model) -> set[str]:
    return {n.removeprefix("base_model.model.") for n, _ in model.named_parameters()}


def vision(kit) -> str:
    return (
        f"--vision_tower {kit.vision} --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2 "
        "--mm_use_im_patch_token False"
    )


def tower(all_names):
    return {n for n in all_names if n.startswith("model.vision_tower.")}


def lora(all_names):
    return {n for n in all_names if "lora_" in n}


CASES = {
    # flags -> expected trainable set, from the set of all names
    "stage 1": ("--tune_mm_mlp_adapter True", lambda a: PROJECTOR),
    "stage 1, im_start/end": (
        "--tune_mm_mlp_adapter True --mm_use_im_start_end True",
        lambda a: PROJECTOR | {"model.embed_tokens.weight"},
    ),
    "stage 1, tower unfrozen": (
        "--tune_mm_mlp_adapter True --unfreeze_mm_vision_tower True",
        lambda a: PROJECTOR | tower(a),
    ),
    "stage 1, unpad newline": (
        "--tune_mm_mlp_adapter True --mm_patch_merge_type spatial_unpad",
        lambda a: PROJECTOR,
    ),
    "stage 2": ("", lambda a: a - tower(a)),
    "stage 2, im_start/end": ("--mm_use_im_start_end True", lambda a: a - tower(a)),
    "stage 2, tower unfrozen": ("--unfreeze_mm_vision_tower True", lambda a: a),
    "stage 2, projector frozen": ("--freeze_mm_mlp_adapter True", lambda a: a - tower(a) - PROJECTOR),
    "stage 2, backbone frozen": ("--freeze_backbone True", lambda a: PROJECTOR | {"lm_head.weight"}),
    "stage 2, unpad newline": ("--mm_patch_merge_type spatial_unpad", lambda a: a - tower(a)),
    "LoRA": ("--lora_enable True --lora_r 4", lambda a: lora(a) | PROJECTOR),
    "LoRA, backbone frozen": (
        "--lora_enable True --lora_r 4 --freeze_backbone True",
        lambda a: lora(a) | PROJECTOR,
    ),
    "LoRA, new unpad newline trains": (
        "--lora_enable True --lora_r 4 --mm_patch_merge_type spatial_unpad",
        lambda a: lora(a) | PROJECTOR | {"model.image_newline"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_trainable_parameters_per_stage(case, tiny_kit, tmp_path, caplog):
    flags, expected = CASES[case]
    with caplog.at_level("INFO", logger="llava.train.freeze"):
        model = build(
            f"--model_name_or_path {tiny_kit.llm} --version v1 {vision(tiny_kit)} {flags}", tmp_path
        )
    assert trainable(model) == expected(names(model))
    assert "freeze policy" in caplog.text and "frozen" in caplog.text


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("", lambda a: a - tower(a)),
        ("--freeze_backbone True", lambda a: PROJECTOR | {"lm_head.weight"}),
        # the checkpoint's newline goes with the LLM: LoRA leaves it frozen; no adapters in the CLIP tower
        ("--lora_enable True --lora_r 4", lambda a: lora(a) | PROJECTOR),
    ],
)
def test_from_a_llava_checkpoint(flags, expected, tiny_kit, checkpoints, tmp_path):
    ckpt = checkpoints["unpad"]
    unpad = "--mm_patch_merge_type spatial_unpad"
    model = build(f"--model_name_or_path {ckpt} --version v1 {vision(tiny_kit)} {unpad} {flags}", tmp_path)
    all_names = names(model)
    assert "model.image_newline" in all_names
    assert trainable(model) == expected(all_names)
    assert not lora(tower(all_names))


def test_text_only_backbone_frozen(tiny_kit, tmp_path):
    model = build(f"--model_name_or_path {tiny_kit.llm} --version v1 --freeze_backbone True", tmp_path)
    assert trainable(model) == {"lm_head.weight"}


def test_lora_targets_the_decoder_stack_only(tiny_kit, checkpoints):
    from llava.model import LlavaLlamaForCausalLM

    plain = LlavaLlamaForCausalLM.from_pretrained(tiny_kit.llm)
    assert find_all_linear_names(plain) == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    with_tower = LlavaLlamaForCausalLM.from_pretrained(checkpoints["flat"])  # the CLIP tower has q_proj too
    targets = find_all_linear_names(with_tower)
    assert targets and all(t.startswith("model.layers.") for t in targets)
    assert len(targets) == 7 * with_tower.config.num_hidden_layers


def test_qlora_from_a_llava_checkpoint_keeps_the_projector_in_full_precision(tiny_kit, checkpoints, tmp_path):
    pytest.importorskip("bitsandbytes")
    model = build(
        f"--model_name_or_path {checkpoints['flat']} --version v1 {vision(tiny_kit)} --bits 4 "
        "--lora_enable True --lora_r 4 --bf16 True",
        tmp_path,
    )
    projector = model.get_model().mm_projector
    assert type(projector[0]) is torch.nn.Linear and projector[0].weight.is_floating_point()
    assert trainable(model) == lora(names(model)) | PROJECTOR
    assert any("Linear4bit" in type(m).__name__ for m in model.get_model().layers.modules())


def test_policy_from_flags():
    from types import SimpleNamespace

    model_args = SimpleNamespace(
        vision_tower=None,
        tune_mm_mlp_adapter=True,
        unfreeze_mm_vision_tower=True,
        freeze_backbone=False,
        mm_use_im_start_end=True,
    )
    training_args = SimpleNamespace(freeze_mm_mlp_adapter=True, lora_enable=False, bits=16)
    # without --vision_tower the multimodal flags do nothing, as the original
    assert FreezePolicy.from_args(model_args, training_args) == FreezePolicy()
    model_args.vision_tower = "clip"
    policy = FreezePolicy.from_args(model_args, training_args)
    assert policy.projector_only and policy.train_input_embeddings and policy.train_vision_tower
    assert policy.freeze_projector and not policy.llm_marked_by_peft


def test_apply_returns_the_state_of_each_part(tiny_kit):
    from tests.model_helpers import build_tiny_llava

    model = build_tiny_llava(tiny_kit)
    states = apply_freeze_policy(model, FreezePolicy(vision=True, projector_only=True))
    assert states == {"vision_tower": "frozen", "projector": "train", "llm": "frozen", "head": "frozen"}
    states = apply_freeze_policy(model, FreezePolicy(vision=True, train_vision_tower=True))
    assert set(states.values()) == {"train"}


# ---------------------------------------------------------------------------- trainer: lr groups, saving
def trainer_for(model, tmp_path, **kwargs):
    from llava.train.llava_trainer import LLaVATrainer

    extra = {k: kwargs.pop(k) for k in ("projector_only", "save_embeddings_with_projector") if k in kwargs}
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", **kwargs)
    return LLaVATrainer(model=model, args=args, **extra)


@pytest.mark.parametrize("use_lora", [False, True])
def test_lr_groups_follow_the_parts(use_lora, tiny_kit, tmp_path):
    from peft import LoraConfig, get_peft_model

    from tests.model_helpers import build_tiny_llava

    model = build_tiny_llava(tiny_kit).train()
    model.requires_grad_(True)
    if use_lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=find_all_linear_names(model)))
        apply_freeze_policy(
            model, FreezePolicy(vision=True, train_vision_tower=True, llm_marked_by_peft=True)
        )
    trainer = trainer_for(model, tmp_path, mm_projector_lr=1e-4, mm_vision_tower_lr=1e-5, learning_rate=2e-3)
    trainer.create_optimizer()
    lr_of = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    named = {n.removeprefix("base_model.model."): p for n, p in model.named_parameters() if p.requires_grad}
    assert set(lr_of) == {id(p) for p in named.values()}
    for name, p in named.items():
        want = 1e-4 if name.startswith("model.mm_projector.") else 1e-5 if "vision_tower" in name else 2e-3
        assert lr_of[id(p)] == want, name
    assert any("lora_" in n for n in named) == use_lora


@pytest.mark.parametrize(("use_lora", "with_embeddings"), [(False, False), (False, True), (True, True)])
def test_mm_projector_bin_keys_and_values(use_lora, with_embeddings, tiny_kit, tmp_path):
    from peft import LoraConfig, get_peft_model

    from tests.model_helpers import build_tiny_llava

    model = build_tiny_llava(tiny_kit)
    expected = {k: v.clone() for k, v in model.state_dict().items() if k in PROJECTOR}
    if with_embeddings:
        expected["model.embed_tokens.weight"] = model.get_input_embeddings().weight.detach().clone()
    if use_lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=find_all_linear_names(model)))
    trainer = trainer_for(
        model, tmp_path, projector_only=True, save_embeddings_with_projector=with_embeddings
    )
    trainer.save_model(str(tmp_path / "saved"))
    state = torch.load(tmp_path / "saved" / "mm_projector.bin", weights_only=True)
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    assert (tmp_path / "saved" / "config.json").is_file()
    assert not (tmp_path / "saved" / "model.safetensors").exists()


def test_parameter_table_groups_by_part(tiny_kit):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config

    from llava.model import llava_class_for_config
    from llava.train.param_table import format_parameter_table, group_of_parameters
    from tests.model_helpers import build_tiny_llava, vision_args

    model = build_tiny_llava(tiny_kit, mm_patch_merge_type="spatial_unpad")
    model = get_peft_model(model, LoraConfig(r=4, target_modules=find_all_linear_names(model)))
    groups = {n.removeprefix("base_model.model."): g for n, g in group_of_parameters(model).items()}
    assert groups["model.image_newline"] == "image_newline"
    assert groups["model.mm_projector.0.weight"] == "mm_projector"
    assert groups["model.embed_tokens.weight"] == "embed_tokens"
    assert groups["model.layers.0.mlp.up_proj.base_layer.weight"] == "llm layers"
    assert groups["model.layers.0.mlp.up_proj.lora_A.default.weight"] == "lora adapters"
    assert groups["model.norm.weight"] == "other (norms, ...)"
    assert groups["lm_head.weight"] == "lm_head"
    assert {groups[n] for n in groups if n.startswith("model.vision_tower.")} == {"vision_tower"}
    table = format_parameter_table(model)
    assert "image_newline" in table and "lora adapters" in table

    gpt2 = llava_class_for_config({"model_type": "gpt2"})(
        GPT2Config(vocab_size=500, n_embd=64, n_layer=2, n_head=4, n_positions=128)
    )
    gpt2.get_model().initialize_vision_modules(vision_args(tiny_kit))
    groups = group_of_parameters(gpt2)
    assert groups["transformer.wte.weight"] == "embed_tokens"  # tied with lm_head
    assert groups["transformer.h.0.attn.c_attn.weight"] == "llm layers"
    assert groups["transformer.wpe.weight"] == "other (norms, ...)"
    assert groups["transformer.mm_projector.0.weight"] == "mm_projector"
