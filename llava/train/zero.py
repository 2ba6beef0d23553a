"""All DeepSpeed ZeRO-3 gather/partition code of the trainer, in one place.

Under ZeRO-3 every rank holds only a slice of each parameter (`p.ds_id` is set, `p.shape` is
empty). Reading a parameter (to save `mm_projector.bin`, LoRA weights, ...) needs a gather;
writing one (loading `--pretrain_mm_mlp_adapter`) needs a gather with a modifier rank, after
which DeepSpeed re-partitions the new values. Without ZeRO-3 every helper here is a plain
read/write, so callers never branch on the DeepSpeed stage themselves.

The original LLaVA loaded the projector with a plain `load_state_dict` into partitioned
parameters, which fails (size mismatch against empty shapes) or silently loads nothing under
ZeRO-3 (haotian-liu/LLaVA #665, #728, #1878); `load_into_module` is the fix.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable

import torch

from llava.model.parts import base_llava_model

logger = logging.getLogger(__name__)


def is_partitioned(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def zero3_enabled() -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(is_deepspeed_zero3_enabled())


def full_numel(param: torch.Tensor) -> int:
    """Element count of the whole parameter, also when only a ZeRO-3 slice is held here."""
    return int(getattr(param, "ds_numel", param.numel()))


@contextlib.contextmanager
def gathered(params: Iterable[torch.Tensor], modifier_rank: int | None = None):
    """Inside the block, ZeRO-3 parameters hold their full values (a no-op for ordinary ones).

    With `modifier_rank`, what that rank writes into them is kept and re-partitioned on exit.
    Must be entered on every rank (it is a collective).
    """
    params = [p for p in params if is_partitioned(p)]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


def gather_named(named_params: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{name: full CPU copy} of the given parameters, gathered together when partitioned."""
    named = list(named_params)
    with gathered([p for _, p in named]):
        return {name: p.detach().cpu().clone() for name, p in named}


def mm_adapter_state(model: torch.nn.Module, with_embeddings: bool = False) -> dict[str, torch.Tensor]:
    """The projector (and, `with_embeddings` for im_start/end tokens, the input embeddings) as saved in
    mm_projector.bin, found by module identity (llava.model.parts), also under PEFT.

    Keys are the original's, the names in the LLaVA model: `model.mm_projector.0.weight`, ...
    (`model.embed_tokens.weight`).
    """
    base = base_llava_model(model)
    parts = base.get_parts()
    if parts.projector is None or not list(parts.projector.parameters()):
        raise ValueError("the model has no mm_projector parameters to save (was --vision_tower given?)")
    wanted = {id(p) for p in parts.projector.parameters()}
    if with_embeddings:
        wanted |= {id(p) for p in parts.embeddings.parameters()}
    return gather_named([(n, p) for n, p in base.named_parameters() if id(p) in wanted])


def lora_state(
    named_params: Iterable[tuple[str, torch.Tensor]], bias: str = "none"
) -> dict[str, torch.Tensor]:
    """The LoRA weights (and biases per `--lora_bias`), gathered, under the PEFT names."""
    named = list(named_params)
    if bias == "none":
        chosen = [(n, p) for n, p in named if "lora_" in n]
    elif bias == "all":
        chosen = [(n, p) for n, p in named if "lora_" in n or "bias" in n]
    elif bias == "lora_only":
        lora_modules = {n.split("lora_")[0] for n, _ in named if "lora_" in n}
        chosen = [
            (n, p)
            for n, p in named
            if "lora_" in n or (n.endswith("bias") and n[: -len("bias")] in lora_modules)
        ]
    else:
        raise ValueError(f"--lora_bias {bias!r} is not supported; use none, all or lora_only")
    return gather_named(chosen)


def non_lora_trainable_state(named_params: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Trainable parameters outside LoRA (projector, unfrozen tower...): `non_lora_trainables.bin`."""
    return gather_named([(n, p) for n, p in named_params if "lora_" not in n and p.requires_grad])


def load_into_module(module: torch.nn.Module, load: Callable[[], object]):
    """Run `load()` (which writes `module`'s parameters) with them gathered; keep the result.

    Every rank runs `load()` on the full tensors (each has the file), rank 0's values are kept.
    """
    with gathered(list(module.parameters()), modifier_rank=0):
        return load()


def partition_new_params(model: torch.nn.Module) -> int:
    """Under ZeRO-3, partition the parameters created outside `zero.Init` (e.g. a freshly built projector).

    Returns how many parameters were partitioned here (0 when ZeRO-3 is off).
    """
    if not zero3_enabled():
        return 0
    import deepspeed
    from transformers.integrations import deepspeed_config

    count = sum(1 for p in model.parameters() if not is_partitioned(p))
    if count:
        # Converts only the parameters that are not ZeRO parameters yet.
        deepspeed.zero.Init(module=model, config_dict_or_path=deepspeed_config())
        logger.info("ZeRO-3: partitioned %d parameters built outside zero.Init", count)
    return count
