"""The length budget decides once what a sample costs and where it is cut: the validator, the token
cache's lengths, the dataset's items, the collator and packing all agree with it."""

import json

import pytest
import torch
from PIL import Image

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.data.collator import DataCollatorForSupervisedDataset
from llava.data.dataset import LazySupervisedDataset
from llava.data.length_budget import CutError, LengthBudget
from llava.data.length_cache import cache_key, load_or_build
from llava.data.packing import first_fit_decreasing, next_fit
from llava.data.sample_format import SampleFormat
from llava.data.tools.validate import validate
from llava.train.arguments import DataArguments
from llava.train.packed_sampler import PackedBatchSampler

MAX_LEN, N_IMG = 90, 16


def test_cost_and_cut_per_image_mode():
    fixed = LengthBudget.for_images(10, 4, "pad")
    assert fixed.cost(3, 1) == 7 and fixed.width(1) == 7 and fixed.width(0) == 10
    assert not fixed.too_long(6, 1) and fixed.too_long(7, 1)  # 7 text + 4 image > 10
    ids = [1, IMAGE_TOKEN_INDEX, *range(300, 309)]  # 10 text tokens + the image
    labels = [IGNORE_INDEX] * 5 + ids[5:]
    cut_ids, cut_labels = fixed.cut(ids, labels)
    assert cut_ids == ids[:7] and cut_labels == labels[:7] and fixed.sequence_length(cut_ids) == 10
    assert fixed.trained_length(10, 1) == 10
    # per-visual costs (an anyres image's tiles, a video's frames) are exact: the cut counts them all
    anyres = LengthBudget.for_images(20, 4, "anyres")
    assert not anyres.fixed_image_cost
    assert anyres.cost(3, [9]) == 12 and anyres.width([9]) == 12 and anyres.too_long(12, [9])
    assert anyres.cut(ids, labels, [9]) == (ids[:12], labels[:12])
    two = [1, IMAGE_TOKEN_INDEX, 2, IMAGE_TOKEN_INDEX, *range(300, 306)]  # 8 text + 2 images
    assert anyres.sequence_length(two, [5, 6]) == 19 and not anyres.too_long(8, [5, 6])
    with pytest.raises(ValueError, match="2 image placeholder.*1 visual cost"):
        anyres.cut(two, two, [5])
    with pytest.raises(CutError, match=r"no target token fits in --model_max_length 10 next to the 4 tokens"):
        fixed.cut(ids, [IGNORE_INDEX] * len(ids))
    late_image = [*range(300, 309), IMAGE_TOKEN_INDEX, 5]
    with pytest.raises(CutError, match="would cut off an image or video"):
        fixed.cut(late_image, late_image)
    video = [1, IMAGE_TOKEN_INDEX, 2, 3]
    with pytest.raises(CutError, match=r"1 visual\(s\) take 30 tokens.*lower --frames_upbound"):
        LengthBudget(20).cut(video, video, [30])
    assert LengthBudget(None).cut(ids, labels) == (ids, labels)


def test_check_raises_instead_of_cutting():
    budget = LengthBudget.for_images(10, 4, "square")
    budget.check([1, IMAGE_TOKEN_INDEX, 2, 3, 4, 5, 6])  # 6 text + 4 image: fits
    match = r"instance 2 is 11 tokens \(7 text \+ 1 visual\(s\): 4\).*budget is 10"
    with pytest.raises(ValueError, match=match):
        budget.check(torch.tensor([1, IMAGE_TOKEN_INDEX, 2, 3, 4, 5, 6, 7]), "instance 2")


def _instance(n_text, image=True):
    ids = torch.arange(300, 300 + n_text)
    if image:
        ids = torch.cat([ids[:1], torch.tensor([IMAGE_TOKEN_INDEX]), ids[1:]])
    return {"input_ids": ids, "labels": ids.clone(), "image": torch.zeros(3, 32, 32)}


def test_collator_and_packing_raise_on_an_item_over_the_budget(tiny_kit):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_kit.tokenizer, model_max_length=MAX_LEN)
    tok.pad_token = tok.unk_token
    fmt = SampleFormat("v1", MAX_LEN, is_multimodal=True, num_image_tokens=N_IMG)
    fits, over = _instance(MAX_LEN - N_IMG), _instance(MAX_LEN - N_IMG + 1)  # the second: 65 tokens
    for packing in (False, True):
        collate = DataCollatorForSupervisedDataset(tokenizer=tok, sample_format=fmt, packing=packing)
        assert collate([fits])["input_ids"].shape[-1] == MAX_LEN - N_IMG + 1  # ids: text + placeholder
        with pytest.raises(ValueError, match=rf"instance 1 .*{MAX_LEN + 1} tokens.*{MAX_LEN}"):
            collate([fits, over])
    with pytest.raises(ValueError, match="sample 1 is 11 tokens .* over the packing capacity 10"):
        first_fit_decreasing([0, 1], [5, 11], 10)
    with pytest.raises(ValueError, match="over the packing capacity 10"):
        next_fit([5, -11], 10)
    with pytest.raises(ValueError, match="sample 2 is 11 tokens"):
        PackedBatchSampler([5, 6, -11], batch_size=1, num_chunks=1, capacity=10)


