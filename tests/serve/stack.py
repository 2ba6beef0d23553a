"""Constants and the tiny-checkpoint builder shared by the serving tests (fixtures: conftest.py)."""

from __future__ import annotations

import os
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WATERVIEW = REPO / "llava" / "serve" / "examples" / "waterview.jpg"
MODEL_A = "llava-v1.5-tiny"
MODEL_B = "llava-v1.5-tiny-b"
API_KEY = "sk-test-serve-123"
EXPIRATION = 3.0  # seconds without heartbeat before the controller drops a worker (default 30)


def build_tiny_llava_checkpoint(kit, out: Path, seed: int = 0, image_aspect_ratio: str = "pad") -> Path:
    """A tiny LLaVA-1.5-style checkpoint folder (LLaMA LM + CLIP tower + 2-layer MLP projector)."""
    import torch
    from transformers import AutoTokenizer

    from llava.model import LlavaLlamaForCausalLM

    if (out / "config.json").exists():
        return out
    model = LlavaLlamaForCausalLM.from_pretrained(kit.llm, dtype=torch.float32)
    torch.manual_seed(seed)
    model.get_model().initialize_vision_modules(
        types.SimpleNamespace(
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
    )
    # As a released LLaVA-1.5 checkpoint's config.json says.
    model.config.image_aspect_ratio = image_aspect_ratio
    model.config.mm_use_im_start_end = False
    model.config.mm_use_im_patch_token = False
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(kit.llm).save_pretrained(tmp)
    os.replace(tmp, out)
    return out
