"""The original's public names keep working: other tools (e.g. lmms-eval's `llava` model class) import
them from these modules, so moving code inside the package must not break them."""

import importlib
import inspect

import pytest

ORIGINAL_NAMES = {
    "llava.constants": ["IGNORE_INDEX", "IMAGE_TOKEN_INDEX", "DEFAULT_IMAGE_TOKEN", "DEFAULT_IM_START_TOKEN",
                        "DEFAULT_IM_END_TOKEN", "DEFAULT_IMAGE_PATCH_TOKEN"],
    "llava.conversation": ["conv_templates", "default_conversation", "Conversation", "SeparatorStyle"],
    "llava.mm_utils": ["process_images", "tokenizer_image_token", "get_model_name_from_path",
                       "KeywordsStoppingCriteria", "expand2square", "load_image_from_base64",
                       "process_anyres_image", "select_best_resolution", "get_anyres_image_grid_shape",
                       "resize_and_pad_image", "divide_to_patches"],
    "llava.model.builder": ["load_pretrained_model"],
    "llava.train.train": ["train", "preprocess", "preprocess_multimodal", "DataArguments", "ModelArguments",
                          "TrainingArguments", "LazySupervisedDataset", "DataCollatorForSupervisedDataset",
                          "make_supervised_data_module"],
    "llava.model": ["LlavaLlamaForCausalLM", "LlavaMistralForCausalLM"],
    "llava.utils": ["disable_torch_init"],
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(ORIGINAL_NAMES))
def test_original_public_names_import(module):
    mod = importlib.import_module(module)
    missing = [name for name in ORIGINAL_NAMES[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lacks {missing}"


def test_original_call_signatures():
    from llava.mm_utils import process_images, tokenizer_image_token
    from llava.model.builder import load_pretrained_model
    from llava.train.train import preprocess

    assert list(inspect.signature(load_pretrained_model).parameters)[:5] == [
        "model_path", "model_base", "model_name", "load_8bit", "load_4bit"
    ]  # fmt: skip
    assert list(inspect.signature(process_images).parameters) == ["images", "image_processor", "model_cfg"]
    assert list(inspect.signature(tokenizer_image_token).parameters)[:2] == ["prompt", "tokenizer"]
    assert list(inspect.signature(preprocess).parameters)[:3] == ["sources", "tokenizer", "has_image"]


def test_lmms_eval_style_prompt_building(llama2_tokenizer):
    """What lmms-eval's llava class does: copy a template, append turns, render, tokenise with images."""
    from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import tokenizer_image_token

    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\nWhat is shown?")
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
    assert prompt.endswith("USER: <image>\nWhat is shown? ASSISTANT:")
    ids = tokenizer_image_token(prompt, llama2_tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
    assert ids.ndim == 1 and int((ids == IMAGE_TOKEN_INDEX).sum()) == 1 and ids[0] == llama2_tokenizer.bos_token_id
    assert conv.stop_str == "</s>"
