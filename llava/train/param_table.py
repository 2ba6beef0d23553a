"""The table of frozen and trainable parameter groups printed when training starts.

Groups follow the model's parts (llava.model.parts), by module identity: PEFT's adapter weights, the
projector, image_newline, the vision tower, and the LLM split into its input embeddings, its layer
stack (the decoder's ModuleList), lm_head and the rest (norms, ...).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from llava.model.parts import (
    HEAD,
    IMAGE_NEWLINE,
    LLM,
    PROJECTOR,
    VISION_TOWER,
    adapter_parameter_ids,
    llava_parts,
)
from llava.train.zero import full_numel

OTHER_GROUP = "other (norms, ...)"
GROUPS = (
    "lora adapters",
    "mm_projector",
    "image_newline",
    "vision_tower",
    "embed_tokens",
    "lm_head",
    "llm layers",
    OTHER_GROUP,
)
_GROUP_OF_PART = {
    PROJECTOR: "mm_projector",
    IMAGE_NEWLINE: "image_newline",
    VISION_TOWER: "vision_tower",
    HEAD: "lm_head",
}


def group_of_parameters(model: torch.nn.Module) -> dict[str, str]:
    """{parameter name: table group} for `model.named_parameters()` (wrapped by PEFT or not)."""
    parts = llava_parts(model)
    part_of = parts.part_of_parameter_ids()
    adapters = adapter_parameter_ids(model)
    embeddings = {id(p) for p in parts.embeddings.parameters()}
    layers = {
        id(p)
        for child in parts.llm.children()
        if isinstance(child, torch.nn.ModuleList)
        for p in child.parameters()
    }
    out = {}
    for name, p in model.named_parameters():
        part = part_of.get(id(p))
        if id(p) in adapters:
            out[name] = "lora adapters"
        elif part in _GROUP_OF_PART:
            out[name] = _GROUP_OF_PART[part]
        elif part == LLM and id(p) in embeddings:
            out[name] = "embed_tokens"
        elif part == LLM and id(p) in layers:
            out[name] = "llm layers"
        else:
            out[name] = OTHER_GROUP
    return out


def parameter_groups(model: torch.nn.Module) -> OrderedDict[str, dict]:
    """{group: {"trainable", "frozen", "dtypes"}} with element counts of the full parameters."""
    stats = {g: {"trainable": 0, "frozen": 0, "dtypes": set()} for g in GROUPS}
    group_of = group_of_parameters(model)
    for name, p in model.named_parameters():
        s = stats[group_of[name]]
        s["trainable" if p.requires_grad else "frozen"] += full_numel(p)
        s["dtypes"].add(str(getattr(p, "quant_storage", None) or p.dtype).replace("torch.", ""))
    return OrderedDict((g, s) for g, s in stats.items() if s["trainable"] or s["frozen"])


def _fmt(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def format_parameter_table(model: torch.nn.Module) -> str:
    groups = parameter_groups(model)
    rows = [("group", "trainable", "frozen", "state", "dtype")]
    total_t = total_f = 0
    for g, s in groups.items():
        state = (
            "TRAIN" if s["trainable"] and not s["frozen"] else ("frozen" if not s["trainable"] else "partial")
        )
        rows.append((g, _fmt(s["trainable"]), _fmt(s["frozen"]), state, ",".join(sorted(s["dtypes"]))))
        total_t += s["trainable"]
        total_f += s["frozen"]
    share = 100.0 * total_t / max(1, total_t + total_f)
    rows.append(("total", _fmt(total_t), _fmt(total_f), f"{share:.2f}% trained", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = "-+-".join("-" * w for w in widths)
    out = [" | ".join(c.ljust(w) for c, w in zip(rows[0], widths)), line]
    out += [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows[1:-1]]
    out += [line, " | ".join(c.ljust(w) for c, w in zip(rows[-1], widths))]
    return "\n".join(out)
