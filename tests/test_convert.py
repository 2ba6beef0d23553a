"""`python -m llava.data.convert` (llava.data.tools.convert): JSON + folder -> parquet shards -> back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from PIL import Image

from llava.data.sources import Embedded, open_source
from llava.data.tools import convert as C
from llava.utils.jsonfiles import read_json

REPO = Path(__file__).resolve().parents[1]
FAKE_MP4 = b"\x00\x00\x00\x18ftypmp42" + bytes(range(200))


def conv(n: int = 1, text: str = "q") -> list[dict]:
    return [{"from": "human", "value": "<image>\n" * n + text}, {"from": "gpt", "value": "a " + text}]


def write_image(path: Path, colour, fmt: str = "PNG", size=(24, 16)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path.read_bytes()


@pytest.fixture
def data(tmp_path):
    """A JSON + image folder + video folder: one image, several images, text-only, a video, a shared image."""
    images, videos = tmp_path / "images", tmp_path / "videos"
    write_image(images / "coco" / "a.png", (255, 0, 0))
    write_image(images / "coco" / "b.jpg", (0, 255, 0), "JPEG")
    write_image(images / "c.png", (0, 0, 255), size=(300, 200))
    (videos / "clips").mkdir(parents=True)
    (videos / "clips" / "v.mp4").write_bytes(FAKE_MP4)
    samples = [
        {"id": "single", "image": "coco/a.png", "conversations": conv()},
        {"id": "multi", "image": ["coco/b.jpg", "c.png"], "conversations": conv(2)},
        {"id": "text", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
        {"id": "video", "video": "clips/v.mp4", "conversations": conv()},
        {"id": "again", "image": "coco/a.png", "conversations": conv(1, "z"), "data_source": "mine"},
    ]
    (tmp_path / "data.json").write_text(json.dumps(samples))
    return tmp_path / "data.json", images, videos, samples


def normalised(samples: list[dict]) -> list[dict]:
    """As a List(Image()) column reads back: every image sample's `image` a list."""
    return [{**s, "image": s["image"] if isinstance(s["image"], list) else [s["image"]]} if "image" in s else s
            for s in samples]  # fmt: skip


def convert(data, out, **kw):
    path, images, videos, _ = data
    return C.convert_to_parquet(path, out, images, videos, progress=False, **kw)


def test_convert_gives_the_same_samples_with_the_image_bytes(data, tmp_path):
    path, images, videos, samples = data
    shards = convert(data, tmp_path / "out")
    assert [p.name for p in shards] == ["train-00000.parquet"]
    src = open_source(tmp_path / "out", cache_dir=str(tmp_path / "cache"))
    assert src.ids() == [s["id"] for s in samples]
    got = list(src)
    for s, g in zip(samples, got):
        assert g["conversations"] == s["conversations"]
        names = s["image"] if isinstance(s.get("image"), list) else [s["image"]] if "image" in s else []
        assert g.get("image", []) == [Embedded((images / n).read_bytes(), n) for n in names]
    assert got[3]["video"] == "clips/v.mp4" and "image" not in got[3] and "video" not in got[0]
    assert got[4]["data_source"] == "mine" and "data_source" not in got[0]
    manifest = read_json(tmp_path / "out" / C.MANIFEST)
    assert manifest["complete"] and manifest["shards"][0] | {"bytes": 0} == {
        "file": "train-00000.parquet", "start": 0, "end": 5, "bytes": 0}  # fmt: skip


def test_plain_datasets_sees_image_features(data, tmp_path):
    convert(data, tmp_path / "out")
    ds = datasets.load_dataset(
        "parquet",
        data_files=str(tmp_path / "out" / "*.parquet"),
        split="train",
        cache_dir=str(tmp_path / "c"),
    )
    assert ds.features["image"] == datasets.List(datasets.Image())
    assert ds.features["video"] == datasets.Value("string")
    assert ds.features["conversations"] == datasets.List(
        {"from": datasets.Value("string"), "value": datasets.Value("string")}
    )
    first = ds[1]["image"]
    assert [im.size for im in first] == [(24, 16), (300, 200)]
    assert ds[2]["image"] is None


