"""Forward pass of the LLaVA model: image splicing, labels, masks, mixed batches, errors."""

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from tests.model_helpers import build_tiny_llava, images, prompt_ids


@pytest.fixture(scope="module")
def model(tiny_kit):
    return build_tiny_llava(tiny_kit)


def _num_patches(model):
    return model.get_vision_tower().num_patches


def test_initialize_vision_modules_writes_config(model, tiny_kit):
    cfg = model.config
    assert cfg.mm_vision_tower == str(tiny_kit.vision)
    assert cfg.mm_projector_type == "mlp2x_gelu"
    assert cfg.mm_hidden_size == 32 and cfg.mm_vision_select_layer == -2
    assert cfg.mm_vision_select_feature == "patch" and cfg.use_mm_proj is True
    proj = model.get_model().mm_projector
    assert [type(m).__name__ for m in proj] == ["Linear", "GELU", "Linear"]
    assert proj[0].in_features == 32 and proj[2].out_features == cfg.hidden_size
    tower = model.get_vision_tower()
    assert tower.is_loaded and tower.num_patches == 16 and tower.hidden_size == 32
    assert not any(p.requires_grad for p in tower.parameters())
    assert tower.image_processor.crop_size["height"] == 32


def test_splice_matches_manual_embeddings(model):
    """The LLM sees exactly: text embeds, projected patch features, text embeds."""
    ids, img = prompt_ids(1, 300, "IMG", 400, 500), images(1)
    out = model(input_ids=ids, images=img)
    emb = model.get_input_embeddings()
    with torch.no_grad():
        feats = model.get_vision_tower()(img)  # [1,16,32]
        assert feats.shape == (1, 16, 32)
        manual = torch.cat(
            [
                emb(torch.tensor([1, 300])),
                model.get_model().mm_projector(feats[0]),
                emb(torch.tensor([400, 500])),
            ]
        )
        ref = model(inputs_embeds=manual[None])
    assert out.logits.shape == (1, 4 + 16, model.config.vocab_size)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=0)


def test_vision_features_are_hidden_state_minus_cls(model):
    tower, img = model.get_vision_tower(), images(2)
    with torch.no_grad():
        hs = tower.vision_tower(img, output_hidden_states=True).hidden_states
        torch.testing.assert_close(tower(img), hs[-2][:, 1:])


def test_labels_ignore_image_positions_and_loss(model):
    ids = prompt_ids(1, 300, "IMG", 400, 500)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 400, 500]])
    _, _, _, _, embeds, new_labels = model.prepare_inputs_labels_for_multimodal(
        ids, None, None, None, labels, images(1)
    )
    n = _num_patches(model)
    assert embeds.shape[1] == 4 + n
    assert new_labels[0, : 2 + n].eq(IGNORE_INDEX).all()
    assert new_labels[0, 2 + n :].tolist() == [400, 500]
    out = model(input_ids=ids, images=images(1), labels=labels)
    logits = out.logits[0, :-1]
    expected = torch.nn.functional.cross_entropy(logits, new_labels[0, 1:], ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, expected)


def test_mixed_batch_right_padding_equals_single(model):
    """Image sample + text-only sample in one right-padded batch give the same logits as alone."""
    a = [1, 300, IMAGE_TOKEN_INDEX, 400]
    b = [1, 600, 700, 800, 900, 1000]
    ids = torch.tensor([a + [0, 0], b])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    img = images(1)
    out = model(input_ids=ids, attention_mask=mask, images=img)
    n = _num_patches(model)
    alone_a = model(input_ids=torch.tensor([a]), images=img).logits[0]
    alone_b = model(input_ids=torch.tensor([b])).logits[0]
    torch.testing.assert_close(out.logits[0, : 3 + n], alone_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits[1, :6], alone_b, atol=1e-5, rtol=0)


def test_dummy_image_convention_for_text_only(model):
    """The original collator gives text-only samples a dummy image; it is consumed, not spliced."""
    ids = torch.tensor([[1, 300, IMAGE_TOKEN_INDEX, 400], [1, 600, 700, 800]])
    img = images(2)
    _, _, mask, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, img)
    n = _num_patches(model)
    assert embeds.shape[1] == 3 + n
    assert mask[1].tolist() == [True] * 4 + [False] * (n - 1)


def test_several_images_per_sample_in_order(model):
    img = images(2)
    ids = prompt_ids(1, "IMG", 300, "IMG", 400)
    out = model(input_ids=ids, images=img).logits
    swapped = model(input_ids=ids, images=img.flip(0)).logits
    as_list = model(input_ids=ids, images=[img[0], img[1]]).logits
    n = _num_patches(model)
    assert out.shape[1] == 3 + 2 * n
    torch.testing.assert_close(as_list, out, atol=1e-5, rtol=0)
    assert not torch.allclose(out[0, -1], swapped[0, -1], atol=1e-4)


def test_truncation_to_tokenizer_model_max_length(model):
    ids = prompt_ids(1, 300, "IMG", 400, 500)
    labels = ids.clone()
    model.config.tokenizer_model_max_length = 10
    try:
        _, _, _, _, embeds, new_labels = model.prepare_inputs_labels_for_multimodal(
            ids, None, None, None, labels, images(1)
        )
    finally:
        del model.config.tokenizer_model_max_length
    assert embeds.shape[1] == 10 and new_labels.shape[1] == 10


def test_image_count_mismatch_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"2 image tokens .* but 1 images"):
        model(input_ids=prompt_ids(1, "IMG", 300, "IMG"), images=images(1))
    with pytest.raises(ValueError, match="no images were given"):
        model(input_ids=prompt_ids(1, "IMG", 300))


def test_unfrozen_tower_gets_gradients(tiny_kit):
    model = build_tiny_llava(tiny_kit, unfreeze_mm_vision_tower=True).train()
    tower = model.get_vision_tower()
    assert all(p.requires_grad for p in tower.parameters())
    ids = prompt_ids(1, 300, "IMG", 400, 500)
    model(input_ids=ids, images=images(1), labels=ids.clamp(min=0)).loss.backward()
    assert tower.vision_tower.embeddings.patch_embedding.weight.grad is not None
    assert model.get_model().mm_projector[0].weight.grad is not None


def test_frozen_tower_runs_without_grad(model):
    tower = model.get_vision_tower()
    with torch.enable_grad():
        assert not tower(images(1)).requires_grad
