"""Build the model and tokenizer for one training stage from the parsed arguments.

Follows the original LLaVA train() step by step (quantisation, LoRA, tokenizer and template,
vision modules, which parts train), with the ZeRO-3 projector load done right (llava.train.zero).
"""

from __future__ import annotations

import logging

import torch
import transformers

from llava.train import zero

logger = logging.getLogger(__name__)

MULTIMODAL_KEYWORDS = ("mm_projector", "vision_tower", "vision_resampler")


def compute_dtype(training_args) -> torch.dtype:
    if training_args.fp16:
        return torch.float16
    return torch.bfloat16 if training_args.bf16 else torch.float32


def find_all_linear_names(model) -> list[str]:
    """Names of the LLM's linear layers for LoRA: not the vision parts, not lm_head."""
    names = set()
    for name, module in model.named_modules():
        if any(k in name for k in MULTIMODAL_KEYWORDS):
            continue
        if isinstance(module, torch.nn.Linear):
            names.add(name.split(".")[-1])
    names.discard("lm_head")  # needed for 16-bit
    return sorted(names)


def smart_tokenizer_and_embedding_resize(special_tokens_dict: dict, tokenizer, model) -> None:
    """Add special tokens and initialise their embeddings to the mean of the others."""
    added = tokenizer.add_special_tokens(special_tokens_dict)
    model.resize_token_embeddings(len(tokenizer))
    if added > 0:
        for emb in (model.get_input_embeddings().weight.data, model.get_output_embeddings().weight.data):
            emb[-added:] = emb[:-added].mean(dim=0, keepdim=True)


def _quantization_kwargs(training_args, dtype: torch.dtype) -> dict:
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
            llm_int8_skip_modules=["lm_head", *MULTIMODAL_KEYWORDS],
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=training_args.double_quant,
            bnb_4bit_quant_type=training_args.quant_type,
        ),
    )


def load_llm(model_args, training_args, attn_implementation: str | None):
    """The LLaVA class for the checkpoint's architecture, loaded (under zero.Init with ZeRO-3)."""
    from llava.model import llava_class_for_config

    config = transformers.AutoConfig.from_pretrained(
        model_args.model_name_or_path, cache_dir=training_args.cache_dir
    )
    cls = llava_class_for_config(config)
    kwargs = _quantization_kwargs(training_args, compute_dtype(training_args))
    if attn_implementation is not None:
        if attn_implementation == "torch_varlen":  # PyTorch's flash varlen kernel, see varlen_attention
            from llava.model.varlen_attention import register_varlen_attention

            register_varlen_attention()
        kwargs["attn_implementation"] = attn_implementation
    return cls.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        dtype=(torch.bfloat16 if training_args.bf16 else None),
        **kwargs,
    )


def load_tokenizer(model_args, training_args, model):
    """The tokenizer, its pad token set as the original does per `--version`; returns (tokenizer, template)."""
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
    projector = model.get_model().mm_projector
    partitioned = any(zero.is_partitioned(p) for p in projector.parameters())
    zero.load_into_module(projector, lambda: load_mm_projector_state(model, state))
    logger.info("projector loaded from %s%s", path, " (into ZeRO-3 partitions)" if partitioned else "")


def setup_vision(model, tokenizer, model_args, data_args, training_args) -> None:
    """Vision tower + projector, the adapter of stage 1, config fields, and which parts train."""
    model.get_model().initialize_vision_modules(model_args=model_args, fsdp=training_args.fsdp)
    zero.partition_new_params(model)
    if model_args.pretrain_mm_mlp_adapter:
        load_pretrained_adapter(model, model_args.pretrain_mm_mlp_adapter)
    tower = model.get_vision_tower()
    dtype = compute_dtype(training_args)
    if not training_args.deepspeed:
        tower.to(dtype=dtype, device=training_args.device)

    data_args.image_processor = tower.image_processor
    data_args.uint8_images = True  # the tower normalises with this same processor's table
    data_args.is_multimodal = True
    data_args.num_image_tokens = int(getattr(tower, "num_image_tokens", tower.num_patches))
    cfg = model.config
    cfg.image_aspect_ratio = data_args.image_aspect_ratio
    cfg.image_grid_pinpoints = data_args.image_grid_pinpoints
    cfg.tokenizer_padding_side = tokenizer.padding_side
    cfg.tokenizer_model_max_length = tokenizer.model_max_length

    projector = model.get_model().mm_projector
    cfg.tune_mm_mlp_adapter = training_args.tune_mm_mlp_adapter = model_args.tune_mm_mlp_adapter
    if model_args.tune_mm_mlp_adapter:
        model.requires_grad_(False)
        projector.requires_grad_(True)
    cfg.freeze_mm_mlp_adapter = training_args.freeze_mm_mlp_adapter
    if training_args.freeze_mm_mlp_adapter:
        projector.requires_grad_(False)
    cfg.unfreeze_mm_vision_tower = model_args.unfreeze_mm_vision_tower
    if model_args.unfreeze_mm_vision_tower:
        tower.requires_grad_(True)
    if training_args.bits in (4, 8):
        projector.to(dtype=dtype, device=training_args.device)

    cfg.mm_use_im_start_end = data_args.mm_use_im_start_end = model_args.mm_use_im_start_end
    cfg.mm_projector_lr = training_args.mm_projector_lr
    cfg.mm_vision_tower_lr = training_args.mm_vision_tower_lr
    training_args.use_im_start_end = model_args.mm_use_im_start_end
    cfg.mm_use_im_patch_token = model_args.mm_use_im_patch_token
    model.initialize_vision_tokenizer(model_args, tokenizer=tokenizer)


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
    """(model, tokenizer, template name) ready for LLaVATrainer; fills data_args for the dataset."""
    model = load_llm(model_args, training_args, attn_implementation)
    model.config.use_cache = False
    if getattr(training_args, "use_liger_kernel", False):
        from llava.train.liger import apply_liger_kernels

        apply_liger_kernels(model, getattr(training_args, "liger_kernel_config", None))
    if model_args.freeze_backbone:
        model.get_model().requires_grad_(False)
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
    data_args.conv_version = template
    if model_args.vision_tower is not None:
        setup_vision(model, tokenizer, model_args, data_args, training_args)
    if training_args.bits in (4, 8):
        _kbit_dtypes(model, training_args)
    return model, tokenizer, template
