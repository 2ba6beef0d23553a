"""JsonSource's compact index (the file's bytes + an offsets array) gives exactly what json.load gives,
fails with load_samples' errors, and the prepared dataset keeps no per-sample Python objects."""

import json
import pickle
import random

import numpy as np
import pytest

from llava.data import sources
from llava.data.dataset import LazySupervisedDataset, RaggedInts, SampleView, load_samples
from llava.data.sample_format import SampleFormat
from llava.data.sources import JsonSource, open_source
from llava.train.arguments import DataArguments
from llava.utils.jsonfiles import read_jsonl

UNICODE = [
    "naïve café",
    "日本語の説明",
    "🙂 emoji",
    "\u2028 line sep",
    "tab\there",
    'quote " and \\ slash',
    "",
]


def random_value(rng: random.Random, depth: int = 0):
    """A random JSON value: nested objects and lists, unicode and escaped strings, numbers, literals."""
    kinds = ["str", "int", "float", "bool", "null"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        return rng.choice(UNICODE) + str(rng.randint(0, 99))
    if kind == "int":
        return rng.randint(-(10**20), 10**20)
    if kind == "float":
        return rng.choice([0.5, -1e-7, 3.14159, 1e300])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(UNICODE) + str(k): random_value(rng, depth + 1) for k in range(rng.randint(0, 3))}


def random_samples(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        turns = [
            {"from": "human", "value": "<image>\n" + rng.choice(UNICODE)},
            {"from": "gpt", "value": "ok"},
        ]
        sample = {"id": f"s{i}", "conversations": turns, "extra": random_value(rng)}
        if rng.random() < 0.7:
            sample["image"] = f"coco/{i:06d}.jpg"
        out.append(sample)
    return out


SAMPLES = random_samples(40)
JSON_TEXTS = {
    "compact": json.dumps(SAMPLES, separators=(",", ":")),
    "indented": json.dumps(SAMPLES, indent=2) + "\n",
    "raw unicode": json.dumps(SAMPLES, ensure_ascii=False, indent="\t"),
    "crlf and spaces": "\r\n [ \r\n"
    + ",\r\n\t ".join(json.dumps(s, ensure_ascii=False) for s in SAMPLES)
    + " ]\r\n\n",
    "one sample": json.dumps(SAMPLES[:1]),
}


@pytest.mark.parametrize("window", [5, 64, 1 << 24])
@pytest.mark.parametrize("kind", sorted(JSON_TEXTS))
def test_a_json_list_reads_exactly_as_json_load(tmp_path, monkeypatch, kind, window):
    """Every sample equal to json.load's, whatever the layout and wherever a decoding window ends
    (5 bytes: inside every object, string and multi-byte character)."""
    monkeypatch.setattr(sources, "JSON_WINDOW", window)
    path = tmp_path / "d.json"
    path.write_text(JSON_TEXTS[kind], encoding="utf-8")
    expected = json.loads(path.read_text(encoding="utf-8"))
    src = JsonSource(path)
    assert len(src) == len(expected)
    assert list(src) == expected and src[-1] == expected[-1]
    assert src.ids() == [s["id"] for s in expected]


@pytest.mark.parametrize(
    "text",
    [
        "".join(json.dumps(s) + "\n" for s in SAMPLES),
        "".join(json.dumps(s, ensure_ascii=False) + "\r\n" for s in SAMPLES) + "\n  \n",
        "\n\n" + "\n \t\n".join(json.dumps(s, ensure_ascii=False, indent=None) for s in SAMPLES),
        '{"id": "a"}\r{"id": "b"}\r\n{"id": "c"}',  # lone \r ends a line in text mode, as read_jsonl reads
    ],
    ids=["plain", "crlf-blank-lines", "no-trailing-newline", "lone-cr"],
)
def test_json_lines_read_exactly_as_read_jsonl(tmp_path, text):
    path = tmp_path / "d.jsonl"
    path.write_bytes(text.encode("utf-8"))
    expected = read_jsonl(path)
    src = open_source(path)
    assert isinstance(src, JsonSource) and list(src) == expected and len(src) == len(expected)


BAD_FILES = {
    "truncated.json": json.dumps(SAMPLES)[:-30].encode(),
    "object.json": b'{"id": "a", "conversations": []}',
    "numbers.json": b"[1, 2, 3]",
    "mixed.json": b'[{"id": "a"}, 7]',
    "mixed-then-invalid.json": b'[{"id": "a"}, 7, {oops}]',  # json.load's error comes first
    "empty-list.json": b" [ ] \n",
    "empty.json": b"",
    "bom.json": "\ufeff[{}]".encode(),
    "trailing-comma.json": b'[{"id": "a"},]',
    "extra-data.json": b'[{"id": "a"}] [{"id": "b"}]',
    "two-commas.json": b'[{"id": "a"},,{"id": "b"}]',
    "not-utf8.json": b'[{"id": "\xff"}]',
    "bad-line.jsonl": b'{"id": 1}\n{oops\n{"id": 3}\n',
    "cut-last-line.jsonl": b'{"id": 1}\n{"id": 2',
    "list-line.jsonl": b'{"id": 1}\n[1, 2]\n',
    "blank.jsonl": b"\n \n\t\n",
    "empty.jsonl": b"",
    "not-utf8.jsonl": b'{"id": "\xfe"}\n',
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_fail_with_load_samples_errors(tmp_path, monkeypatch, name):
    monkeypatch.setattr(sources, "JSON_WINDOW", 8)  # errors found inside a later window too
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name])
    with pytest.raises(ValueError) as expected:
        load_samples(path)
    with pytest.raises(ValueError) as got:
        JsonSource(path)
    assert type(got.value) is type(expected.value) and str(got.value) == str(expected.value)
    assert name in str(got.value)


