"""Videos as frames: probe, sample frame indices as LLaVA-NeXT does, decode with PyAV, write test clips.

A sample's `"video"` is a video file (anything FFmpeg reads, decoded with PyAV) or a folder of frame
images. The steps are apart so that the length budget can count frames before anything is decoded:

    info = probe_video(path)                                   # VideoInfo(frames, fps, size), cheap
    indices = sample_frame_indices(info.frames, info.fps, frames_upbound=32, video_fps=1)
    frames = load_video_frames(path, indices)                   # list of RGB PIL images

`read_video(path, frames_upbound=..., ...)` does the three. Every problem with the file is a
`VideoError` (a ValueError) that names the file and says what is wrong.
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# Seek ahead (to the key frame before the next wanted frame) only when that skips at least this many
# frames; a seek drops what the decoder's threads have decoded ahead.
MIN_SEEK_SKIP = 8


class VideoError(ValueError):
    """A video (file or frames folder) that cannot be used; the message names it and the problem."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int  # number of frames
    fps: float | None  # frames per second; None for a folder of frames
    size: tuple[int, int]  # (width, height) of the (first) frame

    @property
    def duration(self) -> float | None:
        """Seconds (frames / fps), None for a frames folder."""
        return self.frames / self.fps if self.fps else None


@dataclass(frozen=True)
class SampledVideo:
    frames: list[Image.Image]
    indices: list[int]
    info: VideoInfo


# ------------------------------------------------------------------------------------------ probing
def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def frame_files(folder: str | Path) -> list[Path]:
    """The frame images of a frames folder in frame order: files with an image extension, sorted by
    name with digit runs compared as numbers (so frame_2 < frame_10; zero-padded names sort as plain
    text would)."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and p.is_file()]
    if not files:
        raise VideoError(
            f"video folder {folder}: no frame images in it (looked for {', '.join(FRAME_EXTENSIONS)})"
        )
    return sorted(files, key=lambda p: _natural_key(p.name))


def _open(path: Path):
    """The PyAV container of a video file and its (first) video stream."""
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:
        raise VideoError(f"video {path}: not a video FFmpeg can read ({err})") from err
    if container.format.name.endswith("_pipe"):
        container.close()
        raise VideoError(f'video {path}: a still image, not a video (give it as the sample\'s "image")')
    if not container.streams.video:
        container.close()
        raise VideoError(f"video {path}: the file has no video stream")
    return container, container.streams.video[0]


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise VideoError(f"video {path}: no such file or folder")


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, frame rate and frame size, without decoding pixels.

    A file: the count is the container's (`stream.frames`, e.g. mp4's sample table); when the
    container does not say (0, e.g. Matroska/WebM), the video packets are counted by demuxing the file
    (reads it, decodes nothing). fps is the stream's average frame rate (else FFmpeg's guess, else None).
    A folder: the number of frame images (`frame_files`), fps None, the size from the first frame's
    header.
    """
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        files = frame_files(path)
        try:
            with Image.open(files[0]) as im:
                size = im.size
        except (OSError, Image.DecompressionBombError) as err:
            raise VideoError(f"video folder {path}: unreadable frame file {files[0].name} ({err})") from err
        return VideoInfo(len(files), None, size)
    container, stream = _open(path)
    with container:
        rate = stream.average_rate or stream.guessed_rate
        size = (stream.codec_context.width, stream.codec_context.height)
        frames = stream.frames
        if frames <= 0:
            try:
                frames = sum(1 for packet in container.demux(stream) if packet.size)
            except av.error.FFmpegError as err:
                raise VideoError(f"video {path}: cannot read its packets ({err})") from err
    if frames <= 0:
        raise VideoError(f"video {path}: the video stream has no frames")
    return VideoInfo(frames, float(rate) if rate else None, size)


# ----------------------------------------------------------------------------------------- sampling
def sample_frame_indices(
    total: int, fps: float | None, *, frames_upbound: int, video_fps: float = 1, force_sample: bool = False
) -> list[int]:
    """LLaVA-NeXT's frame choice: every round(fps / video_fps)-th frame from 0 (every frame when fps is
    None, as for a frames folder); then, when frames_upbound > 0 and that is more than frames_upbound
    frames (or force_sample), frames_upbound indices spread evenly over [0, total - 1] (numpy linspace,
    truncated; indices repeat when force_sample asks for more frames than there are)."""
    if total <= 0:
        raise ValueError(f"a video needs at least one frame to sample from (got total={total})")
    if video_fps <= 0:
        raise ValueError(f"video_fps must be > 0 (got {video_fps})")
    if frames_upbound < 0:
        raise ValueError(f"frames_upbound must be >= 0 (got {frames_upbound})")
    step = max(1, round(fps / video_fps)) if fps else 1
    indices = list(range(0, total, step))
    if frames_upbound > 0 and (len(indices) > frames_upbound or force_sample):
        indices = np.linspace(0, total - 1, frames_upbound, dtype=int).tolist()
    return indices


