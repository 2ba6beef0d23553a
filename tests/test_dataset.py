"""LazySupervisedDataset, the token-length cache and the collator, on tiny generated data."""

import json
from pathlib import Path

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.data import length_cache
from llava.data.collator import DataCollatorForSupervisedDataset
from llava.data.dataset import BadSampleError, LazySupervisedDataset, make_supervised_data_module
from llava.data.sample_format import SampleFormat
from llava.train.arguments import DataArguments

N_IMAGE_TOKENS = 16


@pytest.fixture(scope="module")
def tokenizer(kit_tokenizer):
    return kit_tokenizer


@pytest.fixture(scope="module")
def processor(kit_processor):
    return kit_processor


@pytest.fixture()
def data(tmp_path):
    from llava.data.tools.synthetic import generate

    return generate(tmp_path / "data", n_train=10, n_eval=0, text_only_fraction=0.3, seed=1, progress=False)


def _args(data, processor, path_key="finetune", **kw):
    return DataArguments(data_path=str(data[path_key]), image_folder=str(data["images"]), **kw)


def _fmt(args, processor, template, tokenizer, num_image_tokens=N_IMAGE_TOKENS):
    return SampleFormat(
        template,
        tokenizer.model_max_length,
        is_multimodal=True,
        image_aspect_ratio=args.image_aspect_ratio,
        num_image_tokens=num_image_tokens,
        image_processor=processor,
    )


def _dataset(path, tokenizer, args, processor, template, **kw):
    return LazySupervisedDataset(str(path), tokenizer, args, _fmt(args, processor, template, tokenizer, **kw))


def _write(path: Path, samples) -> Path:
    path.write_text(json.dumps(samples))
    return path


def test_lengths_are_real_token_counts_and_modality_signed(data, processor, tokenizer):
    ds = _dataset(data["finetune"], tokenizer, _args(data, processor), processor, "v1")
    lengths, modality = ds.lengths, ds.modality_lengths
    assert len(lengths) == len(ds) == 13
    n_text = 0
    for i in range(len(ds)):
        item = ds[i]
        text_tokens = int((item["input_ids"] != IMAGE_TOKEN_INDEX).sum())
        has_image = "image" in ds.list_data_dict[i]
        assert lengths[i] == text_tokens + (N_IMAGE_TOKENS if has_image else 0)
        assert modality[i] == (lengths[i] if has_image else -lengths[i])
        n_text += not has_image
    assert n_text == 3


