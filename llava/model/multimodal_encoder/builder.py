"""``build_vision_tower``: the tower named by ``mm_vision_tower`` (config) or ``vision_tower`` (train args)."""

from __future__ import annotations

from .vision_tower import TOWER_BACKENDS, VisionTower


def build_vision_tower(vision_tower_cfg, **kwargs) -> VisionTower:
    name = getattr(vision_tower_cfg, "mm_vision_tower", None) or getattr(
        vision_tower_cfg, "vision_tower", None
    )
    if not name:
        raise ValueError(
            "no vision tower given: set --vision_tower (training) or mm_vision_tower (config) to a "
            f"folder or hub name of a vision model with model_type in {sorted(TOWER_BACKENDS)}"
        )
    return VisionTower(name, args=vision_tower_cfg, **kwargs)