def sampled_frame_count(
    info: VideoInfo, *, frames_upbound: int, video_fps: float = 1, force_sample: bool = False
) -> int:
    """How many frames `sample_frame_indices` takes from a video with this `VideoInfo` (length budget)."""
    return len(
        sample_frame_indices(
            info.frames,
            info.fps,
            frames_upbound=frames_upbound,
            video_fps=video_fps,
            force_sample=force_sample,
        )
    )


# ----------------------------------------------------------------------------------------- decoding
class _Inexact(Exception):
    """A seek did not land where the frame table says: decode from the start instead."""


@dataclass(frozen=True)
class _FrameTable:
    """Presentation order of a stream's packets (from demuxing, no decoding)."""

    pts: list[int]  # sorted: frame index -> pts
    rank: dict[int, int]  # pts -> frame index
    keys: list[int]  # frame indices of key frames, ascending

    def key_at_or_before(self, index: int) -> int:
        pos = bisect.bisect_right(self.keys, index) - 1
        return self.keys[pos] if pos >= 0 else 0


def _frame_table(path: Path) -> _FrameTable | None:
    """None when the packets lack timestamps or cannot all be read (then no seeking)."""
    container, stream = _open(path)
    pts, keys = [], []
    with container:
        try:
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                if packet.pts is None:
                    return None
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
        except av.error.FFmpegError:
            return None
    order = sorted(pts)
    if not order or len(set(order)) != len(order):
        return None
    rank = {p: i for i, p in enumerate(order)}
    return _FrameTable(order, rank, sorted(rank[p] for p in keys))


def _frames_from(container, stream, table: _FrameTable | None, key: int):
    """(index, frame) from frame `key` on: seeks to that key frame when key > 0. After a seek, frames
    before the first decoded key frame are dropped (open-GOP leading frames), that key frame must not
    lie after `key`, and the indices must run on one by one; otherwise `_Inexact`."""
    if key > 0:
        try:
            container.seek(table.pts[key], stream=stream, backward=True, any_frame=False)
        except av.error.FFmpegError as err:
            raise _Inexact from err
    started, last = key == 0, None
    for count, frame in enumerate(container.decode(stream)):
        if table is None:
            yield count, frame
            continue
        index = table.rank.get(frame.pts)
        if not started:
            if not frame.key_frame:
                continue
            if index is None or index > key:
                raise _Inexact
            started = True
        elif index is None or index != (last + 1 if last is not None else 0):
            raise _Inexact
        last = index
        yield index, frame


def _decode_file(path: Path, wanted: list[int], table: _FrameTable | None) -> dict[int, Image.Image]:
    wanted_set, out = set(wanted), {}
    container, stream = _open(path)
    stream.thread_type = "AUTO"
    with container:
        frames, position = None, -1  # position: index of the last frame decoded
        for target in wanted:
            if target in out:
                continue
            key = table.key_at_or_before(target) if table else 0
            if key - (position + 1) >= MIN_SEEK_SKIP:  # (only with a table: key is 0 without one)
                frames = _frames_from(container, stream, table, key)
            elif frames is None:
                frames = _frames_from(container, stream, table, 0)
            try:
                for index, frame in frames:
                    position = index
                    if index in wanted_set:  # = frame.to_image(), which is ~4x slower (copies by row)
                        out[index] = Image.fromarray(frame.to_ndarray(format="rgb24"))
                    if index >= target:
                        break
                else:
                    raise VideoError(
                        f"video {path}: frame {target} does not decode: the stream ended after "
                        f"{position + 1} frames"
                    )
            except av.error.FFmpegError as err:
                raise VideoError(f"video {path}: frame {position + 1} does not decode ({err})") from err
    return out


def _load_folder_frames(folder: Path, indices: list[int]) -> list[Image.Image]:
    files = frame_files(folder)
    loaded = {}
    for i in indices:
        if i >= len(files):
            raise VideoError(f"video folder {folder}: frame {i} asked for, but it has {len(files)} frames")
        if i not in loaded:
            try:
                with Image.open(files[i]) as im:
                    loaded[i] = im.convert("RGB")
            except (OSError, Image.DecompressionBombError) as err:
                raise VideoError(
                    f"video folder {folder}: unreadable frame file {files[i].name} ({err})"
                ) from err
    return [loaded[i] for i in indices]