def test_a_missing_file_fails_as_before(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data_path .*nowhere.json does not exist"):
        JsonSource(tmp_path / "nowhere.json")


def test_the_index_is_bytes_and_an_offsets_array_and_survives_pickling(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(JSON_TEXTS["raw unicode"], encoding="utf-8")
    src = JsonSource(path)
    assert isinstance(src._data, bytes) and src._data == path.read_bytes()
    assert src._offsets.dtype == np.int64 and src._offsets.shape == (len(SAMPLES), 2)
    first = src._data[src._offsets[0, 0] : src._offsets[0, 1]]
    assert first.startswith(b"{") and first.endswith(b"}") and json.loads(first) == SAMPLES[0]
    assert not hasattr(src, "samples")
    again = pickle.loads(pickle.dumps(src))  # what a spawned DataLoader worker receives
    assert list(again) == SAMPLES and again.fingerprint == src.fingerprint


def test_ragged_ints_take():
    ragged = RaggedInts.from_lists([[576], [], [1, 2, 3], [9]])
    assert [ragged[i] for i in range(len(ragged))] == [[576], [], [1, 2, 3], [9]]
    picked = ragged.take(np.array([2, 0, 1, 2], dtype=np.int64))
    assert list(picked) == [[1, 2, 3], [576], [], [1, 2, 3]]
    assert picked.flat.dtype == np.int64 and picked.offsets.tolist() == [0, 3, 4, 4, 7]


def test_prepared_dataset_index_is_numpy(tmp_path, kit_tokenizer, kit_processor):
    """After prepare() the per-sample state is arrays (no Python list or dict per sample); a bad
    sample dropped by --skip_bad_samples takes its row, length, modality and visual costs with it."""
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "img" / "a.png")
    human, gpt = {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A red square."}
    samples = [
        {"id": "a", "image": "a.png", "conversations": [human, gpt]},
        {"id": "t", "conversations": [{"from": "human", "value": "Hi there"}, gpt]},
        {"id": "bad", "image": "missing.png", "conversations": [human, gpt]},
        {"id": "b", "image": "a.png", "conversations": [human, gpt, human | {"value": "More?"}, gpt]},
    ]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(samples))
    args = DataArguments(data_path=str(path), image_folder=str(tmp_path / "img"), skip_bad_samples=True)
    fmt = SampleFormat(
        "v1",
        kit_tokenizer.model_max_length,
        is_multimodal=True,
        num_image_tokens=16,
        image_processor=kit_processor,
    )
    ds = LazySupervisedDataset(str(path), kit_tokenizer, args, fmt)
    ds.prepare()
    assert isinstance(ds.list_data_dict, SampleView) and ds.list_data_dict.rows.tolist() == [0, 1, 3]
    assert ds._has_visuals.dtype == bool and ds._has_visuals.tolist() == [True, False, True]
    assert ds._text_lengths.dtype == np.int64 and ds._token_rows.dtype == np.int64
    assert ds._token_rows.tolist() == [0, 1, 3]  # rows of the token store (which holds the bad one too)
    assert isinstance(ds._visual_tokens, RaggedInts) and list(ds._visual_tokens) == [[16], [], [16]]
    assert [s["id"] for s in ds.list_data_dict] == ["a", "t", "b"]
    lengths = ds.lengths
    assert all(type(n) is int for n in lengths) and ds.modality_lengths == [
        lengths[0],
        -lengths[1],
        lengths[2],
    ]
    for i in range(len(ds)):
        item = ds[i]
        assert item["length"] == lengths[i] and int((item["input_ids"] == -200).sum()) == (i != 1)
    assert ds._text_lengths.tolist() == [n - (16 if v else 0) for n, v in zip(lengths, [True, False, True])]
