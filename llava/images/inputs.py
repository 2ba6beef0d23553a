"""The pixels of an inference request's visuals (images and videos) and what each one costs in tokens.

Shared by serving (CLI, model worker) and the evaluation runner, so that every entry point feeds the
model what training fed it (the LLaVA-NeXT / OneVision rules):

- exactly one image: by the model's `image_aspect_ratio` (square / pad -> [3,H,W]; anyres and
  anyres_max_N -> [1+K,3,H,W], the base image and the K tiles of its best grid), as `process_images`;
- several images: each one padded to a square at the base resolution -> [3,H,W];
- a video (a list of frames): every frame through the processor's plain preprocess (resize + crop,
  no padding) -> [F,3,H,W].

    visuals = [img_a, img_b]                           # PIL images, or a list of PIL frames per video
    pixels, sizes, modalities = prepare_visual_list(visuals, processor, model.config)
    model.generate(ids, images=pixels, image_sizes=sizes, modalities=modalities)
    costs = visual_token_counts(visuals, model.config, **tower_geometry(tower))  # before any pixel work

`pixels` is a tensor [N,3,H,W] when every visual is one single-crop image (the LLaVA-1.5 path),
else a list of N tensors. `image_sizes` holds (width, height) per visual (a video: its first frame),
`modalities` "image" | "video" per visual. The token counts come from `llava.images.grid`, the one
source the model's merge agrees with.

Frames of a video file or a frames folder: `load_video(path, model_cfg)` samples them as training
does (the model config's `video_fps` frames per second, default 1; at most `frames_upbound`, 32
when the config has none, 0 for no bound; `force_sample`), and `sample_frames(n, model_cfg)` says
which of n frames a client sent are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

DEFAULT_FRAMES_UPBOUND = 32  # frames of a video when the model's config does not say
DEFAULT_POOL_STRIDE = 2
DEFAULT_POOL_MODE = "bilinear"
DEFAULT_NEWLINE_POSITION = "one_token"


def is_video(visual) -> bool:
    """A visual given as a list/tuple of frames is a video; anything else is one image."""
    return isinstance(visual, (list, tuple))


def _rgb(image):
    return image if image.mode == "RGB" else image.convert("RGB")


def video_pixels(frames: Sequence, image_processor):
    """[F,3,H,W]: every frame through the processor's plain preprocess (resize + crop, no padding)."""
    if not frames:
        raise ValueError("a video needs at least one frame")
    return image_processor.preprocess([_rgb(f) for f in frames], return_tensors="pt")["pixel_values"]


def prepare_visual_list(visuals: Sequence, image_processor, model_cfg):
    """(pixels, image_sizes, modalities) of `visuals` in order (see the module docstring); each visual is
    a PIL image or a list of PIL frames (a video). (None, [], []) when there are none."""
    import torch

    from llava.images.process import process_images

    if not visuals:
        return None, [], []
    images = [v for v in visuals if not is_video(v)]
    if len(images) == 1:
        single = process_images([_rgb(images[0])], image_processor, model_cfg)
        image_tensors = [single[0]]
    elif images:  # several images: each padded to a square at base resolution (OneVision / NeXT)
        padded = process_images([_rgb(im) for im in images], image_processor, _PAD)
        image_tensors = list(padded)
    else:
        image_tensors = []
    pixels, sizes, modalities = [], [], []
    it = iter(image_tensors)
    for v in visuals:
        if is_video(v):
            pixels.append(video_pixels(v, image_processor))
            sizes.append(tuple(v[0].size))
            modalities.append("video")
        else:
            pixels.append(next(it))
            sizes.append(tuple(v.size))
            modalities.append("image")
    if all(m == "image" and p.ndim == 3 for m, p in zip(modalities, pixels)) and all(
        p.shape == pixels[0].shape for p in pixels
    ):
        return torch.stack(pixels), sizes, modalities
    return pixels, sizes, modalities


_PAD = SimpleNamespace(image_aspect_ratio="pad", image_grid_pinpoints=None)


def prepare_visuals(images: Sequence, videos: Sequence[Sequence], image_processor, model_cfg):
    """`prepare_visual_list` of the images (in order) followed by the videos (each a list of frames)."""
    return prepare_visual_list([*images, *(list(v) for v in videos)], image_processor, model_cfg)


# ------------------------------------------------------------------------------------------- token counts
def tower_geometry(tower) -> dict:
    """The vision tower's numbers the token counts need: patches per side, crop size, tokens per crop."""
    return {
        "side": int(tower.num_patches_per_side),
        "crop_size": int(tower.image_size),
        "tokens_per_crop": int(getattr(tower, "num_image_tokens", 0) or tower.num_patches),
    }


def _cfg(model_cfg, name, default):
    value = getattr(model_cfg, name, None)
    return default if value is None else value


def visual_token_counts(visuals: Sequence, model_cfg, *, side, crop_size, tokens_per_crop) -> list[int]:
    """Tokens the LLM sees for each visual (a PIL image, or a list of frames: a video) under the rules of
    `prepare_visual_list`, computed from the image sizes and frame counts alone (before any pixel is
    processed) by llava.images.grid.sample_visual_tokens, the count training's length budget uses."""
    from llava.images import grid

    return grid.sample_visual_tokens(
        [("video", len(v)) if is_video(v) else ("image", tuple(v.size)) for v in visuals],
        image_aspect_ratio=getattr(model_cfg, "image_aspect_ratio", None),
        grid_pinpoints=getattr(model_cfg, "image_grid_pinpoints", None),
        merge_type=_cfg(model_cfg, "mm_patch_merge_type", "flat"),
        side=side,
        crop_size=crop_size,
        tokens_per_crop=tokens_per_crop,
        stride=int(_cfg(model_cfg, "mm_spatial_pool_stride", DEFAULT_POOL_STRIDE)),
        pool_mode=_cfg(model_cfg, "mm_spatial_pool_mode", DEFAULT_POOL_MODE),
        newline_position=_cfg(model_cfg, "mm_newline_position", DEFAULT_NEWLINE_POSITION),
    )


# ------------------------------------------------------------------------------------------- video frames
def frames_upbound(model_cfg) -> int:
    """At most this many frames per video (config `frames_upbound`; 32 when missing; 0: no limit)."""
    value = getattr(model_cfg, "frames_upbound", None)
    return DEFAULT_FRAMES_UPBOUND if value is None else int(value)


def sample_frames(total: int, model_cfg, fps: float | None = None) -> list[int]:
    """Indices of the frames kept of `total` (fps None: frames already sampled, e.g. sent by a client)."""
    from llava.images.video import sample_frame_indices

    return list(
        sample_frame_indices(
            int(total),
            fps,
            frames_upbound=frames_upbound(model_cfg),
            video_fps=float(getattr(model_cfg, "video_fps", None) or 1),
            force_sample=bool(getattr(model_cfg, "force_sample", False)),
        )
    )


def load_video(path, model_cfg) -> list:
    """The sampled frames (RGB PIL images) of a video file or a folder of frame images; VideoError
    (a ValueError naming the file) when it cannot be read."""
    from llava.images.video import load_video_frames, probe_video

    info = probe_video(path)
    return load_video_frames(path, sample_frames(info.frames, model_cfg, info.fps))
