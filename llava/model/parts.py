"""The named parts of a LLaVA model, found by module identity (never by substrings of parameter names).

``model.get_parts()`` (``LlavaMetaForCausalLM``) or ``llava_parts(model)`` (also through PEFT's
``PeftModel`` / ``LoraModel``, ``torch.compile`` and ``.module`` wrappers such as DDP or a DeepSpeed
engine) returns a ``LlavaParts``:

    vision_tower   the ``VisionTower`` (llava.model.multimodal_encoder), or None for a text-only model
    projector      the ``mm_projector`` (llava.model.multimodal_projector), or None
    image_newline  the learned row-end vector of ``*_unpad`` patch merging (a Parameter), or None
    llm            the decoder stack: the LLM's inner model (``model.model`` for LLaMA, ``transformer``
                   for GPT-2). The three parts above hang on it, so that the state-dict keys stay the
                   original's (``model.mm_projector.*``); ``LlavaParts.llm_parameters()`` are its own.
    head           the output layer (``lm_head``)
    embeddings     (property) the LLM's input embeddings (``embed_tokens``)

``parameter_parts(model)`` maps every named parameter to one part name (``PART_NAMES``); a weight tied
between ``embeddings`` and ``head`` counts as ``llm``. ZeRO-3 partitioned parameters keep their identity,
so all of this works on them too. ``adapter_parameter_ids(model)`` are PEFT's adapter weights (LoRA).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

VISION_TOWER = "vision_tower"
PROJECTOR = "projector"
IMAGE_NEWLINE = "image_newline"
LLM = "llm"
HEAD = "head"
OTHER = "other"
PART_NAMES = (VISION_TOWER, PROJECTOR, IMAGE_NEWLINE, LLM, HEAD, OTHER)


@dataclass(frozen=True, eq=False)
class LlavaParts:
    vision_tower: nn.Module | None
    projector: nn.Module | None
    llm: nn.Module
    head: nn.Module | None
    image_newline: nn.Parameter | None = None

    @property
    def embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def multimodal_parameter_ids(self) -> set[int]:
        """The tower's, projector's and image_newline's parameters (which live on ``llm``)."""
        ids = {id(p) for m in (self.vision_tower, self.projector) if m is not None for p in m.parameters()}
        if self.image_newline is not None:
            ids.add(id(self.image_newline))
        return ids

    def llm_parameters(self) -> Iterator[nn.Parameter]:
        """The decoder stack's own parameters (embeddings, layers, norms), without the multimodal parts."""
        skip = self.multimodal_parameter_ids()
        return (p for p in self.llm.parameters() if id(p) not in skip)

    def part_of_parameter_ids(self) -> dict[int, str]:
        """{id(parameter): part name} for every parameter of the parts."""
        out: dict[int, str] = {}
        for name, module in ((VISION_TOWER, self.vision_tower), (PROJECTOR, self.projector)):
            if module is not None:
                out.update((id(p), name) for p in module.parameters())
        if self.image_newline is not None:
            out[id(self.image_newline)] = IMAGE_NEWLINE
        for p in self.llm.parameters():
            out.setdefault(id(p), LLM)
        if self.head is not None:
            for p in self.head.parameters():
                out.setdefault(id(p), HEAD)
        return out


def _is_peft_tuner(model) -> bool:
    if "peft" not in sys.modules:
        return False
    from peft.tuners.tuners_utils import BaseTuner

    return isinstance(model, BaseTuner)


def base_llava_model(model: nn.Module) -> nn.Module:
    """The LLaVA model inside PEFT (``PeftModel``, ``LoraModel``) and ``.module`` wrappers."""
    for _ in range(8):
        if callable(getattr(type(model), "get_parts", None)):
            return model
        if callable(getattr(model, "get_base_model", None)):  # peft.PeftModel
            model = model.get_base_model()
        elif _is_peft_tuner(model):  # peft's LoraModel (a PeftModel's base_model)
            model = model.model
        elif isinstance(getattr(model, "module", None), nn.Module):  # DDP, DeepSpeedEngine
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            break
    raise TypeError(f"{type(model).__name__} is not a LLaVA model (no get_parts method)")


def llava_parts(model: nn.Module) -> LlavaParts:
    return base_llava_model(model).get_parts()


def parameter_parts(model: nn.Module) -> dict[str, str]:
    """{parameter name in ``model`` (wrapped or not): part name} for ``model.named_parameters()``."""
    by_id = llava_parts(model).part_of_parameter_ids()
    return {name: by_id.get(id(p), OTHER) for name, p in model.named_parameters()}


def adapter_parameter_ids(model: nn.Module) -> set[int]:
    """ids of PEFT's adapter weights (LoRA A/B, ...): the parameters of its tuner layers' adapter modules."""
    if "peft" not in sys.modules:  # no PEFT model can exist without it
        return set()
    from peft.tuners.tuners_utils import BaseTunerLayer

    ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for attr in module.adapter_layer_names:
                holder = getattr(module, attr, None)
                if isinstance(holder, nn.Module):
                    ids.update(id(p) for p in holder.parameters())
    return ids