@pytest.fixture()
def long_samples(tmp_path):
    """Image and text-only samples, short and over MAX_LEN, and their image folder."""
    Image.new("RGB", (20, 16), "red").save(tmp_path / "a.png")

    def sample(sid, words, image):
        human = ("<image>\n" if image else "") + "Describe it."
        s = {"id": sid, "conversations": [{"from": "human", "value": human},
                                          {"from": "gpt", "value": " ".join(["red"] * words)}]}  # fmt: skip
        return dict(s, image="a.png") if image else s

    samples = [sample("short", 3, True), sample("long", 60, True), sample("edge", 33, True),
               sample("text-long", 80, False), sample("text-short", 2, False)]  # fmt: skip
    path = tmp_path / "data.json"
    path.write_text(json.dumps(samples))
    return path, tmp_path, samples


@pytest.fixture(scope="module")
def processor(tiny_kit):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(tiny_kit.vision)


# anyres: the 20x16 picture takes the one 32x32 grid, base + 1 tile = 2 x 16 tokens (flat merge), exactly
@pytest.mark.parametrize(("mode", "image_tokens", "expected_cut"),
                         [("pad", N_IMG, {"long", "edge", "text-long"}),
                          ("anyres", 2 * N_IMG, {"long", "edge", "text-long"})])  # fmt: skip
def test_too_long_samples_cut_identically_by_validator_cache_and_dataset(
    long_samples, llama2_tokenizer, processor, mode, image_tokens, expected_cut
):
    path, folder, samples = long_samples
    fmt = SampleFormat("v1", MAX_LEN, is_multimodal=True, image_aspect_ratio=mode, num_image_tokens=N_IMG,
                       image_processor=processor, image_grid_pinpoints=[[32, 32]], crop_size=32)  # fmt: skip
    report = validate(samples, str(folder), llama2_tokenizer, sample_format=fmt, allow_too_long=True)
    assert {samples[i]["id"] for i in report.cut_to} == expected_cut
    assert sorted(report.cut_to) == sorted(p.index for p in report.problems["too_long"])

    args = DataArguments(data_path=str(path), image_folder=str(folder), lengths_cache_dir=str(folder / "c"))
    ds = LazySupervisedDataset(str(path), llama2_tokenizer, args, fmt)
    ds.prepare()
    per_sample = LazySupervisedDataset(str(path), llama2_tokenizer, args, fmt)  # not prepared: no cache
    costs = [[image_tokens] if "image" in s else [] for s in samples]
    cache = load_or_build(path, samples, llama2_tokenizer, fmt, folder / "c", costs)  # the same cache, read
    assert set(cache.cut) == set(report.cut_to) and ds.cut == len(expected_cut)
    budget = fmt.budget
    for i, sample in enumerate(samples):
        item = ds[i]
        assert torch.equal(item["input_ids"], per_sample[i]["input_ids"])
        measured = {
            "validator": report.cut_to.get(i, report.token_counts[i]),
            "cache": budget.cost(cache.lengths[i], costs[i]),
            "dataset lengths": ds.lengths[i],
            "item": budget.sequence_length(item["input_ids"], costs[i]),
            "item length": item["length"],
        }
        assert len(set(measured.values())) == 1, (sample["id"], measured)
        if i in report.cut_to:
            assert measured["item"] == MAX_LEN
        else:
            assert measured["item"] == report.token_counts[i] <= MAX_LEN


def test_cache_key_follows_the_budget_and_its_code(
    long_samples, llama2_tokenizer, processor, monkeypatch, tmp_path
):
    import dataclasses

    import llava.data.length_budget

    path = long_samples[0]
    fmt = SampleFormat("v1", MAX_LEN, is_multimodal=True, num_image_tokens=N_IMG)
    key = cache_key(path, llama2_tokenizer, fmt)
    assert key == cache_key(path, llama2_tokenizer, dataclasses.replace(fmt, image_processor=processor))
    for changed in (dict(num_image_tokens=8), dict(model_max_length=80), dict(image_aspect_ratio="anyres")):
        assert key != cache_key(path, llama2_tokenizer, dataclasses.replace(fmt, **changed)), changed
    edited = tmp_path / "length_budget.py"
    edited.write_text(open(llava.data.length_budget.__file__).read() + "\n# changed\n")
    monkeypatch.setattr(llava.data.length_budget, "__file__", str(edited))
    assert key != cache_key(path, llama2_tokenizer, fmt)  # the budget module is part of the code key
