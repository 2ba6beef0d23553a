"""The vision tower: a Hugging Face vision encoder (CLIP, SigLIP) that returns per-patch features.

One class serves every backend; which transformers classes load the weights is decided by the
``model_type`` in the tower's own ``config.json`` (see ``TOWER_BACKENDS``), never by its name.
The tower is frozen and runs under ``no_grad`` unless one of its parameters requires grad
(``--unfreeze_mm_vision_tower``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType

import torch
import transformers
from torch import nn

from llava.constants import LLAVA_HF_MODEL_TYPES


@dataclass(frozen=True)
class TowerBackend:
    model_class: str
    config_class: str
    processor_class: str
    has_cls_token: bool


_CLIP = TowerBackend("CLIPVisionModel", "CLIPVisionConfig", "CLIPImageProcessor", True)
_SIGLIP = TowerBackend("SiglipVisionModel", "SiglipVisionConfig", "SiglipImageProcessor", False)
TOWER_BACKENDS = MappingProxyType(
    {"clip_vision_model": _CLIP, "clip": _CLIP, "siglip_vision_model": _SIGLIP, "siglip": _SIGLIP}
)
SELECT_FEATURES = ("patch", "cls_patch")
# State-dict keys of a vision model (with or without the ``vision_model.`` level of older layouts).
_LAYER_KEY = re.compile(r"^(?:vision_model\.)?encoder\.layers\.(\d+)\.")
_UNUSED_KEY = re.compile(r"^(?:vision_model\.)?(?:post_layernorm|head)\.")


def processor_class(backend: TowerBackend) -> type:
    """The PIL/numpy image processor (transformers 5's `CLIPImageProcessorPil`, ...): the one the
    original LLaVA trained and evaluated with, pixel for pixel, and the one the training loader
    reproduces. transformers' default class uses torchvision when it is installed, whose resize
    gives slightly different pixels. Without such a class, transformers' default one."""
    return getattr(transformers, backend.processor_class + "Pil", None) or getattr(
        transformers, backend.processor_class
    )


def _read_tower_config(name: str) -> dict:
    try:
        cfg, _ = transformers.PretrainedConfig.get_config_dict(str(name))
    except (OSError, ValueError) as err:
        raise ValueError(
            f"vision tower {str(name)!r} (mm_vision_tower / --vision_tower) could not be read: {err}. "
            "Give a local folder holding a CLIP or SigLIP vision model (config.json + weights + "
            "preprocessor_config.json) or a hub name present in the local cache; for a saved LLaVA "
            "checkpoint, override it with from_pretrained(path, mm_vision_tower='/local/tower')."
        ) from err
    return cfg


def _backend_for(model_type, name: str) -> TowerBackend:
    if model_type not in TOWER_BACKENDS:
        raise ValueError(
            f"unknown vision tower type {model_type!r} in {str(name)!r} (mm_vision_tower / --vision_tower); "
            f"valid model_type values: {sorted(TOWER_BACKENDS)}"
        )
    return TOWER_BACKENDS[model_type]


def _tower_source(name: str) -> tuple[TowerBackend, dict | None]:
    """``(backend, vision_config)``: vision_config is the nested dict of a llava-hf folder, else None."""
    cfg = _read_tower_config(name)
    nested = cfg.get("vision_config") if cfg.get("model_type") in LLAVA_HF_MODEL_TYPES else None
    if nested is not None and not isinstance(nested, dict):
        nested = None
    return _backend_for((nested or cfg).get("model_type"), name), nested


def resolve_tower_backend(name: str) -> TowerBackend:
    """The backend for the tower folder or hub name ``name``, from its config's ``model_type``.

    A llava-hf folder (``model_type`` llava with a ``vision_config``) counts as a tower too.
    """
    return _tower_source(name)[0]


def _load_from_llava_hf(name: str, backend: TowerBackend, vision_config: dict):
    """The vision model inside a llava-hf checkpoint (``LlavaForConditionalGeneration`` folder)."""
    from ..checkpoint import fit_tower_keys, read_checkpoint_tensors

    cfg = getattr(transformers, backend.config_class).from_dict(vision_config)
    model = getattr(transformers, backend.model_class)(cfg)
    stored = read_checkpoint_tensors(name, "model.vision_tower.") or read_checkpoint_tensors(
        name, "vision_tower."
    )
    stored = fit_tower_keys(stored, model.state_dict().keys())
    model.load_state_dict(stored, strict=True)
    return model.eval()


class VisionTower(nn.Module):
    """Wraps ``<Backend>VisionModel`` as ``self.vision_tower`` (checkpoint keys ``vision_tower.vision_tower.*``).

    ``args`` is anything with ``mm_vision_select_layer`` (default -2), ``mm_vision_select_feature``
    (``patch`` drops CLS, ``cls_patch`` keeps it) and optionally ``unfreeze_mm_vision_tower``.
    With ``delay_load`` nothing is read until ``load_model()``.
    """

    def __init__(self, vision_tower: str, args, delay_load: bool = False):
        super().__init__()
        self.is_loaded = False
        self.vision_tower_name = str(vision_tower)
        layer = getattr(args, "mm_vision_select_layer", None)
        self.select_layer = -2 if layer is None else int(layer)
        self.select_feature = getattr(args, "mm_vision_select_feature", None) or "patch"
        if self.select_feature not in SELECT_FEATURES:
            raise ValueError(
                f"unknown mm_vision_select_feature {self.select_feature!r} (--mm_vision_select_feature); "
                f"valid: {list(SELECT_FEATURES)}"
            )
        self.unfreeze = bool(getattr(args, "unfreeze_mm_vision_tower", False))
        self._cfg_only = None
        if not delay_load:
            self.load_model()

    def load_model(self, device_map=None) -> None:
        if self.is_loaded:
            return
        backend, nested = _tower_source(self.vision_tower_name)
        image_processor = processor_class(backend).from_pretrained(self.vision_tower_name)
        if nested is not None:
            model = _load_from_llava_hf(self.vision_tower_name, backend, nested)
        else:
            kwargs = {"device_map": device_map} if device_map is not None else {}
            model = getattr(transformers, backend.model_class).from_pretrained(
                self.vision_tower_name, **kwargs
            )
        self.adopt(model, image_processor, backend)

    def adopt(self, vision_model, image_processor, backend: TowerBackend | None = None) -> None:
        """Use an already built vision model (e.g. from a llava-hf checkpoint) as this tower."""
        if backend is None:
            backend = _backend_for(vision_model.config.model_type, self.vision_tower_name)
        self.backend = backend
        self.image_processor = image_processor
        self.vision_tower = vision_model
        self.vision_tower.requires_grad_(self.unfreeze)
        self.is_loaded = True

    def feature_select(self, outputs) -> torch.Tensor:
        feats = outputs.hidden_states[self.select_layer]
        if self.select_feature == "patch" and self.backend.has_cls_token:
            feats = feats[:, 1:]
        return feats

    def unused_weight_names(self) -> frozenset[str]:
        """Keys of the loaded vision model's state dict that the selected features never depend on.

        The features are ``hidden_states[mm_vision_select_layer]``: the encoder layers after that one,
        ``post_layernorm`` (applied to the last hidden state only) and SigLIP's pooling ``head`` play no
        part. A checkpoint may leave exactly these out (LLaVA-NeXT stores its SigLIP tower without the
        last layer and the head).
        """
        layers = self.config.num_hidden_layers
        index = self.select_layer if self.select_layer >= 0 else layers + 1 + self.select_layer
        if not 0 <= index <= layers:
            raise ValueError(
                f"mm_vision_select_layer {self.select_layer} is out of range for the {layers}-layer tower "
                f"{self.vision_tower_name!r}: valid {-layers - 1}..{layers}"
            )
        unused = set()
        for key in self.vision_tower.state_dict():
            match = _LAYER_KEY.match(key)
            if (match and int(match.group(1)) >= index) or _UNUSED_KEY.match(key):
                unused.add(key)
        return frozenset(unused)

    def load_stored_weights(self, stored: dict[str, torch.Tensor], source: str) -> None:
        """Apply weights stored for this tower (keys in the loaded vision model's layout).

        Every weight the features depend on must be there; only ``unused_weight_names()`` may be
        missing (they keep the tower folder's values). Anything else missing, or any key that fits no
        weight, is a ValueError naming ``source``.
        """
        expected = self.vision_tower.state_dict()
        missing = sorted(set(expected) - set(stored) - self.unused_weight_names())
        unexpected = sorted(set(stored) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{source} do not fit the tower {self.vision_tower_name!r} (mm_vision_tower): missing "
                f"{missing[:5]}, unexpected {unexpected[:5]} (only the layers after mm_vision_select_layer "
                f"{self.select_layer}, post_layernorm and head may be left out)"
            )
        wrong = [k for k, v in stored.items() if tuple(v.shape) != tuple(expected[k].shape)]
        if wrong:
            raise ValueError(
                f"{source}: {wrong[0]} has shape {tuple(stored[wrong[0]].shape)}, the tower "
                f"{self.vision_tower_name!r} (mm_vision_tower) expects {tuple(expected[wrong[0]].shape)}"
            )
        self.vision_tower.load_state_dict(stored, strict=False)

    @property
    def trainable(self) -> bool:
        return self.is_loaded and any(p.requires_grad for p in self.vision_tower.parameters())

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype == torch.uint8:
            pixels = self.normalise_levels(pixels.to(self.device))
        out = self.vision_tower(pixels.to(device=self.device, dtype=self.dtype), output_hidden_states=True)
        return self.feature_select(out)

    def normalise_levels(self, levels: torch.Tensor) -> torch.Tensor:
        """8-bit pixels [..., 3, H, W] (the training loader's) -> the float32 values this tower's
        image processor gives, computed on the pixels' device."""
        from llava.images.transform import normalisation_table, normalise_levels

        processor = getattr(self, "image_processor", None)
        cached = getattr(self, "_level_table", None)  # (processor, table), built once per processor
        if cached is None or cached[0] is not processor:
            values = normalisation_table(processor)
            if values is None:
                raise ValueError(
                    f"vision tower {self.vision_tower_name!r} was given uint8 pixels but its image processor "
                    "has no rescale/normalise settings to turn them into model inputs; pass normalised floats"
                )
            cached = self._level_table = (processor, torch.from_numpy(values))
        return normalise_levels(levels, cached[1])

    def forward(self, images):
        """``images``: [B,3,H,W] -> [B,N,C]; or a list of [3,H,W] -> list of [1,N,C] (as the original)."""
        if not self.is_loaded:
            raise RuntimeError(
                f"vision tower {self.vision_tower_name!r} is not loaded; call model.get_vision_tower().load_model()"
            )
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            if isinstance(images, list):
                return [self._encode(img.unsqueeze(0)) for img in images]
            return self._encode(images)

    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.dtype if self.is_loaded else torch.float32

    @property
    def device(self) -> torch.device:
        return self.vision_tower.device if self.is_loaded else torch.device("cpu")

    @property
    def config(self):
        if self.is_loaded:
            return self.vision_tower.config
        if self._cfg_only is None:
            backend, nested = _tower_source(self.vision_tower_name)
            config_cls = getattr(transformers, backend.config_class)
            self._cfg_only = (
                config_cls.from_dict(nested) if nested else config_cls.from_pretrained(self.vision_tower_name)
            )
        return self._cfg_only

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2

    @property
    def num_image_tokens(self) -> int:
        """Feature vectors per image: the patches, plus CLS for ``cls_patch`` on towers that have one."""
        backend = getattr(self, "backend", None) or resolve_tower_backend(self.vision_tower_name)
        return self.num_patches + int(self.select_feature == "cls_patch" and backend.has_cls_token)