def test_length_cache_next_to_data_keyed_by_template_and_tokenizer(data, processor, tokenizer, monkeypatch):
    args = _args(data, processor)
    first = _dataset(data["finetune"], tokenizer, args, processor, "v1").lengths
    caches = list((data["finetune"].parent / ".llava_cache").glob("finetune.json.*.lengths.json"))
    assert len(caches) == 1

    def no_counting(*a, **k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(length_cache, "count_all", no_counting)
    assert _dataset(data["finetune"], tokenizer, args, processor, "v1").lengths == first
    monkeypatch.undo()
    # another template renders other tokens: a new cache file, other lengths
    other = _dataset(data["finetune"], tokenizer, args, processor, "llava_llama_2").lengths
    assert other != first
    assert len(list((data["finetune"].parent / ".llava_cache").glob("*.lengths.json"))) == 2
    short = type(tokenizer).from_pretrained(tokenizer.name_or_path, model_max_length=256)
    short.pad_token = short.unk_token
    short.add_tokens(["<extra_tok>"])  # a changed tokenizer is a different key
    fmt = SampleFormat("v1", 256, is_multimodal=True)
    key_a = length_cache.cache_key(data["finetune"], tokenizer, fmt)
    key_b = length_cache.cache_key(data["finetune"], short, fmt)
    assert key_a != key_b


def test_pad_aspect_ratio_pads_with_the_processor_mean(data, processor, tokenizer):
    # synthetic images are 96x72 (landscape): "pad" adds bands above and below, filled with the mean,
    # which normalises to ~0; "square" centre-crops, so its top row is picture, not the fill colour.
    pad = _args(data, processor, "pretrain", image_aspect_ratio="pad")
    padded = _dataset(data["pretrain"], tokenizer, pad, processor, "plain")[0]["images"][0]
    square = _args(data, processor, "pretrain", image_aspect_ratio="square")
    cropped = _dataset(data["pretrain"], tokenizer, square, processor, "plain")[0]["images"][0]
    size = processor.crop_size["height"]
    assert padded.shape == cropped.shape == (3, size, size)
    clean = size * (96 - 72) // 2 // 96 - 2  # padding rows after resizing, less the bicubic blur
    assert clean >= 2
    mean, std = torch.tensor(processor.image_mean), torch.tensor(processor.image_std)
    fill = ((mean * 255).int() / 255 - mean) / std  # the background colour, normalised
    for rows in (padded[:, :clean], padded[:, -clean:]):
        assert torch.allclose(rows, fill[:, None, None].expand_as(rows), atol=1e-4)
    top = cropped[:, 0]
    assert not torch.allclose(top, fill[:, None].expand_as(top), atol=0.1)


def test_text_only_sample_gets_a_zero_image_when_multimodal(data, processor, tokenizer):
    ds = _dataset(data["finetune"], tokenizer, _args(data, processor), processor, "v1")
    i = next(i for i, s in enumerate(ds.list_data_dict) if "image" not in s)
    item = ds[i]
    assert torch.count_nonzero(item["images"][0]) == 0
    assert item["images"][0].shape == (3, processor.crop_size["height"], processor.crop_size["width"])
    assert not (item["input_ids"] == IMAGE_TOKEN_INDEX).any()


def _one_bad(data, tmp_path, image):
    samples = json.loads(data["pretrain"].read_text())[:4]
    samples[2] = dict(samples[2], id="broken-one", image=image)
    return _write(tmp_path / "bad.json", samples)


def test_missing_image_is_an_error_naming_file_and_sample(data, processor, tokenizer, tmp_path):
    path = _one_bad(data, tmp_path, "nowhere/missing.png")
    ds = _dataset(path, tokenizer, _args(data, processor), processor, "plain")
    with pytest.raises(BadSampleError, match=r"(?s)broken-one.*missing\.png.*--skip_bad_samples") as e:
        ds.prepare()
    assert e.value.sample_id == "broken-one" and e.value.index == 2


def test_missing_image_skipped_and_counted_with_the_flag(data, processor, tokenizer, tmp_path, caplog):
    path = _one_bad(data, tmp_path, "nowhere/missing.png")
    ds = _dataset(path, tokenizer, _args(data, processor, skip_bad_samples=True), processor, "plain")
    with caplog.at_level("WARNING"):
        ds.prepare()
    assert len(ds) == 3 and all(s["id"] != "broken-one" for s in ds.list_data_dict)
    assert "1 of 4 samples" in caplog.text and "missing.png" in caplog.text
    assert len(ds.lengths) == 3


def test_corrupt_image_error_or_replacement_by_same_modality(data, processor, tokenizer, tmp_path):
    (data["images"] / "corrupt.png").write_bytes(b"not a png at all")
    path = _one_bad(data, tmp_path, "corrupt.png")
    strict = _dataset(path, tokenizer, _args(data, processor), processor, "plain")
    strict.prepare()  # the file exists: found only when loaded
    with pytest.raises(BadSampleError, match=r"(?s)broken-one.*corrupt\.png.*cannot be read"):
        strict[2]
    lenient = _dataset(path, tokenizer, _args(data, processor, skip_bad_samples=True), processor, "plain")
    item = lenient[2]
    assert lenient.skipped == 1
    assert torch.equal(item["input_ids"], lenient[3]["input_ids"])  # the next image sample instead


def test_bad_conversation_reported_before_training(data, processor, tokenizer, tmp_path):
    samples = json.loads(data["finetune"].read_text())[:5]
    samples.append({"id": "no-reply", "conversations": [{"from": "human", "value": "Hi?"}]})
    samples.append(
        {
            "id": "stray-marker",
            "conversations": [{"from": "human", "value": "<image>\nHi?"}, {"from": "gpt", "value": "Yo."}],
        }
    )
    path = _write(tmp_path / "conv.json", samples)
    ds = _dataset(path, tokenizer, _args(data, processor), processor, "v1")
    with pytest.raises(BadSampleError, match=r"(?s)2 of 7 samples.*no-reply.*stray-marker"):
        ds.prepare()


def test_collator_pads_right_truncates_and_batches_images(data, processor, tokenizer):
    args = _args(data, processor)
    module = make_supervised_data_module(tokenizer, args, _fmt(args, processor, "v1", tokenizer))
    ds, collate = module["train_dataset"], module["data_collator"]
    items = [ds[i] for i in range(4)]
    batch = collate(items)
    n = max(len(x["input_ids"]) for x in items)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (4, n)
    assert batch["images"].shape == (4, 3, 32, 32)
    for row, item in enumerate(items):
        k = len(item["input_ids"])
        assert torch.equal(batch["input_ids"][row, :k], item["input_ids"])
        assert (batch["input_ids"][row, k:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][row, k:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row, :k].all() and not batch["attention_mask"][row, k:].any()
    short = DataCollatorForSupervisedDataset(
        tokenizer=type(tokenizer).from_pretrained(tokenizer.name_or_path)
    )
    short.tokenizer.pad_token = short.tokenizer.unk_token
    short.tokenizer.model_max_length = 7
    # the dataset cut every sample to the budget; the collator only asserts, naming length and budget
    with pytest.raises(ValueError, match=r"instance 0 of the batch is \d+ tokens .*length budget is 7"):
        short(items)


def test_image_tokens_count_against_model_max_length(data, processor, tokenizer):
    from transformers import AutoTokenizer

    short = AutoTokenizer.from_pretrained(tokenizer.name_or_path, model_max_length=20)
    short.pad_token = short.unk_token
    args = _args(data, processor, "pretrain")  # plain: <image> + caption; 16 image tokens
    ds = _dataset(data["pretrain"], short, args, processor, "plain")
    item = ds[0]
    assert len(item["input_ids"]) == 20 - 15  # what is left beside the 16 image features
    assert (item["labels"] != IGNORE_INDEX).any()
    # 19 image tokens: now only BOS and the image fit, nothing to learn
    with pytest.raises(BadSampleError, match=r"no target token fits in --model_max_length 20"):
        _dataset(data["pretrain"], short, args, processor, "plain", num_image_tokens=19)[0]


@pytest.mark.parametrize(
    "module", ["llava.conversation_templates", "llava.conversation", "llava.data.preprocess", "llava.constants"]
)
def test_the_token_cache_key_follows_the_rendering_code(module, tmp_path, monkeypatch):
    # a template's text or a label rule edited in any of these files must not read tokens cached before
    import importlib

    from llava.data.length_cache import code_fingerprint

    mod = importlib.import_module(module)
    before = code_fingerprint()
    copy = tmp_path / "edited.py"
    copy.write_bytes(open(mod.__file__, "rb").read() + b"\n# edited\n")
    monkeypatch.setattr(mod, "__file__", str(copy))
    assert code_fingerprint() != before