def load_video_frames(path: str | Path, indices: list[int], *, seek: bool = True) -> list[Image.Image]:
    """The frames at `indices` (in that order, repeats allowed) as RGB PIL images.

    A file is decoded in order with PyAV (thread_type "AUTO"), keeping the wanted frames and stopping
    after the last. With `seek` and a gap of at least MIN_SEEK_SKIP frames before a wanted frame's key
    frame, the packets are first demuxed (no decoding) into a table of presentation order and key
    frames, and the decoder seeks to the key frame before the wanted one; the frames it returns are
    checked against the table, and on any mismatch the file is decoded from the start instead, so
    the frames are always those of a sequential decode. A stream that ends (or fails) before a wanted
    frame raises VideoError naming the frame.
    """
    path = Path(path)
    _check_exists(path)
    indices = [int(i) for i in indices]
    if any(i < 0 for i in indices):
        raise ValueError(f"video {path}: frame indices must be >= 0 (got {min(indices)})")
    if not indices:
        return []
    if path.is_dir():
        return _load_folder_frames(path, indices)
    wanted = sorted(set(indices))
    gaps = np.diff([-1, *wanted]) - 1
    table = _frame_table(path) if seek and gaps.max() >= MIN_SEEK_SKIP else None
    try:
        out = _decode_file(path, wanted, table)
    except _Inexact:
        out = _decode_file(path, wanted, None)
    return [out[i] for i in indices]


def read_video(
    path: str | Path, *, frames_upbound: int = 0, video_fps: float = 1, force_sample: bool = False
) -> SampledVideo:
    """Probe, sample (`sample_frame_indices`) and decode one video file or frames folder."""
    info = probe_video(path)
    indices = sample_frame_indices(
        info.frames, info.fps, frames_upbound=frames_upbound, video_fps=video_fps, force_sample=force_sample
    )
    return SampledVideo(load_video_frames(path, indices), indices, info)


# ------------------------------------------------------------------------------------------ writing
def _as_array(frame) -> np.ndarray:
    array = np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"a frame must be an RGB PIL image or an HxWx3 uint8 array (got {array.dtype} {array.shape})"
        )
    return array


def write_video(
    frames,
    path: str | Path,
    fps: int | float | Fraction = 8,
    *,
    codec: str = "mpeg4",
    gop_size: int = 12,
    max_b_frames: int = 0,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode `frames` (an iterable of RGB PIL images or HxWx3 uint8 arrays, one size, even width and
    height; encoded as they come) into a video file whose container follows the suffix (.mp4, .mkv,
    .avi, ...). mpeg4 (in PyAV's wheel, see `av.codecs_available`) is encoded at fixed quantiser 2
    (near lossless) unless `options` says otherwise; mp4/mov files get their index first (faststart).
    On an error no file is left behind."""
    path = Path(path)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"write_video {path}: no frames to write")
    first = _as_array(first)
    height, width = first.shape[:2]
    if width % 2 or height % 2:
        raise ValueError(
            f"write_video {path}: width and height must be even for yuv420p (got {width}x{height})"
        )
    if codec == "mpeg4" and options is None:
        options = {"flags": "+qscale", "global_quality": str(2 * 118)}  # 118 = FF_QP2LAMBDA
    rate = fps if isinstance(fps, (int, Fraction)) else Fraction(fps).limit_denominator(1001)
    path.parent.mkdir(parents=True, exist_ok=True)
    faststart = {"movflags": "+faststart"} if path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
    try:
        with av.open(str(path), "w", options=faststart) as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.gop_size = gop_size
            stream.codec_context.max_b_frames = max_b_frames
            if options:
                stream.codec_context.options = dict(options)
            for k, frame in enumerate(itertools.chain([first], frames)):
                array = _as_array(frame)
                if array.shape != first.shape:
                    raise ValueError(
                        f"write_video {path}: frame {k} is {array.shape[1]}x{array.shape[0]}, "
                        f"frame 0 {width}x{height}: all frames must have one size"
                    )
                container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
            container.mux(stream.encode())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def write_frame_folder(frames, folder: str | Path, ext: str = ".png") -> Path:
    """Save `frames` as frame_00000{ext}, frame_00001{ext}, ... in `folder` (a frames-folder video)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(_as_array(frame)).save(folder / f"frame_{i:05d}{ext}")
    return folder
