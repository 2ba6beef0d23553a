"""A sample's visuals: the images or the video it names, where their files are, and what they hold.

LLaVA-NeXT / OneVision JSON: `image` is one file name or a list of them (one `<image>` marker per
image, in order, anywhere in the human turns); `video` names a video file or a folder of frame
images (one `<image>` marker stands for the whole video); never both. A text-only sample has
neither.

    visuals = sample_visuals(sample, image_folder, video_folder)   # [Visual(kind, name, path), ...]
    info = probe(visual, image_size=True)                          # VisualInfo: size, frames, fps

`probe` reads as little as it can: whether an image file exists, or its header for its size (what
anyres needs to count tokens), or a video's container for its frame count and rate
(llava.images.video.probe_video). The token counts themselves are the SampleFormat's
(`SampleFormat.visual_tokens`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

IMAGE, VIDEO = "image", "video"
MODALITIES = (IMAGE, VIDEO)


class VisualError(ValueError):
    """A visual that cannot be used: the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class Visual:
    kind: str  # IMAGE or VIDEO
    name: str  # as the sample gives it (for an embedded one: its stored path, or "<embedded image>")
    path: str | None  # joined with --image_folder / --video_folder; None when embedded
    data: bytes | None = field(default=None, repr=False)  # the file's bytes, stored in the data (parquet)

    def opened(self):
        """What to open: the path, or a file-like object over the embedded bytes."""
        import io

        return self.path if self.data is None else io.BytesIO(self.data)


@dataclass(frozen=True)
class VisualInfo:
    """What a visual's token count depends on: `size` (w, h) of an image (None when not read) or of a
    video's first frame; `frames` and `fps` of a video (fps None for a folder of frames)."""

    kind: str
    size: tuple[int, int] | None = None
    frames: int | None = None
    fps: float | None = None


def visual_fields_problem(sample: dict) -> str | None:
    """Why the sample's `image` / `video` fields are unusable, or None."""
    has_image, has_video = "image" in sample, "video" in sample
    if has_image and has_video:
        return "has both 'image' and 'video'; a sample holds images or one video"
    if has_image:
        image = sample["image"]
        names = image if isinstance(image, list) else [image]
        if not names:
            return "'image' is an empty list"
        if not all((isinstance(n, str) and n) or _is_embedded(n) for n in names):
            return f"'image' must be a file name or a list of file names, got {_short(image)}"
    if has_video and not ((isinstance(sample["video"], str) and sample["video"]) or _is_embedded(sample["video"])):
        return f"'video' must be one file or folder name, got {_short(sample['video'])}"
    return None


def _is_embedded(value) -> bool:
    from llava.data.sources import Embedded

    return isinstance(value, Embedded)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def visual_names(sample: dict) -> tuple[str, list[str]]:
    """(kind, names) of the sample's visuals: (IMAGE, [...]), (VIDEO, [one]) or (IMAGE, []) for text."""
    if "video" in sample:
        return VIDEO, [sample["video"]]
    image = sample.get("image")
    if image is None:
        return IMAGE, []
    return IMAGE, list(image) if isinstance(image, list) else [image]


def num_visuals(sample: dict) -> int:
    """How many `<image>` placeholders the sample's visuals need (a video needs one)."""
    return len(visual_names(sample)[1])


def has_visuals(sample: dict) -> bool:
    return "image" in sample or "video" in sample


def sample_modality(sample: dict) -> str:
    """'text', 'image' (one), 'multi_image' or 'video': what the sampler and the reports group by."""
    kind, names = visual_names(sample)
    if kind == VIDEO:
        return "video"
    return {0: "text", 1: "image"}.get(len(names), "multi_image")


def sample_visuals(sample: dict, image_folder: str | None = "", video_folder: str | None = None) -> list[Visual]:
    """The sample's visuals with their paths (videos under `video_folder`, else `image_folder`), or
    their bytes when the data embeds them (llava.data.sources.Embedded)."""
    kind, names = visual_names(sample)
    folder = (video_folder if kind == VIDEO and video_folder else image_folder) or ""
    out = []
    for n in names:
        if _is_embedded(n):
            out.append(Visual(kind, n.name or f"<embedded {kind}>", None, n.data))
        else:
            out.append(Visual(kind, n, os.path.join(folder, n)))
    return out


def probe(visual: Visual, image_size: bool = False) -> VisualInfo:
    """What counting `visual`'s tokens needs, read cheaply; raises VisualError naming the file.

    Images: only that the file exists, or with `image_size` its header (size, not decoded).
    Videos: the frame count, rate and frame size, from the container or the frames folder."""
    if visual.kind == VIDEO:
        from llava.images.video import VideoError, probe_video

        try:
            with local_video(visual) as path:
                info = probe_video(path)
        except VideoError as e:
            raise VisualError(str(e)) from e
        return VisualInfo(VIDEO, tuple(info.size), int(info.frames), info.fps)
    if visual.data is None and not os.path.isfile(visual.path):
        raise VisualError(f"image file {visual.path} not found (check --image_folder)")
    if not image_size:
        return VisualInfo(IMAGE)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(visual.opened()) as im:
            return VisualInfo(IMAGE, tuple(im.size))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise VisualError(f"image {visual.name} cannot be read ({type(e).__name__}: {e})") from e


@contextlib.contextmanager
def local_video(visual: Visual):
    """A path PyAV can open for the video: its own, or a temporary file holding the embedded bytes."""
    if visual.data is None:
        yield visual.path
        return
    import tempfile

    suffix = os.path.splitext(visual.name)[1] if visual.name and not visual.name.startswith("<") else ".mp4"
    with tempfile.NamedTemporaryFile(suffix=suffix or ".mp4") as f:
        f.write(visual.data)
        f.flush()
        yield f.name
