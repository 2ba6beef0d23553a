"""Helpers shared by the model tests: a tiny LLaVA built from the tiny kit."""

from __future__ import annotations

import types

import torch

from llava.constants import IMAGE_TOKEN_INDEX


def vision_args(kit, **overrides):
    args = dict(
        vision_tower=str(kit.vision),
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        mm_projector_type="mlp2x_gelu",
        mm_patch_merge_type="flat",
        pretrain_mm_mlp_adapter=None,
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        tune_mm_mlp_adapter=False,
    )
    args.update(overrides)
    return types.SimpleNamespace(**args)


def build_tiny_llava(kit, cls=None, seed=0, llm_path=None, **overrides):
    """A LLaVA model from the kit's plain LLM, vision modules initialised as training does."""
    from llava.model import LlavaLlamaForCausalLM

    cls = cls or LlavaLlamaForCausalLM
    model = cls.from_pretrained(llm_path or kit.llm, dtype=torch.float32)
    torch.manual_seed(seed)
    model.get_model().initialize_vision_modules(vision_args(kit, **overrides))
    # A random projector maps to tiny vectors; scale it so images change the logits visibly.
    with torch.no_grad():
        for p in model.get_model().mm_projector.parameters():
            p.mul_(4.0)
    return model.eval()


def prompt_ids(*parts):
    """Ids from ints and 'IMG' markers, e.g. prompt_ids(1, 300, 'IMG', 400)."""
    return torch.tensor([[IMAGE_TOKEN_INDEX if p == "IMG" else p for p in parts]])


def images(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)
