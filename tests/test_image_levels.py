"""8-bit training images: the loader sends uint8 pixels, the vision tower normalises them on its
device, and what the tower computes is what it computes from process_images' floats."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from llava.images.transform import ImageTransform, normalisation_table, normalise_levels
from llava.mm_utils import process_images
from tests.model_helpers import build_tiny_llava


@pytest.fixture(scope="module")
def processor(tiny_kit):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(tiny_kit.vision)


def _pictures(seed=0):
    rng = np.random.default_rng(seed)
    for w, h in ((64, 48), (31, 70), (40, 40), (200, 90)):
        yield Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize("mode", ["pad", "square", None])
def test_levels_normalised_equal_process_images(processor, mode):
    transform = ImageTransform.from_processor(processor, mode)
    table = torch.from_numpy(normalisation_table(processor))
    for image in _pictures():
        levels = transform.levels(image)
        assert levels.dtype == torch.uint8 and levels.shape[0] == 3
        expected = process_images([image], processor, SimpleNamespace(image_aspect_ratio=mode))[0]
        assert torch.equal(normalise_levels(levels, table), expected)
        assert torch.equal(normalise_levels(levels[None], table)[0], expected)  # batched


def test_normalise_levels_rejects_floats_and_wrong_channels(processor):
    table = torch.from_numpy(normalisation_table(processor))
    with pytest.raises(ValueError, match="expected uint8 pixels"):
        normalise_levels(torch.zeros(3, 4, 4), table)
    with pytest.raises(ValueError, match="expected uint8 pixels"):
        normalise_levels(torch.zeros(1, 4, 4, dtype=torch.uint8), table)


def test_tower_gives_the_same_features_from_levels(tiny_kit, processor):
    model = build_tiny_llava(tiny_kit).eval()
    tower = model.get_vision_tower()
    transform = ImageTransform.from_processor(processor, "pad")
    pictures = list(_pictures(1))
    levels = torch.stack([transform.levels(p) for p in pictures])
    floats = process_images(pictures, processor, SimpleNamespace(image_aspect_ratio="pad"))
    with torch.no_grad():
        assert torch.equal(tower(levels), tower(floats))
        ids = torch.tensor([[1, 300, -200, 400]])
        a = model(input_ids=ids, images=levels[:1]).logits
        b = model(input_ids=ids, images=floats[:1]).logits
    assert torch.equal(a, b)


def test_tower_without_processor_settings_says_so(tiny_kit):
    tower = build_tiny_llava(tiny_kit).get_vision_tower()
    tower(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))  # builds the table of the processor it has
    tower.image_processor = None  # a table built for another processor is not reused
    with pytest.raises(ValueError, match="uint8 pixels but its image processor"):
        tower(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_dataset_and_collator_keep_a_batch_uint8(tiny_kit, processor, tmp_path):
    from transformers import AutoTokenizer

    from llava.data.collator import DataCollatorForSupervisedDataset
    from llava.data.dataset import LazySupervisedDataset
    from llava.data.sample_format import SampleFormat
    from llava.data.tools.synthetic import generate
    from llava.train.arguments import DataArguments

    data = generate(tmp_path / "data", n_train=10, n_eval=0, text_only_fraction=0.3, seed=1, progress=False)
    tok = AutoTokenizer.from_pretrained(tiny_kit.tokenizer, model_max_length=256, padding_side="right")
    tok.pad_token = tok.unk_token
    items = {}
    for uint8 in (False, True):
        args = DataArguments(
            data_path=str(data["finetune"]), image_folder=str(data["images"]), image_aspect_ratio="pad"
        )
        fmt = SampleFormat("v1", tok.model_max_length, is_multimodal=True, image_aspect_ratio="pad",
                           num_image_tokens=16, image_processor=processor, uint8_images=uint8)  # fmt: skip
        ds = LazySupervisedDataset(str(data["finetune"]), tok, args, fmt)
        items[uint8] = [ds[i] for i in range(len(ds))]
    table = torch.from_numpy(normalisation_table(processor))
    kinds = set()
    for as_float, as_levels in zip(items[False], items[True]):
        has_image = as_float["images"][0].count_nonzero() > 0
        kinds.add(bool(has_image))
        assert as_levels["images"][0].dtype == torch.uint8
        if has_image:
            assert torch.equal(normalise_levels(as_levels["images"][0], table), as_float["images"][0])
        else:  # text-only: a zero stand-in in the batch's dtype
            assert as_levels["images"][0].count_nonzero() == 0
    assert kinds == {True, False}  # both kinds were checked
    batch = DataCollatorForSupervisedDataset(tokenizer=tok)(items[True])
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape[0] == len(items[True])


def test_towers_load_the_pil_image_processor_the_original_used(tiny_kit, monkeypatch):
    import transformers

    from llava.model.multimodal_encoder.vision_tower import TOWER_BACKENDS, processor_class

    class TorchvisionBacked(transformers.CLIPImageProcessorPil):  # what torchvision machines get
        pass

    monkeypatch.setattr(transformers, "CLIPImageProcessor", TorchvisionBacked)
    assert processor_class(TOWER_BACKENDS["clip"]) is transformers.CLIPImageProcessorPil
    assert processor_class(TOWER_BACKENDS["siglip"]) is transformers.SiglipImageProcessorPil
    tower = build_tiny_llava(tiny_kit).get_vision_tower()
    assert type(tower.image_processor) is transformers.CLIPImageProcessorPil
    monkeypatch.setattr(transformers, "CLIPImageProcessorPil", None)  # a transformers without the split
    assert processor_class(TOWER_BACKENDS["clip"]) is TorchvisionBacked
