"""The validator's visual side: training's flags for how images and videos become tokens, and the file checks.

    fmt = sample_format_from_flags(args)      # the SampleFormat training builds from the same flags
    found = check_visuals(samples, indices, fmt, image_folder, video_folder, check="header")
    found.problems[i]   # (category, message) of sample i's first unusable image or video
    found.costs[i]      # tokens per visual of sample i, as the dataset counts them

The flags (`add_format_flags`) have training's names and defaults (llava/train/arguments.py), so the
flags of a training command can be pasted; with `--vision_tower` the tower's config gives the crop size,
the patch grid and the tokens per crop, as `SampleFormat.for_model` takes them from the loaded tower.

Every image of a sample is checked at the `--image_check` level (llava.data.tools.image_check). A video
(a file or a folder of frames) is always probed, as the dataset does before training (its frame count
decides its tokens): a missing one is "missing_video"; no video stream, a still image, no frames or an
unreadable first frame is "corrupt_video". With "header" the sampled frames of a frames folder are
opened too, and with "decode" the frames training samples (`SampleFormat.frame_indices`) are decoded
(llava.images.video.load_video_frames, what training's loader calls).
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from llava.data.sample_format import SampleFormat, template_for_version
from llava.data.tools.image_check import IMAGE_CHECKS, embedded_image_problem, image_problem
from llava.data.visuals import IMAGE, VIDEO, Visual, VisualError, VisualInfo, probe, sample_visuals

DEFAULT_CROP_SIZE, DEFAULT_PATCH_SIZE = 336, 14  # CLIP ViT-L/14-336


# ------------------------------------------------------------------------------ flags -> SampleFormat
def _bool(value) -> bool:
    """A bool flag as HfArgumentParser reads it: `--flag`, `--flag True`, `--flag false`, `--flag 0`."""
    text = str(value).lower()
    if text in ("true", "t", "yes", "y", "1"):
        return True
    if text in ("false", "f", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {value!r}")


def add_visual_flags(p: argparse.ArgumentParser) -> None:
    """--video_folder, the flags that make the SampleFormat (training's names and defaults) and --image_check."""
    add = p.add_argument
    add(
        "--video_folder",
        default=None,
        help="as in training: the folder 'video' names are relative to (default: --image_folder)",
    )
    add("--mm_use_im_start_end", type=_bool, nargs="?", const=True, default=False, help="as in training")
    add("--image_aspect_ratio", default="square", help="as in training: square, pad, anyres or anyres_max_N")
    add(
        "--image_grid_pinpoints",
        default=None,
        help="as in training (anyres): '[(336, 672), (672, 336), (672, 672)]' or '(1x1),...,(6x6)'",
    )
    add("--mm_patch_merge_type", default="flat", help="as in training: flat, spatial or spatial_unpad")
    add(
        "--mm_newline_position",
        default="grid",
        help="as in training (videos): grid, frame, one_token, no_token",
    )
    add("--mm_spatial_pool_stride", type=int, default=2, help="as in training (videos)")
    add(
        "--mm_spatial_pool_mode", default="bilinear", help="as in training (videos): bilinear, average or max"
    )
    add(
        "--frames_upbound",
        type=int,
        default=0,
        help="as in training: at most this many frames per video (0: all)",
    )
    add("--video_fps", type=int, default=1, help="as in training: frames per second taken from a video")
    add(
        "--force_sample",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="as in training: always sample --frames_upbound frames",
    )
    add(
        "--vision_tower",
        default=None,
        help="the tower folder (or cached hub name) training uses: its config gives the crop size, patch grid "
        "and tokens per crop (else --image_crop_size / --patch_size)",
    )
    add(
        "--mm_vision_select_feature",
        default="patch",
        help="as in training: patch, or cls_patch (one more token)",
    )
    add(
        "--image_crop_size",
        type=int,
        default=None,
        help="without --vision_tower: the tower's input size (336)",
    )
    add("--patch_size", type=int, default=None, help="without --vision_tower: the tower's patch size (14)")
    add(
        "--num_image_tokens",
        type=int,
        default=None,
        help="tokens per crop (default: the tower's, or (crop/patch)^2: 576 for CLIP-L/336); given alone, "
        "its square root is the patch grid",
    )
    add(
        "--image_check",
        choices=IMAGE_CHECKS,
        default="header",
        help="exists: the file only; header (default): opened and verified, which finds files that are no "
        "image and truncated PNGs; decode: every pixel decoded, as training does (slow). Videos are always "
        "probed (frame count); header also opens a frames folder's sampled frames, decode decodes them",
    )
    add("--check_images", "--decode_images", dest="decode_images", action="store_true",
        help="--image_check decode (--check_images: its old name)")  # fmt: skip


def tower_geometry(vision_tower: str, select_feature: str = "patch") -> tuple[int, int, int]:
    """(crop size, patches per side, tokens per crop) of the tower at `vision_tower`, read from its config
    as training's tower reports them (nothing is loaded but the config)."""
    from types import SimpleNamespace

    from llava.model.multimodal_encoder.vision_tower import VisionTower

    tower = VisionTower(
        vision_tower, SimpleNamespace(mm_vision_select_feature=select_feature), delay_load=True
    )
    return (
        int(tower.image_size),
        int(tower.num_patches_per_side),
        int(tower.num_image_tokens or tower.num_patches),
    )


def sample_format_from_flags(args: argparse.Namespace) -> SampleFormat:
    """The SampleFormat training would build from these flags (see the module docstring)."""
    tokens = args.num_image_tokens
    if args.vision_tower:
        if args.image_crop_size is not None or args.patch_size is not None:
            raise ValueError(
                "give --vision_tower or --image_crop_size/--patch_size, not both (the tower says both)"
            )
        crop, side, tower_tokens = tower_geometry(args.vision_tower, args.mm_vision_select_feature)
        if tokens is not None and tokens != tower_tokens:
            raise ValueError(
                f"--num_image_tokens {tokens} but the tower {args.vision_tower} gives {tower_tokens} per crop"
            )
        tokens = tower_tokens
    else:
        crop = args.image_crop_size or DEFAULT_CROP_SIZE
        patch = args.patch_size or DEFAULT_PATCH_SIZE
        if crop % patch:
            raise ValueError(f"--image_crop_size {crop} is not a multiple of --patch_size {patch}")
        side = crop // patch
        if tokens is None:
            tokens = side * side + int(args.mm_vision_select_feature == "cls_patch")
        elif args.patch_size is None and args.image_crop_size is None:
            side = 0  # the SampleFormat takes the square root of --num_image_tokens
    fmt = SampleFormat(
        template_for_version(args.version),  # an unknown --version: ValueError listing the names
        args.model_max_length,
        is_multimodal=True,
        mm_use_im_start_end=args.mm_use_im_start_end,
        image_aspect_ratio=args.image_aspect_ratio,
        image_grid_pinpoints=args.image_grid_pinpoints,
        num_image_tokens=tokens,
        mm_patch_merge_type=args.mm_patch_merge_type,
        patches_per_side=side,
        crop_size=crop,
        mm_newline_position=args.mm_newline_position,
        mm_spatial_pool_stride=args.mm_spatial_pool_stride,
        mm_spatial_pool_mode=args.mm_spatial_pool_mode,
        frames_upbound=args.frames_upbound,
        video_fps=args.video_fps,
        force_sample=args.force_sample,
    )
    check_format(fmt)
    return fmt


def check_format(fmt: SampleFormat) -> None:
    """Raise ValueError naming the flag when the format's visual settings cannot count tokens."""
    from llava.images import grid

    def named(flag, check, *values):
        try:
            check(*values)
        except ValueError as e:
            raise ValueError(f"--{flag}: {e}") from None

    named("image_aspect_ratio", grid.check_image_aspect_ratio, fmt.image_aspect_ratio)
    named("mm_patch_merge_type", grid.check_merge_type, fmt.mm_patch_merge_type)
    named("mm_newline_position", grid.check_newline_position, fmt.mm_newline_position)
    named("mm_spatial_pool_mode", grid.check_pool_mode, fmt.mm_spatial_pool_mode)
    named("mm_spatial_pool_stride", grid.check_pool_stride, fmt.mm_spatial_pool_stride)
    if grid.is_anyres(fmt.image_aspect_ratio):
        named("image_grid_pinpoints", grid.parse_grid_pinpoints, fmt.image_grid_pinpoints, fmt.crop_size)
    if fmt.frames_upbound < 0:
        raise ValueError(f"--frames_upbound must be >= 0 (0: every sampled frame), got {fmt.frames_upbound}")
    if fmt.video_fps <= 0:
        raise ValueError(f"--video_fps must be > 0, got {fmt.video_fps}")


# ------------------------------------------------------------------------------ the file checks
@dataclass
class VisualCheck:
    """What `check_visuals` found: per sample index, its first problem, or its visuals' infos and costs."""

    problems: dict[int, tuple[str, str]] = field(default_factory=dict)
    infos: dict[int, list[VisualInfo]] = field(default_factory=dict)
    costs: dict[int, list[int]] = field(default_factory=dict)


def _check_image(visual: Visual, check: str, need_size: bool):
    if visual.data is not None:
        problem = embedded_image_problem(visual.data, visual.name, check)
    else:
        problem = image_problem(visual.path, check)
    if problem or not need_size:
        return problem, VisualInfo(IMAGE)
    try:
        return None, probe(visual, image_size=True)  # the header's size: what an anyres image's tokens need
    except VisualError as e:
        return ("corrupt_image", str(e)), None


def _check_embedded_video(visual: Visual, check: str, fmt: SampleFormat):
    from llava.data.visuals import local_video
    from llava.images.video import VideoError, load_video_frames

    try:
        info = probe(visual)
        if check == "decode":
            indices = fmt.frame_indices(info)
            with local_video(visual) as path:
                frames = load_video_frames(path, indices)
            if len(frames) != len(indices):
                raise VideoError(f"video {visual.name}: {len(frames)} frames decoded, {len(indices)} expected")
    except (VisualError, VideoError) as e:
        return ("corrupt_video", f"embedded video {visual.name}: {e}"), None
    return None, info


def _check_video(visual: Visual, check: str, fmt: SampleFormat):
    from llava.images.video import VideoError, frame_files, load_video_frames

    if visual.data is not None:
        return _check_embedded_video(visual, check, fmt)
    path = visual.path
    if not os.path.exists(path):
        return ("missing_video", f"video file or folder {path} not found (check --video_folder; "
                                 "without it videos are under --image_folder)"), None  # fmt: skip
    try:
        info = probe(visual)  # the dataset's probe: container, video stream, frame count
        indices = fmt.frame_indices(info)
        if check == "header" and os.path.isdir(path):
            files = frame_files(path)
            for k in sorted(set(indices)):
                problem = image_problem(str(files[k]), "header")
                if problem:
                    return ("corrupt_video", f"video folder {path}: sampled frame {k}: {problem[1]}"), None
        elif check == "decode":
            frames = load_video_frames(path, indices)
            if len(frames) != len(indices):
                raise VideoError(f"video {path}: {len(frames)} frames decoded, {len(indices)} expected")
    except (VisualError, VideoError) as e:
        return ("corrupt_video", str(e)), None
    except Exception as e:  # FFmpeg / PIL errors the video module did not name
        return ("corrupt_video", f"video {path} cannot be decoded ({type(e).__name__}: {e})"), None
    return None, info


def check_visuals(
    samples: list[dict],
    indices: list[int],
    fmt: SampleFormat,
    image_folder: str | None = None,
    video_folder: str | None = None,
    check: str = "header",
    num_workers: int = 1,
) -> VisualCheck:
    """Check the images and videos of `samples[i]` for `i` in `indices` (each file once), and count each
    usable sample's visual tokens as the dataset does (`fixed_visual_tokens`, else `visual_tokens` of
    the probed infos). `check`: an --image_check level; `num_workers`: threads (PIL and PyAV decode
    without the GIL)."""
    if check not in IMAGE_CHECKS:
        raise ValueError(f"unknown image_check {check!r}; valid: {IMAGE_CHECKS}")
    wanted, jobs = {}, {}
    for i in indices:
        sample = samples[i]
        fixed = fmt.fixed_visual_tokens(sample)
        visuals = sample_visuals(sample, image_folder, video_folder)
        keys = [
            (v.kind, v.path if v.data is None else f"embedded:{i}:{k}", v.kind == IMAGE and fixed is None)
            for k, v in enumerate(visuals)
        ]
        wanted[i] = (fixed, keys)
        for key, v in zip(keys, visuals):
            jobs.setdefault(key, v)

    def run(key):
        kind, _, need_size = key
        return (
            _check_video(jobs[key], check, fmt)
            if kind == VIDEO
            else _check_image(jobs[key], check, need_size)
        )

    keys = sorted(jobs)
    if check == "exists" and not any(kind == VIDEO or size for kind, _, size in keys):
        results = {key: run(key) for key in keys}
    else:
        from tqdm import tqdm

        desc = {"exists": "checking files", "header": "checking file headers", "decode": "decoding visuals"}[
            check
        ]
        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            found = tqdm(
                pool.map(run, keys), total=len(keys), desc=desc, mininterval=2, disable=len(keys) < 10000
            )
            results = dict(zip(keys, found))
    out = VisualCheck()
    for i, (fixed, keys) in wanted.items():
        found = [results[key] for key in keys]
        bad = [problem for problem, _ in found if problem]
        if bad:
            category, message = bad[0]
            if len(bad) > 1:
                message += f" (and {len(bad) - 1} more of its {len(keys)} images)"
            out.problems[i] = (category, message)
            continue
        out.infos[i] = [info for _, info in found]
        out.costs[i] = fixed if fixed is not None else fmt.visual_tokens(out.infos[i])
    return out


def describe_visuals(sample: dict, costs: list[int], infos, fmt: SampleFormat) -> str:
    """What a too-long message names: "576 image", "3 images: 1728 tokens", "a video of 40 frames,
    40 sampled (--frames_upbound 0): 240 tokens"."""
    if infos and infos[0].kind == VIDEO:
        sampled = len(fmt.frame_indices(infos[0]))
        return (
            f"a video of {infos[0].frames} frames, {sampled} sampled (--frames_upbound {fmt.frames_upbound}): "
            f"{sum(costs)} tokens"
        )
    return f"{sum(costs)} image" if len(costs) <= 1 else f"{len(costs)} images: {sum(costs)} tokens"
