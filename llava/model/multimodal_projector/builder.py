"""Projector registry: maps vision features (mm_hidden_size) to the LLM's hidden size.

Names (``mm_projector_type``), as in the original LLaVA:
  ``linear``        one Linear layer (LLaVA-1.0)
  ``mlp{N}x_gelu``  N Linear layers with GELU between them (``mlp2x_gelu`` for LLaVA-1.5)
  ``identity``      no projection (the vision width must equal the LLM width)

Module layouts keep the original checkpoint keys: ``mm_projector.weight`` for ``linear`` and
``mm_projector.{0,2,...}.weight`` for the MLPs (an ``nn.Sequential`` with GELU at the odd indices).
"""

from __future__ import annotations

import re

from torch import nn

_MLP_GELU = re.compile(r"^mlp(\d+)x_gelu$")
VALID_PROJECTOR_TYPES = ("linear", "mlp{N}x_gelu (e.g. mlp2x_gelu)", "identity")


class IdentityMap(nn.Module):
    """Passes vision features through unchanged (``mm_projector_type identity``)."""

    def forward(self, x, *args, **kwargs):
        return x

    @property
    def config(self):
        return {"mm_projector_type": "identity"}


def _mlp_gelu(depth: int, in_dim: int, out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(1, depth):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


def build_vision_projector(config, delay_load: bool = False, **kwargs) -> nn.Module:
    """Build the projector named by ``config.mm_projector_type`` (default ``linear``).

    ``config`` needs ``mm_hidden_size`` (vision width) and ``hidden_size`` (LLM width).
    """
    name = getattr(config, "mm_projector_type", None) or "linear"
    in_dim = getattr(config, "mm_hidden_size", None)
    out_dim = getattr(config, "hidden_size", None)
    if name == "identity":
        return IdentityMap()
    if in_dim is None or out_dim is None:
        raise ValueError(
            f"cannot build the {name!r} projector: the config needs mm_hidden_size (vision width, got "
            f"{in_dim}) and hidden_size (LLM width, got {out_dim})"
        )
    if name == "linear":
        return nn.Linear(in_dim, out_dim)
    match = _MLP_GELU.match(name)
    if match and int(match.group(1)) >= 1:
        return _mlp_gelu(int(match.group(1)), in_dim, out_dim)
    raise ValueError(
        f"unknown mm_projector_type {name!r} (--mm_projector_type); valid: {', '.join(VALID_PROJECTOR_TYPES)}"
    )
