"""Videos sent to the OpenAI-compatible API, turned into the frames a model worker takes.

A video arrives as a `video_url` content part (a `data:video/...;base64,` URL of a video file, or,
only when the server was started with `--video-dir DIR`, a path or `file://` URL of a video file or
frames folder inside DIR) or as a `video` part listing its frames as image URLs. Frames are sampled
as LLaVA-NeXT does (every frame at 1 frame per second, at most `max_frames` spread evenly over the
video; llava.images.video.sample_frame_indices) and sent on to the worker as base64 JPEG
(quality 95); the worker samples again to its model's `frames_upbound` when that is lower.
Every failure is an `ImageInputError` naming the content part.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llava.serve.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageInputError,
    data_url_mime,
    encode_image_base64,
    parse_data_url,
)

DEFAULT_MAX_VIDEO_FRAMES = 32
DEFAULT_MAX_VIDEO_BYTES = 100 * 1024 * 1024
_SUFFIXES = {
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/quicktime": ".mov",
    "video/x-matroska": ".mkv",
}


@dataclass(frozen=True)
class VideoPolicy:
    """What the API accepts as a video: `video_dir` (None: no local files), frames kept per video,
    bytes per inline video, pixels per frame."""

    video_dir: str | None = None
    max_frames: int = DEFAULT_MAX_VIDEO_FRAMES
    max_bytes: int = DEFAULT_MAX_VIDEO_BYTES
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS


def encode_frames(frames) -> list[str]:
    """PIL frames -> base64 JPEG strings (one video entry of a worker request's `images`)."""
    return [encode_image_base64(f.convert("RGB"), "JPEG", quality=95) for f in frames]


def keep_frame_indices(total: int, fps: float | None, policy: VideoPolicy) -> list[int]:
    """The frames of `total` (at `fps`; None: already frames) that go to the worker."""
    from llava.images.video import sample_frame_indices

    return sample_frame_indices(total, fps, frames_upbound=policy.max_frames)


def _frames_of_path(path: Path, where: str, policy: VideoPolicy) -> list:
    from llava.images.video import VideoError, load_video_frames, probe_video

    try:
        info = probe_video(path)
        w, h = info.size
        if policy.max_pixels is not None and w * h > policy.max_pixels:
            raise ImageInputError(
                f"{where}: the video's frames are {w}x{h} = {w * h} pixels, over the limit of {policy.max_pixels}"
            )
        return load_video_frames(path, keep_frame_indices(info.frames, info.fps, policy))
    except VideoError as e:
        raise ImageInputError(f"{where}: {e}") from None


def local_video_path(url: str, where: str, policy: VideoPolicy) -> Path:
    """The file or folder a local video URL names, refused unless it lies inside `policy.video_dir`."""
    if policy.video_dir is None:
        raise ImageInputError(
            f"{where}: local video paths are disabled on this server; send the video inline as a "
            "data:video/mp4;base64,... URL or as a 'video' part of frames (or start the server with --video-dir DIR)"
        )
    raw = url[len("file://") :] if url.startswith("file://") else url
    root = Path(policy.video_dir).resolve()
    path = (root / raw).resolve()  # an absolute `raw` replaces root; resolve() follows symlinks and ..
    if path != root and root not in path.parents:
        raise ImageInputError(f"{where}: {raw!r} is outside the server's --video-dir {policy.video_dir}")
    if not path.exists():
        raise ImageInputError(f"{where}: no video at {raw!r} in the server's --video-dir")
    return path


def video_url_frames(url: str, where: str, policy: VideoPolicy) -> list[str]:
    """A `video_url`'s sampled frames as base64 JPEG strings."""
    if url.startswith("data:"):
        data = parse_data_url(url, where, media="video")
        if len(data) > policy.max_bytes:
            raise ImageInputError(
                f"{where}: the video is {len(data)} bytes, over the limit of {policy.max_bytes}"
            )
        suffix = _SUFFIXES.get(data_url_mime(url), ".mp4")
        fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="llava-video-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return encode_frames(_frames_of_path(Path(tmp), where, policy))
        finally:
            os.unlink(tmp)
    if url.lower().startswith(("http://", "https://")):
        raise ImageInputError(
            f"{where}: video URLs over http(s) are not fetched; send the video as a data:video/...;base64 URL"
        )
    return encode_frames(_frames_of_path(local_video_path(url, where, policy), where, policy))
