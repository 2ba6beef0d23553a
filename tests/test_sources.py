"""`--data_path` sources (llava.data.sources) and YAML mixtures (llava.data.mixture), on tiny generated data."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llava.data.mixture import parse_sampling
from llava.data.sources import Embedded, SampleSource, files_fingerprint, open_source


def conv(text: str = "hi") -> list[dict]:
    return [{"from": "human", "value": f"<image>\n{text}"}, {"from": "gpt", "value": "ok"}]


def write_samples(path, n: int, prefix: str = "s") -> list[dict]:
    samples = [{"id": f"{prefix}{i}", "conversations": conv(str(i))} for i in range(n)]
    path.write_text(json.dumps(samples))
    return samples


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "hf-cache")


def image_rows():
    return {
        "id": ["a", "b", "c"],
        "conversations": [
            conv("a"),
            conv("b"),
            [{"from": "human", "value": "text"}, {"from": "gpt", "value": "x"}],
        ],
        "image": [{"bytes": b"PNGA", "path": "x/a.png"}, {"bytes": b"PNGB", "path": None}, None],
        "data_source": ["one", "two", "three"],
    }


def image_features(image=None):
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "conversations": datasets.List(
                {"from": datasets.Value("string"), "value": datasets.Value("string")}
            ),
            "image": image or datasets.Image(),
            "data_source": datasets.Value("string"),
        }
    )


def test_json_and_jsonl_read_as_load_samples_does(tmp_path):
    samples = write_samples(tmp_path / "d.json", 3)
    src = open_source(tmp_path / "d.json")
    assert isinstance(src, SampleSource) and len(src) == 3
    assert list(src) == samples and src[-1] == samples[2] and src[0:2] == samples[:2]
    assert src.ids() == ["s0", "s1", "s2"]
    assert src.image_folder(0) is None and src.video_folder(0) is None
    assert src.describe(1) == f"row 1 of {tmp_path / 'd.json'}"
    with pytest.raises(IndexError, match="out of range"):
        src[3]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    assert list(open_source(tmp_path / "d.jsonl")) == samples
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        open_source(tmp_path / "bad.jsonl")


def test_json_fingerprint_follows_the_file(tmp_path):
    path = tmp_path / "d.json"
    write_samples(path, 2)
    first = open_source(path).fingerprint
    assert first == open_source(path).fingerprint == files_fingerprint([path])
    write_samples(path, 3)
    os.utime(path, ns=(1, 1))
    assert open_source(path).fingerprint != first


def test_parquet_rows_are_samples_with_embedded_images(tmp_path, cache):
    ds = datasets.Dataset.from_dict(image_rows(), features=image_features())
    ds.to_parquet(str(tmp_path / "train.parquet"))
    src = open_source(tmp_path / "train.parquet", cache_dir=cache)
    assert len(src) == 3 and src.ids() == ["a", "b", "c"]
    a, b, c = src
    assert a == {
        "id": "a",
        "conversations": conv("a"),
        "image": Embedded(b"PNGA", "x/a.png"),
        "data_source": "one",
    }
    assert b["image"] == Embedded(b"PNGB", None)
    assert "image" not in c and c["data_source"] == "three"
    assert repr(a["image"]) == "Embedded(4 bytes, name='x/a.png')"
    assert src.fingerprint == files_fingerprint([tmp_path / "train.parquet"])
    again = pickle.loads(pickle.dumps(src))  # what a DataLoader worker gets at spawn
    assert list(again) == [a, b, c]


def test_folder_and_glob_of_shards_read_in_name_order(tmp_path, cache):
    ds = datasets.Dataset.from_dict(image_rows(), features=image_features())
    (tmp_path / "shards" / "z").mkdir(parents=True)
    ds.select([2]).to_parquet(str(tmp_path / "shards" / "z" / "train-00001.parquet"))
    ds.select([0, 1]).to_parquet(str(tmp_path / "shards" / "train-00000.parquet"))
    shutil.copy(
        tmp_path / "shards" / "train-00000.parquet", tmp_path / "shards" / ".train-9.parquet"
    )  # hidden
    (tmp_path / "shards" / "convert_manifest.json").write_text("{}")
    src = open_source(tmp_path / "shards", cache_dir=cache)
    assert src.ids() == ["a", "b", "c"]
    assert open_source(str(tmp_path / "shards" / "**" / "*.parquet"), cache_dir=cache).ids() == [
        "a",
        "b",
        "c",
    ]
    assert len(src.files) == 2


def test_string_and_list_image_columns(tmp_path, cache):
    rows = {
        "id": ["m", "t", "n"],
        "conversations": [conv(), conv(), conv()],
        "image": [[{"bytes": b"1", "path": "1.png"}, {"bytes": None, "path": "2.png"}], [], None],
    }
    feats = image_features(datasets.List(datasets.Image()))
    del feats["data_source"]
    table = pa.Table.from_pydict(rows, schema=feats.arrow_schema)  # datasets would embed the named file
    pq.write_table(table, tmp_path / "l.parquet")
    m, t, n = open_source(tmp_path / "l.parquet", cache_dir=cache)
    assert m["image"] == [Embedded(b"1", "1.png"), "2.png"]  # a struct without bytes is a file name
    assert "image" not in t and "image" not in n
    names = {"id": ["p"], "conversations": [conv()], "image": ["coco/1.jpg"], "video": ["clips/v.mp4"]}
    datasets.Dataset.from_dict(names).to_parquet(str(tmp_path / "s.parquet"))
    (p,) = open_source(tmp_path / "s.parquet", cache_dir=cache)
    assert p["image"] == "coco/1.jpg" and p["video"] == "clips/v.mp4"


def test_arrow_shards_and_save_to_disk(tmp_path):
    ds = datasets.Dataset.from_dict(image_rows(), features=image_features())
    ds.save_to_disk(str(tmp_path / "saved"))
    src = open_source(tmp_path / "saved")
    assert src.ids() == ["a", "b", "c"] and src[0]["image"] == Embedded(
        b"PNGA", "a.png"
    )  # datasets keeps the base name
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    assert open_source(tmp_path / "dd").ids() == ["a", "b", "c"]
    datasets.DatasetDict({"val": ds}).save_to_disk(str(tmp_path / "noval"))
    with pytest.raises(ValueError, match=r"without a 'train' split \(splits: val\)"):
        open_source(tmp_path / "noval")
    (tmp_path / "arrows").mkdir()
    for k, part in enumerate([ds.select([0, 1]), ds.select([2])]):
        part.save_to_disk(str(tmp_path / f"p{k}"))
        shutil.copy(next((tmp_path / f"p{k}").glob("*.arrow")), tmp_path / "arrows" / f"data-{k}.arrow")
    src = open_source(tmp_path / "arrows")
    assert src.ids() == ["a", "b", "c"] and src[2]["data_source"] == "three"
    assert open_source(tmp_path / "arrows" / "data-1.arrow").ids() == ["c"]


def test_errors_name_the_path_and_what_is_accepted(tmp_path, cache):
    with pytest.raises(FileNotFoundError, match="nope.json does not exist.*accepted"):
        open_source(tmp_path / "nope.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .parquet or .arrow files"):
        open_source(tmp_path / "empty")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"unknown kind of file '\.csv'; accepted: a \.json"):
        open_source(tmp_path / "x.csv")
    with pytest.raises(FileNotFoundError, match="no files match"):
        open_source(str(tmp_path / "*.parquet"))
    with pytest.raises(ValueError, match="may only match .parquet or .arrow"):
        open_source(str(tmp_path / "*.csv"))
    datasets.Dataset.from_dict({"id": ["a"], "text": ["x"]}).to_parquet(str(tmp_path / "noconv.parquet"))
    with pytest.raises(ValueError, match="no 'conversations' column.*id, text"):
        open_source(tmp_path / "noconv.parquet", cache_dir=cache)
    (tmp_path / "mixed").mkdir()
    datasets.Dataset.from_dict({"id": ["a"], "conversations": [conv()]}).to_parquet(
        str(tmp_path / "mixed" / "0.parquet")
    )
    datasets.Dataset.from_dict({"id": ["b"], "conversations": [conv()], "image": ["x.png"]}).to_parquet(
        str(tmp_path / "mixed" / "1.parquet")
    )
    with pytest.raises(ValueError, match=r"shards .*0.parquet and .*1.parquet differ \(columns"):
        open_source(tmp_path / "mixed", cache_dir=cache)
    datasets.Dataset.from_dict({"id": [1], "conversations": [conv()]}).to_parquet(
        str(tmp_path / "mixed" / "1.parquet")
    )
    with pytest.raises(ValueError, match="id: string vs int64"):
        open_source(tmp_path / "mixed", cache_dir=cache)


# ------------------------------------------------------------------------------------------ mixtures
@pytest.fixture
def mix(tmp_path):
    write_samples(tmp_path / "a.json", 10, "a")
    write_samples(tmp_path / "b.json", 20, "b")

    def make(*entries, name="mix.yaml"):
        import yaml

        path = tmp_path / name
        path.write_text(yaml.safe_dump({"datasets": list(entries)}))
        return path

    return make


def ids(n0, n1, prefix):
    return [f"{prefix}{i}" for i in range(n0, n1)]


@pytest.mark.parametrize(
    "strategy, expected",
    [
        (None, ids(0, 10, "a")),
        ("all", ids(0, 10, "a")),
        ("first:3", ids(0, 3, "a")),
        ("first:25%", ids(0, 3, "a")),  # ceil(2.5), as LLaVA-NeXT
        ("end:4", ids(6, 10, "a")),
        ("end:10%", ids(9, 10, "a")),
        ("first:12.5%", ids(0, 2, "a")),
        ("first:50", ids(0, 10, "a")),  # more than there are: all
    ],
)
def test_mixture_sampling_strategies(mix, tmp_path, strategy, expected):
    entry = {"json_path": str(tmp_path / "a.json")} | ({"sampling_strategy": strategy} if strategy else {})
    src = open_source(mix(entry, {"json_path": str(tmp_path / "b.json"), "sampling_strategy": "first:2"}))
    assert src.ids() == expected + ["b0", "b1"]
    assert [s["id"] for s in src] == src.ids()


def test_random_sampling_is_seeded_and_independent_of_entry_order(mix, tmp_path):
    a = {"json_path": str(tmp_path / "a.json"), "sampling_strategy": "random:4"}
    b = {"json_path": str(tmp_path / "b.json"), "sampling_strategy": "random:50%"}
    one = open_source(mix(a, b), seed=3)
    picked_a, picked_b = one.ids()[:4], one.ids()[4:]
    assert len(set(picked_a)) == 4 and set(picked_a) <= set(ids(0, 10, "a")) and len(picked_b) == 10
    assert picked_a == sorted(picked_a, key=lambda s: int(s[1:]))  # kept in file order
    assert open_source(mix(a, b), seed=3).ids() == one.ids()
    swapped = open_source(mix(b, a, name="swapped.yaml"), seed=3).ids()
    assert swapped[:10] == picked_b and swapped[10:] == picked_a
    others = {tuple(open_source(mix(a, b), seed=s).ids()) for s in range(4, 9)}
    assert any(o != tuple(one.ids()) for o in others)
    assert one.fingerprint != open_source(mix(a, b), seed=4).fingerprint
    first = mix({"json_path": str(tmp_path / "a.json"), "sampling_strategy": "first:2"}, name="f.yaml")
    assert (
        open_source(first, seed=1).fingerprint == open_source(first, seed=2).fingerprint
    )  # no random: no seed


def test_mixture_folders_nesting_and_relative_paths(mix, tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "sub").mkdir()
    write_samples(tmp_path / "sub" / "c.json", 2, "c")
    (tmp_path / "sub" / "inner.yaml").write_text(
        "datasets:\n  - json_path: c.json\n    image_folder: /data/c\n"
    )
    src = open_source(
        mix(
            {
                "json_path": "a.json",
                "sampling_strategy": "first:1",
                "image_folder": "imgs",
                "video_folder": "/v",
            },
            {"json_path": "sub/inner.yaml"},
            {"json_path": str(tmp_path / "b.json"), "sampling_strategy": "end:1"},
        )
    )
    assert src.ids() == ["a0", "c0", "c1", "b19"]
    assert src.image_folder(0) == str(tmp_path / "imgs") and src.video_folder(0) == "/v"
    assert src.image_folder(1) == "/data/c" and src.video_folder(1) is None
    assert src.image_folder(3) is None
    inner, row = src.locate(2)
    assert inner.name == str(tmp_path / "sub" / "c.json") and row == 1
    assert src.describe(3) == f"row 19 of {tmp_path / 'b.json'}"
    assert len(src.entries) == 3


@pytest.mark.parametrize(
    "entry, error",
    [
        (
            {"json_path": "a.json", "sampling_strategy": "half"},
            r"entry 1 \(json_path a.json\): sampling_strategy 'half'",
        ),
        ({"json_path": "a.json", "sampling_strategy": "first:0%"}, "above 0 and at most 100"),
        ({"json_path": "a.json", "sampling_strategy": "first:120%"}, "at most 100"),
        ({"json_path": "a.json", "sampling_strategy": "end:0"}, "at least 1"),
        ({"json_path": "a.json", "sampling_strategy": "random:1.5"}, "whole number"),
        (
            {"json_path": "a.json", "sampling_stratgy": "all"},
            "unknown key.*'sampling_stratgy'; accepted: json_path",
        ),
        ({"sampling_strategy": "all"}, "entry 1 needs a json_path"),
        ("a.json", "entry 1 must be a mapping"),
        ({"json_path": "a.json", "image_folder": 3}, "image_folder must be a folder path"),
    ],
)
def test_mixture_entry_errors_name_the_yaml_and_entry(mix, entry, error):
    path = mix(entry)
    with pytest.raises(ValueError, match=error) as e:
        open_source(path)
    assert str(path) in str(e.value)


def test_mixture_file_errors(mix, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mix.yaml: entry 2 \(json_path gone.json\).*does not exist"):
        open_source(mix({"json_path": "a.json"}, {"json_path": "gone.json"}))
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match=r"entry 1 \(json_path bad.json\).*holds no samples"):
        open_source(mix({"json_path": "bad.json"}))
    for text in ("datasets: []\n", "- json_path: a.json\n", "{}\n"):
        (tmp_path / "m.yml").write_text(text)
        with pytest.raises(ValueError, match="m.yml: a mixture needs a non-empty 'datasets:' list"):
            open_source(tmp_path / "m.yml")
    (tmp_path / "m.yml").write_text("datasets: [\n")
    with pytest.raises(ValueError, match="m.yml: not valid YAML"):
        open_source(tmp_path / "m.yml")
    (tmp_path / "self.yaml").write_text("datasets:\n  - json_path: self.yaml\n")
    with pytest.raises(ValueError, match="includes itself"):
        open_source(tmp_path / "self.yaml")


def test_mixture_of_parquet_and_json(mix, tmp_path, cache):
    datasets.Dataset.from_dict(image_rows(), features=image_features()).to_parquet(
        str(tmp_path / "p.parquet")
    )
    src = open_source(mix({"json_path": "p.parquet", "sampling_strategy": "end:2"}, {"json_path": "a.json",
                           "sampling_strategy": "first:1"}), cache_dir=cache)  # fmt: skip
    assert src.ids() == ["b", "c", "a0"]
    assert src[0]["image"] == Embedded(b"PNGB", None)


def test_parse_sampling():
    assert parse_sampling("first:10%").count(15) == 2
    assert parse_sampling(" random : 3 ").count(2) == 2
    assert parse_sampling("all").count(7) == 7
