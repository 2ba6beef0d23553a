"""Command-line arguments of the trainer: the original LLaVA flag names and defaults.

Every flag of haotian-liu/LLaVA's v1.5 launch scripts parses here with the same name and default,
including the ones the original read but never declared (`unfreeze_mm_vision_tower`,
`image_grid_pinpoints`, `mm_patch_merge_type`, `mm_vision_tower_lr`). A few flags that
transformers 5 removed or renamed (`--evaluation_strategy`, `--warmup_ratio`, `--group_by_length`)
are accepted and mapped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Union

import transformers

from llava.train.cpu_distributed import configure_cpu_distributed

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(default="facebook/opt-125m")
    version: Optional[str] = field(
        default="v0", metadata={"help": "Conversation template (e.g. plain for stage 1, v1 for stage 2)."}
    )
    freeze_backbone: bool = field(default=False)
    tune_mm_mlp_adapter: bool = field(
        default=False, metadata={"help": "Stage 1: train only the projector; writes mm_projector.bin."}
    )
    vision_tower: Optional[str] = field(default=None)
    mm_vision_select_layer: Optional[int] = field(default=-1)  # default to the last layer
    pretrain_mm_mlp_adapter: Optional[str] = field(
        default=None, metadata={"help": "mm_projector.bin of stage 1 to start the projector from."}
    )
    mm_projector_type: Optional[str] = field(default="linear")
    mm_use_im_start_end: bool = field(default=False)
    mm_use_im_patch_token: bool = field(default=True)
    mm_patch_merge_type: Optional[str] = field(default="flat")
    mm_vision_select_feature: Optional[str] = field(default="patch")
    unfreeze_mm_vision_tower: bool = field(
        default=False, metadata={"help": "Also train the vision tower (see --mm_vision_tower_lr)."}
    )
    # Video features (LLaVA-NeXT / OneVision): each frame's features pooled, newline tokens placed.
    # None keeps what the starting checkpoint's config says; a new model gets VIDEO_TRAINING_DEFAULTS.
    mm_newline_position: Optional[str] = field(
        default=None,
        metadata={
            "help": "Video newline tokens: grid (after each row of each frame), frame, one_token, no_token "
            "(default: the checkpoint's; a new model: grid, as LLaVA-NeXT)."
        },
    )
    mm_spatial_pool_stride: Optional[int] = field(
        default=None,
        metadata={
            "help": "Video frames' features are pooled by this stride (default: the checkpoint's, else 2)."
        },
    )
    mm_spatial_pool_mode: Optional[str] = field(
        default=None,
        metadata={
            "help": "Video feature pooling: bilinear, average or max (default: the checkpoint's, else bilinear)."
        },
    )


# What LLaVA-NeXT's training writes for a new model when these flags are not given.
VIDEO_TRAINING_DEFAULTS = {
    "mm_newline_position": "grid",
    "mm_spatial_pool_stride": 2,
    "mm_spatial_pool_mode": "bilinear",
}


@dataclass
class DataArguments:
    data_path: str = field(default=None, metadata={"help": "Path to the training data (a JSON list)."})
    lazy_preprocess: bool = field(
        default=False, metadata={"help": "Accepted for compatibility: samples are always tokenised lazily."}
    )
    # Accepted as in the original; training takes it from --vision_tower (llava.data.sample_format).
    is_multimodal: bool = False
    image_folder: Optional[str] = field(default=None)
    image_aspect_ratio: str = field(
        default="square",
        metadata={"help": "square, pad, anyres or anyres_max_N (at most N tiles' worth of tokens)."},
    )
    image_grid_pinpoints: Optional[str] = field(
        default=None,
        metadata={
            "help": "anyres resolutions, e.g. '[(336, 672), (672, 336), (672, 672)]', or a tile grid range "
            "'(1x1),...,(6x6)' (each in units of the tower's image size)."
        },
    )
    video_folder: Optional[str] = field(
        default=None, metadata={"help": "Folder the samples' 'video' paths are relative to."}
    )
    frames_upbound: int = field(
        default=0, metadata={"help": "At most this many frames per video, sampled uniformly (0: no bound)."}
    )
    video_fps: int = field(
        default=1, metadata={"help": "Frames per second taken from a video before the bound."}
    )
    force_sample: bool = field(
        default=False,
        metadata={"help": "Always sample exactly --frames_upbound frames, however short the video."},
    )
    skip_bad_samples: bool = field(
        default=False,
        metadata={
            "help": "Skip (and count) samples whose image is missing/corrupt or whose conversation cannot be "
            "tokenised, instead of stopping with an error that names the sample."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read --data_path (parquet / arrow shards) shard by shard in a seeded stream order, for data "
            "larger than memory or the disk cache: nothing read up front, exact mid-shard resume; no length "
            "grouping, no global shuffle (llava.data.streaming)."
        },
    )
    streaming_window_rows: int = field(
        default=2048,
        metadata={"help": "--streaming: rows shuffled together and held in memory at a time, per process."},
    )
    lengths_cache_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": "Where the per-sample token-length cache goes (default: next to --data_path, or "
            "~/.cache/llava/lengths when that folder is read-only)."
        },
    )


_ALLOWED = {"bits": (4, 8, 16), "quant_type": ("fp4", "nf4"), "lora_bias": ("none", "all", "lora_only")}


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    # transformers reads JSON strings of these into dicts; it declares liger_kernel_config as a dict,
    # which its own parser cannot take from a command line.
    _VALID_DICT_FIELDS = [*transformers.TrainingArguments._VALID_DICT_FIELDS, "liger_kernel_config"]

    cache_dir: Optional[str] = field(default=None)
    optim: str = field(default="adamw_torch")
    remove_unused_columns: bool = field(default=False)
    freeze_mm_mlp_adapter: bool = field(default=False)
    mpt_attn_impl: Optional[str] = field(default="triton")
    liger_kernel_config: Optional[Union[dict, str]] = field(
        default=None,
        metadata={
            "help": "With --use_liger_kernel True: which Liger kernels, as JSON, e.g. '{\"rope\": false}' "
            "(rope, rms_norm, swiglu, cross_entropy; default all but cross_entropy). See llava/train/liger.py."
        },
    )
    model_max_length: int = field(
        default=512,
        metadata={
            "help": "Maximum sequence length. Sequences will be right padded (and possibly truncated)."
        },
    )
    double_quant: bool = field(
        default=True, metadata={"help": "Compress the quantization statistics through double quantization."}
    )
    quant_type: str = field(
        default="nf4", metadata={"help": "Quantization data type to use. Should be one of `fp4` or `nf4`."}
    )
    bits: int = field(default=16, metadata={"help": "How many bits to use (16, 8, or 4 for QLoRA)."})
    lora_enable: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_weight_path: str = ""
    lora_bias: str = "none"
    mm_projector_lr: Optional[float] = None
    mm_vision_tower_lr: Optional[float] = None
    group_by_modality_length: bool = field(default=False)
    loss_chunk_tokens: int = field(
        default=0,
        metadata={
            "help": "N > 0: compute the loss from the labelled positions only, N at a time under activation "
            "checkpointing, never the whole [batch, length, vocab] logits (llava/model/chunked_loss.py; "
            "works with ZeRO-3 and LoRA); the loss and gradients equal the default path's. 0: transformers' loss."
        },
    )
    packing: bool = field(
        default=False,
        metadata={
            "help": "Padding-free training: pack the samples of each step into rows of up to --model_max_length "
            "tokens (image tokens counted), attention kept within each sample; the loss is normalised per "
            "target token over the step, as unpacked. --per_device_train_batch_size still counts samples."
        },
    )
    resume_weights_only: bool = field(
        default=False,
        metadata={
            "help": "Resume from a checkpoint that lacks the optimizer, scheduler or RNG state (e.g. "
            "--save_only_model): its weights and step are restored, Adam starts afresh and the "
            "learning-rate schedule restarts from its warm-up; the log says so. Without it such a "
            "checkpoint is an error (explicit) or skipped (automatic resume). Not with --deepspeed."
        },
    )
    # Flags transformers 5 removed or renamed, still used by existing launch scripts.
    evaluation_strategy: Optional[str] = field(
        default=None, metadata={"help": "Old name of --eval_strategy (still accepted)."}
    )
    warmup_ratio: Optional[float] = field(
        default=None, metadata={"help": "Old form of a fractional --warmup_steps (still accepted)."}
    )
    group_by_length: bool = field(
        default=False,
        metadata={"help": "Group samples of similar token length (plain length-grouped sampler)."},
    )

    def __post_init__(self):
        for name, allowed in _ALLOWED.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} {getattr(self, name)!r} is not supported; use one of {allowed}")
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"--warmup_ratio {self.warmup_ratio} must be in [0, 1)")
            if self.warmup_steps:
                raise ValueError("give --warmup_ratio or --warmup_steps, not both")
            self.warmup_steps = self.warmup_ratio
        if self.group_by_length and self.group_by_modality_length:
            raise ValueError("choose one of --group_by_length and --group_by_modality_length, not both")
        configure_cpu_distributed(self)
        super().__post_init__()
