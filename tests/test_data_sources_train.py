"""Training reads every --data_path form the same way: a LLaVA JSON + image folder, its parquet conversion
(images embedded, `python -m llava.data.convert`) and a YAML mixture give the same ids, labels, pixels,
lengths and batches for the same seed, byte for byte (text-only, one image, several images)."""

import json

import pytest
import torch
from PIL import Image

from llava.data.collator import DataCollatorForSupervisedDataset
from llava.data.dataset import LazySupervisedDataset
from llava.data.sample_format import SampleFormat
from llava.train.arguments import DataArguments
from llava.train.sampler import LengthGroupedSampler


def _turns(human, reply):
    return [{"from": "human", "value": human}, {"from": "gpt", "value": reply}]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    for k, size in enumerate([(50, 20), (20, 70), (32, 32), (77, 41)]):
        Image.new("RGB", size, (60 * k, 200 - 40 * k, 90)).save(images / "sub" / f"p{k}.png")
    samples = []
    for i in range(12):
        kind = i % 3
        if kind == 0:
            samples.append({"id": f"t{i}", "conversations": _turns("Say hi.", "hi " * (1 + i))})
        elif kind == 1:
            samples.append({"id": f"i{i}", "image": f"sub/p{i % 4}.png",
                            "conversations": _turns("<image>\nWhat colour?", "red " * (1 + i % 5))})
        else:
            samples.append({"id": f"m{i}", "image": [f"sub/p{i % 4}.png", f"sub/p{(i + 1) % 4}.png"],
                            "conversations": _turns("<image> then <image>: same?", "No.")})  # fmt: skip
    path = root / "data.json"
    path.write_text(json.dumps(samples))
    return root, path, images


@pytest.fixture(scope="module")
def fmt(kit_tokenizer, kit_processor):
    return SampleFormat("v1", 256, is_multimodal=True, image_aspect_ratio="pad", num_image_tokens=16,
                        image_processor=kit_processor, crop_size=32)  # fmt: skip


def _dataset(path, tok, fmt, image_folder, cache):
    args = DataArguments(data_path=str(path), image_folder=image_folder, lengths_cache_dir=str(cache))
    ds = LazySupervisedDataset(str(path), tok, args, fmt)
    ds.prepare()
    return ds


def _batches(ds, tok, fmt, seed=0):
    order = list(LengthGroupedSampler(4, 1, lengths=ds.modality_lengths, group_by_modality=True, seed=seed))
    collate = DataCollatorForSupervisedDataset(tokenizer=tok, sample_format=fmt)
    return order, [collate([ds[i] for i in order[k : k + 4]]) for k in range(0, len(order), 4)]


def _same_batch(a, b):
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y), key
        elif isinstance(x, list) and x and isinstance(x[0], torch.Tensor):
            assert all(torch.equal(p, q) for p, q in zip(x, y, strict=True)), key
        else:
            assert x == y, key


def test_json_parquet_and_a_mixture_give_the_same_batches(data, kit_tokenizer, fmt, tmp_path):
    from llava.data.tools.convert import convert_to_parquet

    root, path, images = data
    shards = tmp_path / "shards"
    convert_to_parquet(path, shards, image_folder=str(images), max_shard_size="2KB", progress=False)
    assert len(list(shards.glob("*.parquet"))) > 1  # several shards
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"datasets:\n  - json_path: {path}\n    sampling_strategy: all\n    image_folder: {images}\n")

    from_json = _dataset(path, kit_tokenizer, fmt, str(images), tmp_path / "c1")
    from_parquet = _dataset(shards, kit_tokenizer, fmt, None, tmp_path / "c2")  # no image folder: embedded
    from_glob = _dataset(str(shards / "*.parquet"), kit_tokenizer, fmt, None, tmp_path / "c3")
    from_mixture = _dataset(mix, kit_tokenizer, fmt, "/nonexistent", tmp_path / "c4")  # the entry's folder wins
    reference = _batches(from_json, kit_tokenizer, fmt)
    for other in (from_parquet, from_glob, from_mixture):
        assert [s["id"] for s in other.list_data_dict] == [s["id"] for s in from_json.list_data_dict]
        assert other.lengths == from_json.lengths
        order, batches = _batches(other, kit_tokenizer, fmt)
        assert order == reference[0]
        for a, b in zip(batches, reference[1], strict=True):
            _same_batch(a, b)
    assert any(isinstance(b["images"], torch.Tensor) and b["images"].shape[0] > 4 for b in reference[1])


def test_a_broken_embedded_image_names_the_sample_and_row(data, kit_tokenizer, fmt, tmp_path):
    from llava.data.dataset import BadSampleError
    from llava.data.tools.convert import convert_to_parquet

    root, path, images = data
    samples = json.loads(path.read_text())[:3]
    import shutil

    broken = tmp_path / "img"
    shutil.copytree(images, broken)
    (broken / "sub" / "p1.png").write_bytes(b"not a png")
    small = tmp_path / "small.json"
    small.write_text(json.dumps(samples))
    convert_to_parquet(small, tmp_path / "shards", image_folder=str(broken), progress=False)
    args = DataArguments(data_path=str(tmp_path / "shards"), lengths_cache_dir=str(tmp_path / "c"))
    ds = LazySupervisedDataset(str(tmp_path / "shards"), kit_tokenizer, args, fmt)
    ds.prepare()  # pad mode reads no pixels before training
    with pytest.raises(BadSampleError, match=r"sample 'i1' \(index 1, row 1 of .*shards\).*sub/p1.png.*cannot be read"):
        ds[1]


def test_validate_reads_every_form_and_counts_as_training(data, kit_tokenizer, fmt, tmp_path):
    from llava.data.tools.convert import convert_to_parquet
    from llava.data.tools.validate import validate
    from llava.data.tools.validate_inputs import read_samples

    root, path, images = data
    convert_to_parquet(path, tmp_path / "shards", image_folder=str(images), progress=False)
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"datasets:\n  - json_path: {path}\n    sampling_strategy: first:50%\n    image_folder: {images}\n")
    reference = validate(read_samples(path), str(images), kit_tokenizer, sample_format=fmt, image_check="decode")
    assert reference.num_errors == 0 and len(reference.token_counts) == 12
    for form, folder, n in ((tmp_path / "shards", None, 12), (mix, None, 6)):
        report = validate(read_samples(form), folder, kit_tokenizer, sample_format=fmt, image_check="decode")
        assert report.num_errors == 0, report.summary()
        assert report.token_counts == {i: reference.token_counts[i] for i in range(n)}
