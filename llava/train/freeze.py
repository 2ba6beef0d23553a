"""Which parts of the model train: the per-stage freeze policy, the one place that sets `requires_grad`.

The model names its parts (llava.model.parts: vision tower, projector, image_newline, LLM, head); the
flags choose what trains, as the original LLaVA does:

    stage 2 (default)            the LLM (embeddings, layers, norms, lm_head) and the projector
    stage 1 --tune_mm_mlp_adapter  the projector only; with --mm_use_im_start_end also the input
                                 embeddings (the new <im_start>/<im_end> rows; lm_head stays frozen)
    --freeze_mm_mlp_adapter      the projector frozen
    --unfreeze_mm_vision_tower   the vision tower trains (it is frozen otherwise, in every stage)
    --freeze_backbone            the decoder stack frozen (lm_head still trains, as the original)
    --lora_enable, --bits 4|8    the LLM's weights as PEFT marked them: the LoRA adapters (and biases
                                 per --lora_bias) train, the rest is frozen
    image_newline (*_unpad)      frozen in stage 1; otherwise it trains when this run created it
                                 (random), and goes with the LLM when it came with the checkpoint

PEFT (`get_peft_model`, `prepare_model_for_kbit_training`) marks the LLM's weights itself before;
`apply_freeze_policy` runs once, after the model is set up (for the image_newline rule it is told which
parts were created), sets every other part, and logs what trains and what is frozen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from llava.model.parts import IMAGE_NEWLINE, PART_NAMES, llava_parts, parameter_parts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FreezePolicy:
    vision: bool = False  # --vision_tower given: the multimodal flags apply
    projector_only: bool = False  # stage 1, --tune_mm_mlp_adapter
    freeze_projector: bool = False  # --freeze_mm_mlp_adapter
    train_vision_tower: bool = False  # --unfreeze_mm_vision_tower
    freeze_backbone: bool = False  # --freeze_backbone
    llm_marked_by_peft: bool = False  # --lora_enable or --bits 4/8
    train_input_embeddings: bool = False  # stage 1 with <im_start>/<im_end>
    new_parts: frozenset = frozenset()  # parts this run created (initialize_vision_modules' answer)

    @classmethod
    def from_args(cls, model_args, training_args, new_parts=()) -> FreezePolicy:
        vision = model_args.vision_tower is not None
        projector_only = vision and bool(model_args.tune_mm_mlp_adapter)
        return cls(
            vision=vision,
            projector_only=projector_only,
            freeze_projector=vision and bool(training_args.freeze_mm_mlp_adapter),
            train_vision_tower=vision and bool(model_args.unfreeze_mm_vision_tower),
            freeze_backbone=bool(model_args.freeze_backbone),
            llm_marked_by_peft=bool(training_args.lora_enable) or training_args.bits in (4, 8),
            train_input_embeddings=projector_only and bool(model_args.mm_use_im_start_end),
            new_parts=frozenset(new_parts),
        )

    def describe(self) -> str:
        if self.projector_only:
            return "stage 1: projector only" + (" + input embeddings" if self.train_input_embeddings else "")
        if self.llm_marked_by_peft:
            return "LLM as PEFT marked it (LoRA / k-bit)"
        return "LLM frozen (--freeze_backbone)" if self.freeze_backbone else "full"


def apply_freeze_policy(model, policy: FreezePolicy) -> dict[str, str]:
    """Set `requires_grad` on `model` (a LLaVA model, maybe PEFT-wrapped) by `policy`.

    Returns {part: "train" | "frozen" | "partial"} for the parts the model has, and logs it.
    """
    parts = llava_parts(model)
    if policy.projector_only:
        model.requires_grad_(False)
    elif not policy.llm_marked_by_peft:
        if parts.head is not None:
            parts.head.requires_grad_(True)  # also with --freeze_backbone, as the original
        parts.llm.requires_grad_(not policy.freeze_backbone)  # a head tied to the embeddings goes with them
    if policy.vision:
        if parts.projector is not None:
            parts.projector.requires_grad_(not policy.freeze_projector)
        if parts.vision_tower is not None:
            parts.vision_tower.requires_grad_(policy.train_vision_tower)
        newline = parts.image_newline
        if newline is not None and IMAGE_NEWLINE in policy.new_parts and not policy.projector_only:
            newline.requires_grad_(True)
    if policy.train_input_embeddings:
        parts.embeddings.requires_grad_(True)
        if parts.head is not None:  # a head tied to the embeddings stays frozen, as the original
            parts.head.requires_grad_(False)
    summary = part_states(model)
    trained = [p for p, s in summary.items() if s != "frozen"]
    frozen = [p for p, s in summary.items() if s == "frozen"]
    logger.info(
        "freeze policy (%s): training %s; frozen %s",
        policy.describe(),
        ", ".join(f"{p} ({summary[p]})" if summary[p] == "partial" else p for p in trained) or "nothing",
        ", ".join(frozen) or "nothing",
    )
    return summary


def part_states(model) -> dict[str, str]:
    """{part: "train" | "frozen" | "partial"} by the `requires_grad` of each part's parameters."""
    flags: dict[str, set[bool]] = {}
    params = dict(model.named_parameters())
    for name, part in parameter_parts(model).items():
        flags.setdefault(part, set()).add(bool(params[name].requires_grad))
    states = {True: "train", False: "frozen"}
    return {
        part: states[next(iter(flags[part]))] if len(flags[part]) == 1 else "partial"
        for part in PART_NAMES
        if part in flags
    }
