"""Video decoding speed: every frame, and 16 / 32 frames sampled uniformly (LLaVA-NeXT's frames_upbound).

    .venv/bin/python bench/bench_video_decode.py [--seconds 20] [--codecs mpeg4,libx264] [--repeats 3]

Writes two generated clips per codec to a temporary folder (1280x720 and 336x336, 30 frames/s: a
drifting colour gradient with moving blocks, so the codec has motion to code) and times, best of
--repeats (wall and CPU seconds, all decoder threads):

- probe:          `probe_video` (frame count, fps, size; no decoding);
- all frames:     `load_video_frames` of every index (sequential decode, each frame to an RGB image);
- decode only:    PyAV decoding every frame without converting it (the decoder's own speed);
- LLaVA-NeXT:     its `process_video_with_pyav` way for N frames: decode every frame into a list, then
                  convert the N sampled ones (the baseline of the sampled rows);
- N sequential:   `load_video_frames(..., seek=False)`: decode in order, convert only the N frames;
- N seek:         `load_video_frames` (default): seeks to the key frame before each sampled frame when
                  that skips at least MIN_SEEK_SKIP frames (after one demux pass for the frame table).

"video frames/s" is the clip's frame count over the time taken, i.e. how fast a clip is got through.
mpeg4 is written with key frames every 12 frames (PyAV's default GOP), libx264 with x264's defaults
(key frames at most 250 apart, placed at scene cuts, 3 B-frames; preset veryfast, crf 23).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llava.images.video import (  # noqa: E402
    MIN_SEEK_SKIP,
    load_video_frames,
    probe_video,
    sample_frame_indices,
    write_video,
)

FPS = 30


def clip_frames(width: int, height: int, n: int, seed: int = 0):
    """A colour gradient panning 2 pixels a frame, with four blocks moving across it."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0 : width + 2 * n].astype(np.float32)
    phase = (xs + ys) / (width + height)
    base = np.stack(
        [
            127 + 127 * np.sin(2 * np.pi * phase),
            127 + 127 * np.cos(3 * np.pi * phase),
            64 + 64 * np.sin(ys / 50),
        ],
        axis=-1,
    ).astype(np.uint8)
    colours = rng.integers(0, 256, (4, 3))
    speeds = rng.uniform(1, 6, (4, 2)) * width / 640
    side = max(8, width // 10)
    for k in range(n):
        frame = base[:, 2 * k : 2 * k + width].copy()
        for (vx, vy), colour in zip(speeds, colours):
            x = int(vx * k) % (width - side)
            y = int(vy * k) % (height - side)
            frame[y : y + side, x : x + side] = colour
        yield frame


def write_clip(folder: Path, codec: str, width: int, height: int, n: int) -> Path:
    path = folder / f"{codec}_{width}x{height}.mp4"
    if codec == "libx264":
        kw = {"gop_size": 250, "max_b_frames": 3, "options": {"preset": "veryfast", "crf": "23"}}
    else:
        kw = {"gop_size": 12, "options": {}}  # PyAV's defaults (bit rate 1 Mb/s)
    t0 = time.perf_counter()
    write_video(clip_frames(width, height, n), path, fps=FPS, codec=codec, **kw)
    mb = path.stat().st_size / 1e6
    print(f"wrote {path.name}: {n} frames, {mb:.1f} MB, {time.perf_counter() - t0:.1f}s")
    return path


def best_of(repeats: int, fn) -> tuple[float, float]:
    runs = []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - w0, time.process_time() - c0))
    return min(runs)


def decode_only(path: Path) -> None:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for _ in container.decode(stream):
            pass


def llava_next_way(path: Path, indices: list[int]) -> None:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = list(container.decode(stream))
    np.stack([frames[i].to_ndarray(format="rgb24") for i in indices])


def bench_clip(path: Path, repeats: int) -> list[tuple[str, float, float, tuple | None]]:
    info = probe_video(path)
    n = info.frames
    rows = []

    def row(name, fn, baseline=None):
        wall, cpu = best_of(repeats, fn)
        rows.append((name, wall, cpu, (baseline[0] / wall, baseline[1] / cpu) if baseline else None))
        return wall, cpu

    row("probe", lambda: probe_video(path))
    row("all frames (to RGB)", lambda: load_video_frames(path, range(n)))
    row("decode only (no RGB)", lambda: decode_only(path))
    for k in (16, 32):
        indices = sample_frame_indices(n, info.fps, frames_upbound=k, video_fps=1)
        base = row(f"{k} frames: LLaVA-NeXT (decode all)", lambda ix=indices: llava_next_way(path, ix))
        row(f"{k} frames: sequential", lambda ix=indices: load_video_frames(path, ix, seek=False), base)
        row(f"{k} frames: seek", lambda ix=indices: load_video_frames(path, ix), base)
    print(f"\n{path.name}: {n} frames, {info.fps:g} fps, {info.size[0]}x{info.size[1]}")
    print(f"{'':36s} {'wall ms':>9s} {'CPU ms':>9s} {'video frames/s':>15s} {'x LLaVA-NeXT wall / CPU':>24s}")
    for name, wall, cpu, ratio in rows:
        rate = "" if name == "probe" else f"{n / wall:15.0f}"
        x = f"{ratio[0]:.2f} / {ratio[1]:.2f}" if ratio else ""
        print(f"{name:36s} {wall * 1e3:9.1f} {cpu * 1e3:9.1f} {rate:>15s} {x:>24s}")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="clip length at 30 frames/s")
    parser.add_argument("--codecs", default="mpeg4,libx264")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    n = int(args.seconds * FPS)
    print(f"PyAV {av.__version__}, MIN_SEEK_SKIP {MIN_SEEK_SKIP}, best of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        for codec in args.codecs.split(","):
            if codec not in av.codecs_available:
                print(f"skipping {codec}: not in this FFmpeg")
                continue
            for width, height in ((1280, 720), (336, 336)):
                bench_clip(write_clip(Path(tmp), codec, width, height, n), args.repeats)


if __name__ == "__main__":
    main()
