"""Tiny random models for tests and the demo, saved as real Hugging Face folders.

Everything here writes ordinary `save_pretrained` folders, so the code under test opens them with
the same `from_pretrained` calls it uses for real checkpoints. Nothing is downloaded.

    kit = make_tiny_kit(tmp_path)            # LLaMA LM + CLIP tower + LLaMA-2 tokenizer
    kit.llm, kit.vision, kit.tokenizer        # paths
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TinyKit:
    llm: Path
    vision: Path
    tokenizer: Path


def find_llama2_tokenizer(legacy: bool = False) -> Path | None:
    """The real LLaMA-2 tokenizer folder, if one is on this machine.

    Looks at $LLAVA_TOKENIZERS_DIR, then ../shared/data/tokenizers beside the checkout, then the
    copy under tests/fixtures/tokenizers.
    """
    name = "llama2-legacy" if legacy else "llama2"
    roots = []
    if os.environ.get("LLAVA_TOKENIZERS_DIR"):
        roots.append(Path(os.environ["LLAVA_TOKENIZERS_DIR"]))
    roots += [
        _REPO_ROOT.parent / "shared" / "data" / "tokenizers",
        _REPO_ROOT / "tests" / "fixtures" / "tokenizers",
    ]
    for root in roots:
        cand = root / name
        if (cand / "tokenizer.json").is_file() or (cand / "tokenizer.model").is_file():
            return cand
    return None


_SMALL_CORPUS = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions. "
    "USER: What is in the image? ASSISTANT: A red circle on the left and a blue square. "
    "How many shapes are there? There are three shapes: one, two, three. "
    "What colour is the triangle? The triangle is green. Yes. No. "
    "Describe the picture briefly. A yellow star in the top right corner. "
) * 4


def build_small_tokenizer(
    out_dir: str | os.PathLike, vocab_size: int = 512, texts: list[str] | None = None
) -> Path:
    """A small LLaMA-style BPE tokenizer (`<unk>`=0, `<s>`=1, `</s>`=2, byte fallback, metaspace).

    Used where the real LLaMA-2 tokenizer is not available; it behaves like it (word-start marker,
    byte fallback for unseen characters, BOS added) with a vocabulary small enough for a demo.
    `texts` is the corpus the merges are learned from (a built-in chat snippet by default).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaTokenizerFast

    out = Path(out_dir)
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.pre_tokenizer = pre
    learner.train_from_iterator(
        texts or [_SMALL_CORPUS],
        trainer=trainers.BpeTrainer(
            vocab_size=vocab_size - 256,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=list(
                "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;?!'\"-"
            ),
            show_progress=False,
        ),
    )
    # LLaMA layout: <unk>, <s>, </s>, then the 256 byte pieces, then the learned pieces.
    learned = json.loads(learner.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{i:02X}>": 3 + i for i in range(256)})
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    fast = LlamaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_bos_token=True,
        add_eos_token=False,
        legacy=False,
        model_max_length=2048,
    )
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return out


