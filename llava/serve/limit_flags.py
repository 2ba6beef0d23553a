"""The input limits a model worker and the OpenAI API server both check before any work, as one set of
flags with one set of defaults (docs/Serving.md, 'Limits'): images per request, pixels per image (from
its header) and per request, and the rendered prompt's characters before tokenising."""

from __future__ import annotations

from llava.serve.images import DEFAULT_MAX_IMAGE_PIXELS
from llava.serve.request_visuals import DEFAULT_MAX_REQUEST_PIXELS, MAX_VISUALS_PER_REQUEST, VisualLimits

DEFAULT_MAX_PROMPT_CHARS = 100_000


def add_input_limit_flags(parser) -> None:
    """--max-images, --max-image-pixels, --max-request-pixels and --max-prompt-chars on a server's parser."""
    parser.add_argument(
        "--max-images",
        type=int,
        default=MAX_VISUALS_PER_REQUEST,
        help="refuse (HTTP 400) requests with more images and videos (a video counts as one) "
        f"(default {MAX_VISUALS_PER_REQUEST})",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="refuse images and video frames with more pixels, read from their headers "
        f"(default {DEFAULT_MAX_IMAGE_PIXELS}, PIL's limit)",
    )
    parser.add_argument(
        "--max-request-pixels",
        type=int,
        default=DEFAULT_MAX_REQUEST_PIXELS,
        help="refuse requests whose images and kept video frames hold more pixels together "
        f"(default {DEFAULT_MAX_REQUEST_PIXELS})",
    )
    parser.add_argument(
        "--max-prompt-chars",
        type=int,
        default=DEFAULT_MAX_PROMPT_CHARS,
        help="refuse (HTTP 400) prompts with more characters, checked before tokenising "
        f"(default {DEFAULT_MAX_PROMPT_CHARS})",
    )


def visual_limits(args, **more) -> VisualLimits:
    """The VisualLimits of parsed flags (add_input_limit_flags'), with `more` fields (max_frames=...)."""
    return VisualLimits(
        max_visuals=args.max_images,
        max_image_pixels=args.max_image_pixels,
        max_request_pixels=args.max_request_pixels,
        **more,
    )
