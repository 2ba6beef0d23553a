"""`--use_liger_kernel True` for LLaVA models: Liger's Triton kernels on the LLM inside.

transformers' Trainer applies Liger by the model's `model_type`; a LLaVA model's is `llava_llama`
(`llava_mistral`, `llava_qwen2`), which Liger does not know, so on its own the flag silently does
nothing. Here the kernels of the LLM the model is built on (RMSNorm, SwiGLU MLP, RoPE; Liger's
cross entropy if `--liger_kernel_config` asks) are applied to the model instance before training.
Liger's fused linear cross entropy is not used: it replaces the model's forward (LLaVA's splices
the image features in) and reads the lm_head weight outside its module, which ZeRO-3 partitions.
"""

from __future__ import annotations

import inspect
import logging

logger = logging.getLogger(__name__)

_NOT_USED = "fused_linear_cross_entropy"


def _liger_functions() -> dict:
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as err:
        raise ImportError(
            "--use_liger_kernel True needs liger-kernel (`pip install liger-kernel`; its kernels run on "
            f"CUDA GPUs through Triton): {err}"
        ) from err
    return MODEL_TYPE_TO_APPLY_LIGER_FN


def llm_model_type(config, known) -> str | None:
    """The `model_type` of the LLM a LLaVA config extends (LlavaLlamaConfig -> 'llama'), if in `known`."""
    for cls in type(config).__mro__:
        model_type = getattr(cls, "model_type", None)
        if model_type in known:
            return model_type
    return None


def apply_liger_kernels(model, kernel_config: dict | None = None) -> dict:
    """Patch `model` (a LLaVA model, not yet wrapped by PEFT) with Liger's kernels for its LLM.
    Returns the keyword arguments the Liger function was called with."""
    functions = _liger_functions()
    base = llm_model_type(model.config, functions)
    if base is None:
        raise ValueError(
            f"--use_liger_kernel True: Liger has no kernels for this model's LLM "
            f"({type(model.config).__name__}, model_type {model.config.model_type!r}); drop the flag"
        )
    apply = functions[base]
    accepted = inspect.signature(apply).parameters
    kwargs = dict(kernel_config or {})
    if kwargs.pop(_NOT_USED, False):
        logger.warning(
            "--liger_kernel_config: %s is not used with LLaVA models (see llava.train.liger)", _NOT_USED
        )
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise ValueError(
            f"--liger_kernel_config: {unknown} not accepted by Liger's {apply.__name__} "
            f"(accepted: {sorted(k for k in accepted if k not in ('model', _NOT_USED))})"
        )
    if _NOT_USED in accepted:
        kwargs[_NOT_USED] = False
    apply(model=model, **kwargs)
    logger.info("Liger kernels applied to the %s LLM: %s", base, kwargs)
    return kwargs