def save_tokenizer(out_dir: str | os.PathLike, legacy: bool = False, prefer_real: bool = True) -> Path:
    """Write a tokenizer folder: the real LLaMA-2 one when available, else a small built one."""
    from transformers import AutoTokenizer

    out = Path(out_dir)
    src = find_llama2_tokenizer(legacy) if prefer_real else None
    if src is None:
        return build_small_tokenizer(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def make_tiny_clip(
    out_dir: str | os.PathLike,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 3,
    num_heads: int = 4,
    seed: int = 0,
) -> Path:
    """A random `CLIPVisionModel` with a matching `CLIPImageProcessor`, saved to `out_dir`."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    out = Path(out_dir)
    cfg = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        projection_dim=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        image_size=image_size,
        patch_size=patch_size,
        num_channels=3,
    )
    torch.manual_seed(seed)
    CLIPVisionModel(cfg).save_pretrained(out)
    CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        do_resize=True,
        do_normalize=True,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    ).save_pretrained(out)
    return out


_LLM_CONFIGS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
}


def make_tiny_llm(
    out_dir: str | os.PathLike,
    arch: str = "llama",
    tokenizer_dir: str | os.PathLike | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> Path:
    """A random causal LM of the given architecture, saved with its tokenizer to `out_dir`."""
    import transformers
    from transformers import AutoTokenizer

    if arch not in _LLM_CONFIGS:
        raise ValueError(f"unknown tiny LLM arch {arch!r}; valid: {sorted(_LLM_CONFIGS)}")
    out = Path(out_dir)
    if tokenizer_dir is None:
        tokenizer_dir = save_tokenizer(out)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg_cls, model_cls = (getattr(transformers, n) for n in _LLM_CONFIGS[arch])
    cfg = cfg_cls(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model_cls(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_tiny_kit(
    root: str | os.PathLike,
    arch: str = "llama",
    legacy: bool = False,
    prefer_real_tokenizer: bool = True,
    llm_kwargs: dict | None = None,
    vision_kwargs: dict | None = None,
) -> TinyKit:
    """Tokenizer, LM and CLIP tower folders under `root` (created once, reused if present)."""
    root = Path(root)
    tok_dir, llm_dir, vis_dir = root / "tokenizer", root / f"tiny-{arch}", root / "tiny-clip"
    if not (tok_dir / "tokenizer_config.json").exists():
        save_tokenizer(tok_dir, legacy=legacy, prefer_real=prefer_real_tokenizer)
    if not (llm_dir / "config.json").exists():
        make_tiny_llm(llm_dir, arch=arch, tokenizer_dir=tok_dir, **(llm_kwargs or {}))
    if not (vis_dir / "config.json").exists():
        make_tiny_clip(vis_dir, **(vision_kwargs or {}))
    return TinyKit(llm=llm_dir, vision=vis_dir, tokenizer=tok_dir)


def llava_vision_args(kit: TinyKit, **overrides):
    """The vision flags training passes to `initialize_vision_modules`, for the kit's tower (LLaVA-1.5 values)."""
    from types import SimpleNamespace

    args = dict(
        vision_tower=str(kit.vision),
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        mm_projector_type="mlp2x_gelu",
        mm_patch_merge_type="flat",
        pretrain_mm_mlp_adapter=None,
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        tune_mm_mlp_adapter=False,
    )
    args.update(overrides)
    return SimpleNamespace(**args)


def build_tiny_llava(
    kit: TinyKit, cls=None, seed: int = 0, llm_path=None, projector_scale: float = 1.0, **overrides
):
    """A LLaVA model from the kit's plain LLM, its vision modules initialised as training does.

    `projector_scale` multiplies the random projector's weights (a random projector maps to tiny vectors;
    tests scale it up so that images change the logits visibly).
    """
    from llava.model import LlavaLlamaForCausalLM

    cls = cls or LlavaLlamaForCausalLM
    model = cls.from_pretrained(llm_path or kit.llm, dtype=torch.float32)
    torch.manual_seed(seed)
    model.get_model().initialize_vision_modules(llava_vision_args(kit, **overrides))
    if projector_scale != 1.0:
        with torch.no_grad():
            for p in model.get_model().mm_projector.parameters():
                p.mul_(projector_scale)
    return model.eval()


def save_tiny_llava(
    kit: TinyKit, out_dir: str | os.PathLike, image_aspect_ratio: str = "pad", **kwargs
) -> Path:
    """A tiny LLaVA-1.5-style checkpoint folder (original format + tokenizer); reused if present."""
    from transformers import AutoTokenizer

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    model = build_tiny_llava(kit, **kwargs)
    # As a released LLaVA-1.5 checkpoint's config.json says.
    model.config.image_aspect_ratio = image_aspect_ratio
    model.config.mm_use_im_start_end = False
    model.config.mm_use_im_patch_token = False
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(kit.llm).save_pretrained(tmp)
    os.replace(tmp, out)
    return out
