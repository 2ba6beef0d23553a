"""Build the model and tokenizer for one training stage from the parsed arguments.

Follows the original LLaVA train() step by step (quantisation, LoRA, tokenizer and template,
vision modules), with the ZeRO-3 projector load done right (llava.train.zero); which parts train is
decided once at the end (llava.train.freeze). The model's parts are found by module identity
(llava.model.parts), never by substrings of parameter names.
"""

from __future__ import annotations

import logging

import torch
import transformers

from llava.model.parts import llava_parts
from llava.train import zero
from llava.train.freeze import FreezePolicy, apply_freeze_policy

logger = logging.getLogger(__name__)


def compute_dtype(training_args) -> torch.dtype:
    if training_args.fp16:
        return torch.float16
    return torch.bfloat16 if training_args.bf16 else torch.float32


def find_all_linear_names(model) -> list[str]:
    """LoRA's target_modules: the linear layers of the LLM's decoder stack (not lm_head, not the
    projector or the vision tower), found by module identity.

    Their last name parts (``q_proj``, ..., as the original) when no other linear layer of the model ends
    the same way; else (e.g. a loaded CLIP tower also has ``q_proj``) their full module names.
    """
    parts = llava_parts(model)
    multimodal = {id(m) for part in (parts.vision_tower, parts.projector) if part for m in part.modules()}
    in_llm = {id(m) for m in parts.llm.modules()} - multimodal
    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    ours = [n for n, m in linear if id(m) in in_llm]
    suffixes = {n.split(".")[-1] for n in ours}
    if any(n.split(".")[-1] in suffixes for n, m in linear if id(m) not in in_llm):
        return sorted(ours)
    return sorted(suffixes)


def smart_tokenizer_and_embedding_resize(special_tokens_dict: dict, tokenizer, model) -> None:
    """Add special tokens and initialise their embeddings to the mean of the others."""
    added = tokenizer.add_special_tokens(special_tokens_dict)
    model.resize_token_embeddings(len(tokenizer))
    if added > 0:
        for emb in (model.get_input_embeddings().weight.data, model.get_output_embeddings().weight.data):
            emb[-added:] = emb[:-added].mean(dim=0, keepdim=True)


def _quantization_kwargs(training_args, dtype: torch.dtype, model_cls) -> dict:
    """4/8-bit loading of the LLM's linear layers; lm_head and the class's multimodal parts
    (``model.mm_projector``, ``model.vision_tower``) stay in full precision."""
    if training_args.bits not in (4, 8):
        return {}
    from transformers import BitsAndBytesConfig

    return dict(
        device_map={"": training_args.device},
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=training_args.bits == 4,
            load_in_8bit=training_args.bits == 8,
            llm_int8_threshold=6.0,
            llm_int8_has_fp16_weight=False,
            llm_int8_skip_modules=["lm_head", *model_cls.multimodal_module_names()],
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=training_args.double_quant,
            bnb_4bit_quant_type=training_args.quant_type,
        ),
    )


def load_llm(model_args, training_args, attn_implementation: str | None):
    """The LLaVA class for the checkpoint's architecture, loaded (under zero.Init with ZeRO-3)."""
    from llava.model import llava_class_for_config, register_auto_classes

    register_auto_classes()  # --model_name_or_path may be a checkpoint written here (model_type llava_llama)
    config = transformers.AutoConfig.from_pretrained(
        model_args.model_name_or_path, cache_dir=training_args.cache_dir
    )
    cls = llava_class_for_config(config)
    kwargs = _quantization_kwargs(training_args, compute_dtype(training_args), cls)
    if attn_implementation is not None:
        if attn_implementation == "torch_varlen":  # PyTorch's flash varlen kernel, see varlen_attention
            from llava.model.varlen_attention import register_varlen_attention

            register_varlen_attention()
        kwargs["attn_implementation"] = attn_implementation
    model = cls.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        dtype=(torch.bfloat16 if training_args.bf16 else None),
        **kwargs,
    )
    if zero.zero3_enabled():
        # The tower weights a LLaVA checkpoint stores (a 1.6 / OneVision model's trained tower) go into
        # the ZeRO-3 partitions gathered; from_pretrained alone cannot write them there.
        model.attach_vision_tower(
            model_args.model_name_or_path, write_weights=zero.load_into_module, cache_dir=training_args.cache_dir
        )
    return model


def load_tokenizer(model_args, training_args, model):
    """The tokenizer, its pad token set as the original does per `--version`; returns (tokenizer, template).

    The template the run trains with is written into the model's config as `conv_template` (saved in every
    config.json: checkpoints, mm_projector.bin folders, LoRA adapters), so serving and evaluation use it.
    """
    from llava.data.sample_format import template_for_version

    tokenizer, template = _load_tokenizer(model_args, training_args, model)
    model.config.conv_template = template_for_version(template)  # v0 / v0.5: the default template (v1)
    return tokenizer, template


def _load_tokenizer(model_args, training_args, model):
    from llava.conversation import get_conv_template

    tokenizer = transformers.AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        model_max_length=training_args.model_max_length,
        padding_side="right",
    )
    version = model_args.version
    if version == "v0":
        if tokenizer.pad_token is None:
            smart_tokenizer_and_embedding_resize(dict(pad_token="[PAD]"), tokenizer, model)
        return tokenizer, None  # the original keeps the default (v1) template for v0 / v0.5
    if tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
    elif tokenizer.pad_token is None:
        logger.warning("tokenizer has neither unk nor pad token: padding with eos (masked by length)")
        tokenizer.pad_token = tokenizer.eos_token
    if version == "v0.5":
        return tokenizer, None
    get_conv_template(version)  # unknown --version: an error listing the valid names
    return tokenizer, version


