"""Shared fixtures: tiny random models saved as real Hugging Face folders (see llava/testing/tiny.py)."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def tiny_kit(tmp_path_factory):
    """LLaMA-architecture tiny LM + tiny CLIP tower + the real LLaMA-2 tokenizer (non-legacy)."""
    from llava.testing.tiny import make_tiny_kit

    return make_tiny_kit(tmp_path_factory.mktemp("tiny-kit"))


@pytest.fixture(scope="session")
def llama2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(FIXTURES / "tokenizers" / "llama2")


@pytest.fixture(scope="session")
def llama2_legacy_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(FIXTURES / "tokenizers" / "llama2-legacy")


@pytest.fixture(scope="module")
def kit_tokenizer(tiny_kit):
    """The tiny kit's tokenizer as training sets it up: 256 tokens, right padding, pad = unk."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_kit.tokenizer, model_max_length=256, padding_side="right")
    tok.pad_token = tok.unk_token
    return tok


@pytest.fixture(scope="module")
def kit_processor(tiny_kit):
    """The tiny kit's CLIP image processor."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(tiny_kit.vision)
