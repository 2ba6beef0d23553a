"""Constants and the tiny-checkpoint builder shared by the serving tests (fixtures: conftest.py)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WATERVIEW = REPO / "llava" / "serve" / "examples" / "waterview.jpg"
MODEL_A = "llava-v1.5-tiny"
MODEL_B = "llava-v1.5-tiny-b"
API_KEY = "sk-test-serve-123"
EXPIRATION = 3.0  # seconds without heartbeat before the controller drops a worker (default 30)


def build_tiny_llava_checkpoint(kit, out: Path, seed: int = 0, image_aspect_ratio: str = "pad") -> Path:
    """A tiny LLaVA-1.5-style checkpoint folder (LLaMA LM + CLIP tower + 2-layer MLP projector)."""
    from llava.testing.tiny import save_tiny_llava

    return save_tiny_llava(kit, out, image_aspect_ratio=image_aspect_ratio, seed=seed)
