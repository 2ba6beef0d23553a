"""A request's visuals, from untrusted JSON to PIL images, with every bound checked before any pixel is decoded.

`/worker_generate_stream`'s `images` holds one entry per `<image>` of the prompt, in order:

- a base64 string (or a `data:image/...;base64,` URL): one image;
- a list of such strings: one video, its frames in time order.

Checked, in this order, each failure an `ImageInputError` naming the image or the frame: the shape of
the field, the number of visuals (`max_visuals`) and of frames per video (`max_frames`), then every
kept frame's and image's header (not an image, over `max_image_pixels`), then the pixels of the whole
request together (`max_request_pixels`), and only then the pixels are decoded. A video's frames are
thinned first (`keep_frames`: the model's frame sampling), so frames that are not kept are never decoded.
In-process callers (the CLI) may pass PIL images (and lists of them) instead of base64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from llava.serve.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageInputError,
    base64_image_bytes,
    load_rgb,
    open_image_header,
)

MAX_VISUALS_PER_REQUEST = 16  # images + videos
MAX_FRAMES_PER_VIDEO = 512  # frames a client may send for one video (the model keeps its frames_upbound)
DEFAULT_MAX_REQUEST_PIXELS = 1 << 28  # all images and kept frames of a request together (~268 megapixels)


@dataclass(frozen=True)
class VisualLimits:
    max_visuals: int = MAX_VISUALS_PER_REQUEST
    max_frames: int = MAX_FRAMES_PER_VIDEO
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    max_request_pixels: int | None = DEFAULT_MAX_REQUEST_PIXELS


def check_visual_count(n: int, limits: VisualLimits) -> None:
    """ImageInputError when a request holds more than `limits.max_visuals` images and videos."""
    if n > limits.max_visuals:
        raise ImageInputError(
            f"{n} images/videos sent; at most {limits.max_visuals} per request (a video counts as one)"
        )


def check_request_pixels(total: int, limits: VisualLimits) -> None:
    """ImageInputError when a request's images and kept frames hold more than `limits.max_request_pixels`."""
    if limits.max_request_pixels is not None and total > limits.max_request_pixels:
        raise ImageInputError(
            f"the request's images and video frames hold {total} pixels together, over the limit of "
            f"{limits.max_request_pixels}; send fewer or smaller images"
        )


def _shape_error(i: int, n: int, entry) -> ImageInputError:
    return ImageInputError(
        f"image {i + 1} of {n} must be a base64 string (an image) or a list of base64 strings "
        f"(a video's frames), got {type(entry).__name__}"
    )


def _plan(entries, limits: VisualLimits, keep_frames) -> list[tuple[bool, list[tuple[object, str]]]]:
    """(is video, [(raw item, its name in errors), ...]) per visual, after the count checks."""
    if not isinstance(entries, list):
        raise ImageInputError("'images' must be a list: a base64 string per image, a list of them per video")
    n = len(entries)
    check_visual_count(n, limits)
    plan = []
    for i, entry in enumerate(entries):
        if isinstance(entry, (str, Image.Image)):
            plan.append((False, [(entry, f"image {i + 1} of {n}")]))
            continue
        if not isinstance(entry, list) or not all(isinstance(f, (str, Image.Image)) for f in entry):
            raise _shape_error(i, n, entry)
        if not entry:
            raise ImageInputError(f"image {i + 1} of {n} is a video without frames (an empty list)")
        if len(entry) > limits.max_frames:
            raise ImageInputError(
                f"image {i + 1} of {n} is a video of {len(entry)} frames; at most {limits.max_frames} "
                "per video (send fewer, sampled uniformly)"
            )
        kept = keep_frames(len(entry)) if keep_frames is not None else range(len(entry))
        frames = [(entry[k], f"image {i + 1} of {n} (video frame {k + 1} of {len(entry)})") for k in kept]
        plan.append((True, frames))
    return plan


def decode_request_visuals(
    entries, limits: VisualLimits | None = None, keep_frames: Callable[[int], list[int]] | None = None
) -> list:
    """The visuals of a request's `images` field: a PIL image per image, a list of PIL frames per video.

    `keep_frames(n)` gives the indices of the frames kept of a video sent with n frames (default: all).
    """
    limits = limits or VisualLimits()
    plan = _plan(entries, limits, keep_frames)
    opened, total = [], 0
    for is_video, items in plan:
        heads = []
        for raw, what in items:
            if isinstance(raw, Image.Image):
                head = raw
            else:
                head = open_image_header(base64_image_bytes(raw, what), what, limits.max_image_pixels)
            total += head.size[0] * head.size[1]
            heads.append((head, what))
        opened.append((is_video, heads))
    check_request_pixels(total, limits)
    out = []
    for is_video, heads in opened:
        decoded = [load_rgb(head, what) for head, what in heads]
        out.append(decoded if is_video else decoded[0])
    return out


def count_visuals(entries) -> int:
    """How many `<image>` markers `entries` (a request's `images`) needs: one per image, one per video."""
    return len(entries) if isinstance(entries, list) else 0
