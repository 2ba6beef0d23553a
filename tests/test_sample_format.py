"""SampleFormat: built once after the model is set up, frozen, and the only data setting the dataset,
the collator and the token cache read (DataArguments holds command-line flags only)."""

import dataclasses

import pytest
import torch

from llava.data.collator import DataCollatorForSupervisedDataset
from llava.data.dataset import LazySupervisedDataset
from llava.data.sample_format import SampleFormat, template_for_version
from llava.train.arguments import DataArguments


@pytest.fixture()
def data(tmp_path):
    from llava.data.tools.synthetic import generate

    return generate(tmp_path / "data", n_train=8, n_eval=0, text_only_fraction=0.3, seed=3, progress=False)


class SealedFlags:
    """A DataArguments stand-in whose every attribute read fails once `seal()` was called."""

    def __init__(self, **flags):
        self.__dict__.update(flags, _sealed=False)

    def seal(self):
        self.__dict__["_sealed"] = True

    def __getattribute__(self, name):
        if name not in ("seal", "__dict__") and object.__getattribute__(self, "__dict__")["_sealed"]:
            raise AssertionError(f"data_args.{name} read after the dataset was built")
        return object.__getattribute__(self, name)


def test_format_is_frozen_and_checks_its_template():
    fmt = SampleFormat(None, 2048, is_multimodal=True, num_image_tokens=576)
    assert fmt.template == "v1"  # None: the default template, stored by name
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.num_image_tokens = 16
    with pytest.raises(ValueError, match="unknown conversation template 'v9'"):
        SampleFormat("v9", 2048)
    assert [template_for_version(v) for v in ("v0", "v0.5", None, "plain")] == ["v1", "v1", "v1", "plain"]
    assert fmt.budget.max_length == 2048 and fmt.budget.image_tokens == 576 and fmt.budget.fixed_image_cost
    assert not dataclasses.replace(fmt, image_aspect_ratio="anyres").budget.fixed_image_cost


def test_data_arguments_hold_only_command_line_flags():
    fields = dataclasses.fields(DataArguments)
    assert all(f.init for f in fields), [f.name for f in fields if not f.init]
    gone = {"image_processor", "uint8_images", "num_image_tokens", "conv_version", "mm_use_im_start_end"}
    assert not gone & {f.name for f in fields}


def test_dataset_collator_and_cache_read_nothing_from_data_args_after_construction(
    data, kit_tokenizer, kit_processor, tmp_path
):
    tokenizer, processor = kit_tokenizer, kit_processor
    flags = SealedFlags(image_folder=str(data["images"]), skip_bad_samples=False,
                        lengths_cache_dir=str(tmp_path / "cache"))  # fmt: skip
    fmt = SampleFormat("v1", 256, is_multimodal=True, image_aspect_ratio="pad", num_image_tokens=16,
                       image_processor=processor, uint8_images=True)  # fmt: skip
    ds = LazySupervisedDataset(str(data["finetune"]), tokenizer, flags, fmt)
    unprepared = LazySupervisedDataset(str(data["finetune"]), tokenizer, flags, fmt)
    flags.seal()
    ds.prepare()  # the token cache is built here
    assert len(ds.lengths) == len(ds.modality_lengths) == len(ds)
    items = [ds[i] for i in range(len(ds))]
    assert {item["images"][0].dtype for item in items} == {torch.uint8}
    for i, item in enumerate(items):  # the per-sample path (not prepared) reads only the format too
        assert torch.equal(unprepared[i]["input_ids"], item["input_ids"])
    batch = DataCollatorForSupervisedDataset(tokenizer=tokenizer, sample_format=fmt)(items)
    assert batch["input_ids"].shape[0] == len(items)
    packed = DataCollatorForSupervisedDataset(tokenizer=tokenizer, sample_format=fmt, packing=True)(items)
    assert "position_ids" in packed
    with pytest.raises(TypeError, match="needs a llava.data.sample_format.SampleFormat"):
        LazySupervisedDataset(str(data["finetune"]), tokenizer, DataArguments(), "v1")


def _setup(tiny_kit, tmp_path, extra=""):
    import transformers

    from llava.train.arguments import ModelArguments, TrainingArguments
    from llava.train.model_setup import build_model_and_tokenizer

    argv = (
        f"--model_name_or_path {tiny_kit.llm} --data_path unused.json --output_dir {tmp_path} "
        f"--report_to none --model_max_length 300 {extra}"
    ).split()
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    before = dataclasses.replace(data_args)
    model, tokenizer, template = build_model_and_tokenizer(model_args, data_args, training_args)
    assert data_args == before  # the set-up writes nothing onto the flags for the dataset to read back
    return model, tokenizer, template, model_args


def test_for_model_takes_the_set_up_models_tower_and_config(tiny_kit, tmp_path):
    model, tokenizer, template, model_args = _setup(
        tiny_kit, tmp_path, f"--vision_tower {tiny_kit.vision} --version v0 --image_aspect_ratio pad"
    )
    fmt = SampleFormat.for_model(model, tokenizer, template, uint8_images=True)
    tower = model.get_vision_tower()
    assert template is None and fmt.template == "v1"
    assert (fmt.is_multimodal, fmt.image_aspect_ratio, fmt.model_max_length) == (True, "pad", 300)
    assert fmt.num_image_tokens == tower.num_image_tokens == 16
    assert fmt.image_processor is tower.image_processor and fmt.uint8_images
    assert fmt.mm_use_im_start_end is False
    text_only = SampleFormat.for_model(model, tokenizer, "plain", vision=False)
    assert not text_only.is_multimodal and text_only.image_processor is None
    assert text_only.num_image_tokens == 0


def test_for_model_without_a_vision_tower_is_text_only(tiny_kit, tmp_path):
    model, tokenizer, template, _ = _setup(tiny_kit, tmp_path, "--version llama_2")
    fmt = SampleFormat.for_model(model, tokenizer, template)
    assert fmt == SampleFormat("llama_2", 300)
