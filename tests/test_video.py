"""Video decoding (llava.images.video) and the moving-dot video task (llava.data.tools.synthetic_video).

Clips are written here with PyAV's mpeg4 encoder: every frame is four large blocks of random colours, so
lossy coding keeps each block's inside within a few levels and every frame differs from the others.
"""

from __future__ import annotations

import json
import wave

import numpy as np
import pytest
from PIL import Image

from llava.data.tools import synthetic_video as sv
from llava.images import video as V
from llava.images.video import (
    VideoError,
    VideoInfo,
    load_video_frames,
    probe_video,
    read_video,
    sample_frame_indices,
    sampled_frame_count,
    write_video,
)

W, H = 64, 48
TOL = 12  # levels; mpeg4 at quantiser 2 keeps block insides within ~5


def block_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = np.zeros((H, W, 3), np.uint8)
        for ys in (slice(0, H // 2), slice(H // 2, H)):
            for xs in (slice(0, W // 2), slice(W // 2, W)):
                a[ys, xs] = rng.integers(0, 256, 3)
        out.append(a)
    return out


def block_colours(frame) -> np.ndarray:
    """The mean colour inside each of the four blocks (4 pixels away from every edge)."""
    a = np.asarray(frame).astype(float)
    insides = [a[4 : H // 2 - 4, 4 : W // 2 - 4], a[4 : H // 2 - 4, W // 2 + 4 : -4]]
    insides += [a[H // 2 + 4 : -4, 4 : W // 2 - 4], a[H // 2 + 4 : -4, W // 2 + 4 : -4]]
    return np.stack([x.reshape(-1, 3).mean(0) for x in insides])


def assert_frames_match(decoded, written, indices):
    assert len(decoded) == len(indices)
    for frame, i in zip(decoded, indices):
        assert frame.mode == "RGB" and frame.size == (W, H)
        err = np.abs(block_colours(frame) - block_colours(written[i])).max()
        assert err <= TOL, f"frame {i}: block colours off by {err}"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    frames = block_frames(120)
    return {
        "frames": frames,
        "mp4": write_video(frames[:40], d / "a.mp4", fps=8),
        "bframes": write_video(frames, d / "b.mp4", fps=8, max_b_frames=2),
        "mkv": write_video(frames, d / "c.mkv", fps=25),
        "dir": d,
    }


@pytest.fixture(scope="module")
def h264_open_gop(clips):
    import av

    if "libx264" not in av.codecs_available:
        pytest.skip("this FFmpeg has no libx264 encoder")
    params = "open-gop=1:keyint=12:min-keyint=12:scenecut=0:bframes=3:b-adapt=0"
    options = {"x264-params": params, "crf": "12"}
    path = clips["dir"] / "open_gop.mp4"
    return write_video(clips["frames"], path, fps=8, codec="libx264", max_b_frames=3, options=options)


# ----------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize(
    "total, fps, kw, expected",
    [
        (100, 30.0, {}, [0, 30, 60, 90]),
        (100, 29.97, {}, [0, 30, 60, 90]),  # round(29.97) = 30
        (10, 2.5, {}, [0, 2, 4, 6, 8]),  # Python's round: 2.5 -> 2
        (100, 30.0, {"video_fps": 2}, list(range(0, 100, 15))),
        (5, 0.4, {}, [0, 1, 2, 3, 4]),  # fewer than video_fps frames a second: every frame
        (300, 30.0, {"frames_upbound": 8}, [0, 42, 85, 128, 170, 213, 256, 299]),
        (300, 30.0, {"frames_upbound": 16}, list(range(0, 300, 30))),  # 10 <= 16: kept
        (300, 30.0, {"frames_upbound": 4, "force_sample": True}, [0, 99, 199, 299]),
        (3, 30.0, {"frames_upbound": 5, "force_sample": True}, [0, 0, 1, 1, 2]),
        (5, None, {}, [0, 1, 2, 3, 4]),  # a frames folder: every frame
        (5, None, {"frames_upbound": 3}, [0, 2, 4]),
    ],
)
def test_sample_frame_indices(total, fps, kw, expected):
    kw = {"frames_upbound": 0, **kw}
    assert sample_frame_indices(total, fps, **kw) == expected
    assert sampled_frame_count(VideoInfo(total, fps, (W, H)), **kw) == len(expected)


@pytest.mark.parametrize(
    "args", [(0, 30.0, {}), (10, 30.0, {"video_fps": 0}), (10, 30.0, {"frames_upbound": -1})]
)
def test_sample_frame_indices_rejects(args):
    total, fps, kw = args
    with pytest.raises(ValueError):
        sample_frame_indices(total, fps, **{"frames_upbound": 0, **kw})


# ------------------------------------------------------------------------------------ files: decode
def test_probe_and_decode_mp4(clips):
    info = probe_video(clips["mp4"])
    assert info == VideoInfo(40, 8.0, (W, H)) and info.duration == 5.0
    frames = load_video_frames(clips["mp4"], range(40))
    assert_frames_match(frames, clips["frames"], range(40))
    # each frame is nearest to the frame written at its index (the order is exact)
    for i, frame in enumerate(frames):
        errs = [np.abs(block_colours(frame) - block_colours(w)).max() for w in clips["frames"][:40]]
        assert int(np.argmin(errs)) == i
    picked = load_video_frames(clips["mp4"], [39, 3, 3, 0])
    assert_frames_match(picked, clips["frames"], [39, 3, 3, 0])


def test_probe_counts_packets_when_the_container_does_not_say(clips):
    import av

    with av.open(str(clips["mkv"])) as c:
        assert c.streams.video[0].frames == 0  # Matroska keeps no frame count
    assert probe_video(clips["mkv"]) == VideoInfo(120, 25.0, (W, H))


@pytest.mark.parametrize("clip", ["bframes", "mkv", "h264_open_gop"])
def test_seeking_gives_the_sequential_frames_and_decodes_fewer(clips, clip, monkeypatch, request):
    path = request.getfixturevalue(clip) if clip == "h264_open_gop" else clips[clip]
    indices = [0, 1, 30, 57, 58, 90, 119, 30]
    sequential = load_video_frames(path, indices, seek=False)
    yielded = []
    frames_from = V._frames_from

    def counting(*args):
        for item in frames_from(*args):
            yielded.append(item[0])
            yield item

    monkeypatch.setattr(V, "_frames_from", counting)
    sought = load_video_frames(path, indices)
    for a, b in zip(sought, sequential):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert_frames_match(sought, clips["frames"], indices)
    assert len(yielded) < 120 - 30  # the key frames are 12 apart: most frames were skipped


@pytest.mark.parametrize("kind", ["shifted", "hole"])
def test_a_table_that_disagrees_falls_back_to_decoding_from_the_start(clips, monkeypatch, kind):
    real = V._frame_table(clips["bframes"])
    if kind == "shifted":  # every index one too high: caught at the first frame
        wrong = V._FrameTable(real.pts, {p: i + 1 for p, i in real.rank.items()}, real.keys)
    else:  # a frame missing from the table at 20 (no seek before 30): caught when the indices jump
        rank = {p: i + (i >= 20) for p, i in real.rank.items()}
        wrong = V._FrameTable(sorted(rank, key=rank.get), rank, [0])
    calls = []
    decode = V._decode_file

    def recording(path, wanted, table):
        calls.append(table is not None)
        return decode(path, wanted, table)

    monkeypatch.setattr(V, "_frame_table", lambda path: wrong)
    monkeypatch.setattr(V, "_decode_file", recording)
    frames = load_video_frames(clips["bframes"], [0, 30, 100])
    assert calls == [True, False]
    assert_frames_match(frames, clips["frames"], [0, 30, 100])


def test_read_video_samples_as_llava_next(clips):
    every_second = read_video(clips["mp4"])  # 8 fps, video_fps 1: every 8th frame
    assert every_second.indices == [0, 8, 16, 24, 32]
    assert_frames_match(every_second.frames, clips["frames"], every_second.indices)
    capped = read_video(clips["mp4"], frames_upbound=3)
    assert capped.indices == [0, 19, 39] and capped.info.frames == 40
    assert_frames_match(capped.frames, clips["frames"], capped.indices)


# ----------------------------------------------------------------------------------- frames folders
def test_frames_folder(tmp_path):
    frames = block_frames(11, seed=1)
    folder = tmp_path / "clip"
    folder.mkdir()
    for i, a in enumerate(frames):  # unpadded numbers: frame order is numeric, not plain text order
        Image.fromarray(a).save(folder / f"f{i}.png")
    (folder / "notes.txt").write_text("not a frame")
    (folder / "sub.png").mkdir()
    assert [p.name for p in V.frame_files(folder)][:3] == ["f0.png", "f1.png", "f2.png"]
    assert probe_video(folder) == VideoInfo(11, None, (W, H))
    got = load_video_frames(folder, [10, 2, 2, 0])
    for frame, i in zip(got, [10, 2, 2, 0]):
        assert np.array_equal(np.asarray(frame), frames[i])  # PNG is lossless
    assert read_video(folder, frames_upbound=4).indices == [0, 3, 6, 10]


# ----------------------------------------------------------------------------------------- errors
def test_video_errors(tmp_path, clips):
    def fails(match, fn, *args):
        with pytest.raises(VideoError, match=match) as info:
            fn(*args)
        assert isinstance(info.value, ValueError)
        return str(info.value)

    missing = tmp_path / "missing.mp4"
    assert str(missing) in fails("no such file", probe_video, missing)
    fails("no such file", load_video_frames, missing, [0])

    junk = tmp_path / "junk.mp4"
    junk.write_text("hello, not a video\n" * 20)
    assert str(junk) in fails("not a video", probe_video, junk)
    fails("not a video", load_video_frames, junk, [0])

    still = tmp_path / "still.png"
    Image.new("RGB", (8, 8)).save(still)
    fails("still image", probe_video, still)

    audio = tmp_path / "sound.wav"
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(b"\0\0" * 800)
    fails("no video stream", probe_video, audio)

    # the index comes first (faststart): a cut file still says 40 frames, but fewer decode
    cut = tmp_path / "cut.mp4"
    data = clips["mp4"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert probe_video(cut).frames == 40
    assert str(cut) in fails("frame 39 does not decode", load_video_frames, cut, [0, 39])
    fails("frame 39 does not decode", lambda: load_video_frames(cut, [39], seek=False))

    damaged = tmp_path / "damaged.mp4"  # zeros over a stretch of packets: the decoder refuses them
    data = bytearray(data)
    data[len(data) // 2 : len(data) // 2 + 600] = bytes(600)
    damaged.write_bytes(bytes(data))
    fails(r"frame \d+ does not decode \(.*Invalid data", load_video_frames, damaged, range(40))

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    assert str(empty) in fails("no frame images", probe_video, empty)

    broken = tmp_path / "broken"
    V.write_frame_folder(block_frames(3), broken)
    (broken / "frame_00001.png").write_bytes(b"not a png")
    assert probe_video(broken).frames == 3
    fails("unreadable frame file frame_00001.png", load_video_frames, broken, [0, 1])
    fails("frame 5 asked for, but it has 3 frames", load_video_frames, broken, [5])
    (broken / "frame_00000.png").write_bytes(b"")
    fails("unreadable frame file frame_00000.png", probe_video, broken)

    with pytest.raises(ValueError, match=">= 0"):
        load_video_frames(clips["mp4"], [-1])


def test_write_video_rejects(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        write_video([], tmp_path / "a.mp4")
    with pytest.raises(ValueError, match="even"):
        write_video([np.zeros((9, 8, 3), np.uint8)], tmp_path / "a.mp4")
    with pytest.raises(ValueError, match="frame 1 is 10x8, frame 0 8x8: all frames must have one size"):
        write_video([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], tmp_path / "a.mp4")
    assert not (tmp_path / "a.mp4").exists()
    with pytest.raises(ValueError, match="uint8"):
        write_video([np.zeros((8, 8), np.uint8)], tmp_path / "a.mp4")


# ------------------------------------------------------------------------------------- moving dot
def dot_cell(frame, cells: int = 8) -> tuple[int, int]:
    """The cell whose pixels differ most from the background (the median colour)."""
    a = np.asarray(frame).astype(float)
    far = np.abs(a - np.median(a.reshape(-1, 3), axis=0)).sum(-1)
    step = a.shape[0] // cells
    scores = far.reshape(cells, step, cells, step).sum(axis=(1, 3))  # [row, column]
    row, col = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return int(col), int(row)


def direction_of(a, b, cells: int = 8) -> str:
    (c0, r0), (c1, r1) = dot_cell(a, cells), dot_cell(b, cells)
    step = ((c1 - c0 + 1) % cells - 1, (r1 - r0 + 1) % cells - 1)
    return next(d for d, v in sv.DIRECTIONS.items() if v == step)


def test_one_frame_does_not_tell_the_direction():
    cells, frames = 8, 8
    grid = {(c, r) for c in range(cells) for r in range(cells)}
    for k in range(frames):
        for d in sv.DIRECTIONS:  # over the uniform start cells, frame k's cell is uniform on the grid
            at_k = [sv.dot_track(d, s, frames, cells)[k] for s in sorted(grid)]
            assert sorted(at_k) == sorted(grid)
    # and a frame is a picture of its cell only: start, colour and background do not depend on the
    # direction, so the first frames of the four directions are the same picture
    for seed in range(4):
        firsts = {sv.moving_dot_frames(d, frames, 64, seed)[0].tobytes() for d in sv.DIRECTIONS}
        assert len(firsts) == 1


@pytest.mark.parametrize("kind", ["video", "folder"])
def test_two_frames_tell_the_direction(tmp_path, kind):
    for seed in range(3):
        for d in sv.DIRECTIONS:
            if kind == "video":
                path = sv.make_moving_dot_video(tmp_path / f"{d}-{seed}.mp4", d, seed=seed)
            else:
                path = sv.make_moving_dot_folder(tmp_path / f"{d}-{seed}", d, seed=seed)
            clip = read_video(path)  # 1 frame/s: LLaVA-NeXT's default sampling takes all 8
            assert clip.indices == list(range(8))
            cells = [dot_cell(f) for f in clip.frames]
            assert cells == sv.dot_track(d, cells[0], 8, 8)
            assert {direction_of(a, b) for a, b in zip(clip.frames, clip.frames[1:])} == {d}


def test_generate_writes_the_task(tmp_path):
    paths = sv.generate(tmp_path, n_train=8, n_eval=4, folder_fraction=0.5, seed=1)
    train = json.loads(paths["finetune"].read_text())
    evaluation = [json.loads(line) for line in paths["eval"].read_text().splitlines()]
    assert len(train) == 8 and len(evaluation) == 4
    assert sorted(s["conversations"][1]["value"] for s in train) == sorted(
        f"{d.capitalize()}." for d in sv.DIRECTIONS for _ in range(2)
    )
    for s in train:
        assert s["conversations"][0]["value"].count("<image>") == 1 and "image" not in s
        assert probe_video(tmp_path / s["video"]).frames == 8
    kinds = {(tmp_path / s["video"]).is_dir() for s in train + evaluation}
    assert kinds == {True, False}
    assert {e["answer"] for e in evaluation} == set(sv.DIRECTIONS)