def test_single_image_data_gets_an_image_column_and_round_trips_exactly(data, tmp_path):
    path, images, videos, samples = data
    only = [s for s in samples if not isinstance(s.get("image"), list)]
    (tmp_path / "only.json").write_text(json.dumps(only))
    C.convert_to_parquet(tmp_path / "only.json", tmp_path / "out", images, videos, progress=False)
    ds = datasets.load_dataset(
        "parquet", data_dir=str(tmp_path / "out"), split="train", cache_dir=str(tmp_path / "c")
    )
    assert ds.features["image"] == datasets.Image()
    C.convert_to_json(tmp_path / "out", tmp_path / "back.json", tmp_path / "img2", progress=False,
                      cache_dir=str(tmp_path / "c"))  # fmt: skip
    assert read_json(tmp_path / "back.json") == only
    assert (tmp_path / "img2" / "coco" / "a.png").read_bytes() == (images / "coco" / "a.png").read_bytes()


def test_round_trip_to_json_and_folder(data, tmp_path):
    path, images, videos, samples = data
    convert(data, tmp_path / "out", embed_videos=True)
    back = C.convert_to_json(tmp_path / "out", tmp_path / "back.json", tmp_path / "img2", tmp_path / "vid2",
                             progress=False, cache_dir=str(tmp_path / "c"))  # fmt: skip
    assert read_json(back) == normalised(samples)
    for name in ("coco/a.png", "coco/b.jpg", "c.png"):
        assert (tmp_path / "img2" / name).read_bytes() == (images / name).read_bytes()
    assert (tmp_path / "vid2" / "clips" / "v.mp4").read_bytes() == FAKE_MP4
    (tmp_path / "img2" / "c.png").write_bytes(b"other")
    with pytest.raises(C.ConvertError, match=r"sample 'multi' .*c.png already exists with other bytes"):
        C.convert_to_json(tmp_path / "out", tmp_path / "back.json", tmp_path / "img2", tmp_path / "vid2",
                          progress=False, cache_dir=str(tmp_path / "c"))  # fmt: skip


def test_embedded_videos_and_unnamed_images(data, tmp_path):
    convert(data, tmp_path / "out", embed_videos=True)
    ds = datasets.load_dataset(
        "parquet", data_dir=str(tmp_path / "out"), split="train", cache_dir=str(tmp_path / "c")
    )
    assert ds.features["video"] == {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    src = open_source(tmp_path / "out", cache_dir=str(tmp_path / "c"))
    assert src[3]["video"] == Embedded(FAKE_MP4, "clips/v.mp4")
    png = write_image(tmp_path / "x.png", (1, 2, 3))
    rows = {"id": ["p/1", "p2"], "conversations": [conv(2), conv()],
            "image": [[{"bytes": png, "path": None}, {"bytes": png, "path": "/abs/x.png"}], [{"bytes": png, "path": "../up.png"}]]}  # fmt: skip
    feats = datasets.Features({"id": datasets.Value("string"), "conversations": ds.features["conversations"],
                               "image": datasets.List(datasets.Image())})  # fmt: skip
    datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(tmp_path / "hf.parquet"))
    C.convert_to_json(tmp_path / "hf.parquet", tmp_path / "hf.json", tmp_path / "out_img", progress=False,
                      cache_dir=str(tmp_path / "c"))  # fmt: skip
    back = read_json(tmp_path / "hf.json")
    assert back[0]["image"] == ["p_1_0.png", "p_1_1.png"]  # no path, an absolute one: named by the id
    assert back[1]["image"] == ["p2_0.png"]  # a path leaving the folder: not followed
    for s in back:
        for name in s["image"]:
            assert (tmp_path / "out_img" / name).read_bytes() == png
    assert not (tmp_path / "up.png").exists()


def test_shards_by_size_and_resume_after_a_kill(data, tmp_path, monkeypatch):
    clean = convert(data, tmp_path / "clean", max_shard_size="1KB")
    assert len(clean) >= 3
    manifest = read_json(tmp_path / "clean" / C.MANIFEST)
    ends = [s["end"] for s in manifest["shards"]]
    assert [s["start"] for s in manifest["shards"]] == [0, *ends[:-1]] and ends[-1] == 5

    real, calls = C._write_shard, []

    def dies_after_the_first(*args, **kw):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(C, "_write_shard", dies_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        convert(data, tmp_path / "resumed", max_shard_size="1KB")
    done = read_json(tmp_path / "resumed" / C.MANIFEST)
    assert len(done["shards"]) == 1 and not done["complete"]
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == [C.MANIFEST, "train-00000.parquet"]
    monkeypatch.setattr(C, "_write_shard", real)
    (tmp_path / "resumed" / ".train-00001.parquet.0123456789ab.tmp").write_bytes(
        b"half"
    )  # a kill -9's leftover
    first_shard = (tmp_path / "resumed" / "train-00000.parquet").stat().st_mtime_ns
    resumed = convert(data, tmp_path / "resumed", max_shard_size="1KB")
    assert [p.name for p in resumed] == [p.name for p in clean]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(clean, resumed))
    assert (tmp_path / "resumed" / "train-00000.parquet").stat().st_mtime_ns == first_shard  # skipped
    assert read_json(tmp_path / "resumed" / C.MANIFEST) == manifest
    assert not list((tmp_path / "resumed").glob(".*"))
    assert convert(data, tmp_path / "resumed", max_shard_size="1KB") == resumed  # complete: nothing to do