def add_lora(model, training_args):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        target_modules=find_all_linear_names(model),
        lora_dropout=training_args.lora_dropout,
        bias=training_args.lora_bias,
        task_type="CAUSAL_LM",
    )
    if training_args.bits == 16:
        if training_args.bf16:
            model.to(torch.bfloat16)
        if training_args.fp16:
            model.to(torch.float16)
    logger.info(
        "adding LoRA adapters (r=%d, alpha=%d) to %s", config.r, config.lora_alpha, config.target_modules
    )
    return get_peft_model(model, config)


def load_pretrained_adapter(model, path: str) -> None:
    """Load stage 1's mm_projector.bin into the projector, also when ZeRO-3 has partitioned it."""
    from llava.model import load_mm_projector_state

    state = torch.load(path, map_location="cpu", weights_only=True)
    projector = llava_parts(model).projector
    partitioned = any(zero.is_partitioned(p) for p in projector.parameters())
    zero.load_into_module(projector, lambda: load_mm_projector_state(model, state))
    logger.info("projector loaded from %s%s", path, " (into ZeRO-3 partitions)" if partitioned else "")


def _with_video_defaults(model_args, config):
    """`model_args` with each video flag left unset taken from the checkpoint's config, else LLaVA-NeXT's
    training default (a copy: the parsed arguments stay as given)."""
    import dataclasses

    from llava.train.arguments import VIDEO_TRAINING_DEFAULTS

    chosen = {
        name: getattr(config, name, None) if getattr(config, name, None) is not None else default
        for name, default in VIDEO_TRAINING_DEFAULTS.items()
        if getattr(model_args, name, None) is None
    }
    return dataclasses.replace(model_args, **chosen) if chosen else model_args


def setup_vision(model, tokenizer, model_args, data_args, training_args) -> tuple[str, ...]:
    """Vision tower + projector, the adapter of stage 1, config fields, the image tokens.

    Returns the parts it created (for the freeze policy: a new image_newline trains)."""
    created = model.get_model().initialize_vision_modules(
        model_args=_with_video_defaults(model_args, model.config), fsdp=training_args.fsdp
    )
    zero.partition_new_params(model)
    if model_args.pretrain_mm_mlp_adapter:
        load_pretrained_adapter(model, model_args.pretrain_mm_mlp_adapter)
    tower = model.get_vision_tower()
    dtype = compute_dtype(training_args)
    if not training_args.deepspeed:
        tower.to(dtype=dtype, device=training_args.device)

    cfg = model.config
    cfg.image_aspect_ratio = data_args.image_aspect_ratio
    cfg.image_grid_pinpoints = data_args.image_grid_pinpoints
    # How videos are sampled: serving and evaluation sample frames the way training did.
    cfg.frames_upbound = data_args.frames_upbound
    cfg.video_fps = data_args.video_fps
    cfg.force_sample = data_args.force_sample
    cfg.tokenizer_padding_side = tokenizer.padding_side
    cfg.tokenizer_model_max_length = tokenizer.model_max_length

    # Recorded as the original does; llava.train.freeze applies them.
    cfg.tune_mm_mlp_adapter = model_args.tune_mm_mlp_adapter
    cfg.freeze_mm_mlp_adapter = training_args.freeze_mm_mlp_adapter
    cfg.unfreeze_mm_vision_tower = model_args.unfreeze_mm_vision_tower
    if training_args.bits in (4, 8):
        llava_parts(model).projector.to(dtype=dtype, device=training_args.device)

    cfg.mm_use_im_start_end = model_args.mm_use_im_start_end
    cfg.mm_projector_lr = training_args.mm_projector_lr
    cfg.mm_vision_tower_lr = training_args.mm_vision_tower_lr
    cfg.mm_use_im_patch_token = model_args.mm_use_im_patch_token
    model.initialize_vision_tokenizer(
        tokenizer,
        mm_use_im_start_end=model_args.mm_use_im_start_end,
        mm_use_im_patch_token=model_args.mm_use_im_patch_token,
        pretrained_adapter=model_args.pretrain_mm_mlp_adapter,
    )
    return created


def _kbit_dtypes(model, training_args) -> None:
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and training_args.bf16:
            module.to(torch.bfloat16)
        if "norm" in name:
            module.to(torch.float32)
        if ("lm_head" in name or "embed_tokens" in name) and hasattr(module, "weight"):
            if training_args.bf16 and module.weight.dtype == torch.float32:
                module.to(torch.bfloat16)


def build_model_and_tokenizer(model_args, data_args, training_args, attn_implementation=None):
    """(model, tokenizer, template name) ready for LLaVATrainer. `data_args` is only read (the image
    flags go into the model's config); the dataset's settings are `SampleFormat.for_model` of these."""
    model = load_llm(model_args, training_args, attn_implementation)
    model.config.use_cache = False
    if getattr(training_args, "use_liger_kernel", False):
        from llava.train.liger import apply_liger_kernels

        apply_liger_kernels(model, getattr(training_args, "liger_kernel_config", None))
    if training_args.bits in (4, 8):
        from peft import prepare_model_for_kbit_training

        model.config.dtype = torch.bfloat16 if training_args.bf16 else torch.float32
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(training_args.gradient_checkpointing)
        )
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()
    if training_args.lora_enable:
        model = add_lora(model, training_args)
    tokenizer, template = load_tokenizer(model_args, training_args, model)
    created = ()
    if model_args.vision_tower is not None:
        created = setup_vision(model, tokenizer, model_args, data_args, training_args)
    apply_freeze_policy(model, FreezePolicy.from_args(model_args, training_args, new_parts=created))
    if training_args.bits in (4, 8):
        _kbit_dtypes(model, training_args)
    return model, tokenizer, template
