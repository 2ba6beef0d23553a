"""Import path of the original LLaVA (``CLIPVisionTower``); the tower class itself serves CLIP and SigLIP."""

from .vision_tower import VisionTower as CLIPVisionTower

__all__ = ["CLIPVisionTower"]