def test_a_changed_input_or_options_are_refused(data, tmp_path):
    path, images, videos, samples = data
    convert(data, tmp_path / "out")
    with pytest.raises(C.ConvertError, match="max_shard_size was 500000000, now 1000"):
        convert(data, tmp_path / "out", max_shard_size="1KB")
    path.write_text(json.dumps(samples[:2]))
    with pytest.raises(C.ConvertError, match=r"the input .*data.json changed.*Delete .*out to start over"):
        convert(data, tmp_path / "out")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.parquet").write_bytes(b"")
    with pytest.raises(C.ConvertError, match=f"already holds x.parquet but no {C.MANIFEST}"):
        convert(data, tmp_path / "foreign")


def test_conversion_errors_name_the_sample(data, tmp_path):
    path, images, videos, samples = data
    (images / "c.png").unlink()
    with pytest.raises(C.ConvertError, match=r"sample 'multi' \(index 1, row 1 of .*data.json\): image file .*c.png not found \(check --image_folder\)"):  # fmt: skip
        convert(data, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.parquet")) and not list((tmp_path / "out").glob(".*"))
    write_image(images / "c.png", (0, 0, 255))
    (videos / "frames").mkdir()
    samples[3]["video"] = "frames"
    path.write_text(json.dumps(samples))
    with pytest.raises(C.ConvertError, match="sample 'video' .*is a folder of frames; --embed_videos embeds video files only"):  # fmt: skip
        convert(data, tmp_path / "out2", embed_videos=True)
    samples[0]["data_source"] = 3
    path.write_text(json.dumps(samples))
    with pytest.raises(C.ConvertError, match="field 'data_source' holds values of different types"):
        convert(data, tmp_path / "out3")
    (tmp_path / "noconv.json").write_text(json.dumps([{"id": "x"}]))
    with pytest.raises(C.ConvertError, match="no sample has 'conversations'"):
        C.convert_to_parquet(tmp_path / "noconv.json", tmp_path / "out4", progress=False)


@pytest.mark.parametrize("text, size", [("500MB", 500 * 10**6), ("1.5GB", 15 * 10**8), ("512MiB", 512 * 2**20), ("1000", 1000)])  # fmt: skip
def test_parse_size(text, size):
    assert C.parse_size(text) == size


@pytest.mark.parametrize("text", ["big", "0MB", "-1", "5 PB"])
def test_parse_size_rejects(text):
    with pytest.raises(C.ConvertError, match="--max_shard_size"):
        C.parse_size(text)


def test_command_line(data, tmp_path, capsys):
    path, images, videos, samples = data
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "llava.data.convert", "--data_path", str(path), "--image_folder", str(images),
           "--video_folder", str(videos), "--output_dir", str(out), "--max_shard_size", "2KB"]  # fmt: skip
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "wrote 5 samples to" in run.stdout and (out / "train-00000.parquet").is_file()
    code = C.main(["--data_path", str(out), "--to_json", str(tmp_path / "b.json"), "--image_folder",
                   str(tmp_path / "i"), "--cache_dir", str(tmp_path / "c")])  # fmt: skip
    assert code == 0 and read_json(tmp_path / "b.json") == normalised(samples)
    assert C.main(["--data_path", str(tmp_path / "nope.json"), "--output_dir", str(tmp_path / "o")]) == 1
    assert "nope.json does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        C.main(["--data_path", str(path)])  # neither --output_dir nor --to_json
    with pytest.raises(SystemExit):
        C.main(["--data_path", str(out), "--to_json", str(tmp_path / "b.json")])  # no --image_folder
