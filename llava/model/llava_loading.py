"""Loading and saving of a LLaVA model: transformers' own, then the vision tower (a mixin of
``LlavaMetaForCausalLM``, llava.model.llava_arch).

The LLM's weights load through ``from_pretrained``; the tower is built from ``mm_vision_tower`` and
loaded after, and tower weights stored in the checkpoint (``model.vision_tower.vision_tower.*``) win
(layers after the selected one, post_layernorm and head may be absent, as in LLaVA-NeXT's SigLIP).
Saving writes the tower's weights under the original names.
"""

from __future__ import annotations

import logging

from .checkpoint import fit_tower_keys, read_checkpoint_tensors, to_original_tower_layout

logger = logging.getLogger(__name__)

_HUB_KWARGS = ("revision", "cache_dir", "token", "subfolder")


class LlavaLoading:
    """``from_pretrained`` / ``attach_vision_tower`` / ``save_pretrained`` of a LLaVA model."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, load_vision_tower: bool = True, **kwargs):
        """``transformers`` loading, then the vision tower from ``mm_vision_tower``.

        Tower weights stored in the checkpoint (``model.vision_tower.vision_tower.*``) win over
        the tower folder's. ``load_vision_tower=False`` leaves the tower unloaded.
        """
        hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if load_vision_tower:
            model.attach_vision_tower(pretrained_model_name_or_path, **hub_kwargs)
        return loaded

    def attach_vision_tower(self, checkpoint=None, write_weights=None, **hub_kwargs) -> None:
        """Load the tower (if the config has one), place it beside the embeddings, apply checkpoint weights.

        `write_weights(module, load)` runs `load()`, which writes into the tower's parameters; the
        trainer passes ZeRO-3's gathered write (llava.train.zero.load_into_module). Without it, under
        ZeRO-3 (partitioned parameters) the stored weights are left for the trainer to apply.
        """
        tower = self.get_vision_tower()
        if tower is None:
            return
        if not tower.is_loaded:
            tower.load_model()
        ref = self.get_input_embeddings().weight
        tower.to(device=ref.device if ref.device.type != "meta" else None)
        if ref.is_floating_point():
            tower.to(dtype=ref.dtype)
        if checkpoint is None:
            return
        prefix = f"{self.base_model_prefix}.vision_tower.vision_tower."
        stored = read_checkpoint_tensors(checkpoint, prefix, **hub_kwargs)
        if not stored:
            return
        from transformers.integrations import is_deepspeed_zero3_enabled

        if write_weights is None and is_deepspeed_zero3_enabled():
            logger.info("ZeRO-3: vision tower weights stored in %s are applied by the trainer", checkpoint)
            return
        stored = fit_tower_keys(stored, tower.vision_tower.state_dict().keys())

        def load():
            # Layers after the selected one, post_layernorm and head may be absent (LLaVA-NeXT's SigLIP).
            tower.load_stored_weights(stored, f"vision tower weights in {checkpoint}")

        if write_weights is None:
            load()
        else:
            write_weights(tower.vision_tower, load)
        logger.info("vision tower weights applied from %s", checkpoint)

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        """``transformers`` saving, with the tower's weights under their original names
        (``model.vision_tower.vision_tower.vision_model.*``)."""
        tower = self.get_vision_tower()
        if tower is not None and tower.is_loaded:
            state_dict = self.state_dict() if state_dict is None else state_dict
            state_dict = to_original_tower_layout(
                state_dict, f"{self.base_model_prefix}.vision_tower.vision_tower."
            )
        return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
