"""Helpers shared by the model tests: a tiny LLaVA built from the tiny kit."""

from __future__ import annotations

import contextlib

import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.testing.tiny import build_tiny_llava as _build
from llava.testing.tiny import llava_vision_args

vision_args = llava_vision_args


def build_tiny_llava(kit, cls=None, seed=0, llm_path=None, **overrides):
    """A LLaVA model from the kit's plain LLM, vision modules initialised as training does; the random
    projector is scaled up so images change the logits visibly."""
    return _build(kit, cls=cls, seed=seed, llm_path=llm_path, projector_scale=4.0, **overrides)


def prompt_ids(*parts):
    """Ids from ints and 'IMG' markers, e.g. prompt_ids(1, 300, 'IMG', 400)."""
    return torch.tensor([[IMAGE_TOKEN_INDEX if p == "IMG" else p for p in parts]])


def images(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


@contextlib.contextmanager
def configured(model, **fields):
    """`model.config` with `fields` set inside the block, restored after it."""
    old = {k: getattr(model.config, k, None) for k in fields}
    for k, v in fields.items():
        setattr(model.config, k, v)
    try:
        yield model.config
    finally:
        for k, v in old.items():
            setattr(model.config, k, v)
