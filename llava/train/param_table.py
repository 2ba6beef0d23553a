"""The table of frozen and trainable parameter groups printed when training starts."""

from __future__ import annotations

from collections import OrderedDict

import torch

from llava.train.zero import full_numel

# (group, substrings of the parameter name that put it there), first match wins.
_GROUPS = (
    ("lora adapters", ("lora_",)),
    ("mm_projector", ("mm_projector", "vision_resampler")),
    ("vision_tower", ("vision_tower",)),
    ("embed_tokens", ("embed_tokens", "embed_in", "wte")),
    ("lm_head", ("lm_head",)),
    ("llm layers", (".layers.", ".h.", ".blocks.")),
)


def group_of(name: str) -> str:
    for group, keys in _GROUPS:
        if any(k in name for k in keys):
            return group
    return "other (norms, ...)"


def parameter_groups(model: torch.nn.Module) -> OrderedDict[str, dict]:
    """{group: {"trainable", "frozen", "dtypes"}} with element counts of the full parameters."""
    order = [g for g, _ in _GROUPS] + ["other (norms, ...)"]
    stats = {g: {"trainable": 0, "frozen": 0, "dtypes": set()} for g in order}
    for name, p in model.named_parameters():
        s = stats[group_of(name)]
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
