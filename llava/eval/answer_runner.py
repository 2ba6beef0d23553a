"""The one answer-generation runner behind ``model_vqa``, ``model_vqa_loader``, ``model_vqa_science``
and ``model_vqa_mmbench``: questions in, one JSON line per answer out.

Each answer line is ``{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}``
(plus ``round_id``, ``options``, ``option_char`` for MMBench), in question order.

* The conversation template is the one the checkpoint was trained with (``conv_template`` in its
  config.json) unless ``--conv-mode`` names another (a warning names both); a checkpoint without
  one (the original's) falls back to the name-based guess (``llava-v1.5-*`` -> ``llava_v1``).
  Generation stops where the template's assistant turn ends (``Conversation.stop_str``).
* Greedy decoding by default (``--temperature 0``); ``--temperature > 0`` samples (``--top_p``,
  ``--seed``); ``--num_beams`` for beam search.
* Questions may hold several images or a video (LLaVA-NeXT's format; see question_sources): one
  ``<image>`` per visual, pixels by llava.images.inputs (one image by the model's
  ``image_aspect_ratio``, several each padded, a video's frames sampled by its ``frames_upbound``),
  ``modalities`` passed to generate when a video is in the batch.
* ``--num-chunks N --chunk-idx K`` answers the K-th of N contiguous shards (the original's split),
  so N processes (one per GPU) can share a benchmark; concatenating the shard files in order gives
  the full answer file.
* ``--batch-size B`` generates B questions at once, left-padded; greedy answers are the same as
  with batch size 1 in float32 (checked on CPU and on an H200). In float16 (the default on CUDA)
  kernels differ with the batch shape, so a near-tie can rarely flip a token (1 answer in 33 on a
  tiny random model); use ``--dtype float32`` where exact batch invariance matters.
* Resumable: answers already in ``--answers-file`` (same question id, round and prompt) are kept
  and skipped; new answers are appended and flushed after every batch. A torn last line (an
  interrupted write) is dropped on resume. ``--overwrite`` starts afresh.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tqdm import tqdm

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IMAGE_TOKEN_INDEX,
)
from llava.utils.atomic import atomic_write_text
from llava.utils.jsonfiles import read_jsonl_tolerant


@dataclass
class EvalItem:
    """One question to answer. ``text`` is the user message (``<image>`` markers only where a question
    with several visuals places them; otherwise they are added at the front); ``prompt`` is what the
    answer file records. ``load_image`` returns the PIL image (None for a text-only question);
    ``load_visuals(model_config)`` instead returns several visuals in order (a PIL image each, or a
    list of PIL frames for a video, sampled by the model's ``frames_upbound``)."""

    question_id: Any
    text: str
    prompt: str
    load_image: Callable[[], Any] | None = None
    extra: dict = field(default_factory=dict)  # extra top-level fields of the answer line
    load_visuals: Callable[[Any], list] | None = None

    @property
    def key(self) -> tuple:
        return answer_key({"question_id": self.question_id, "prompt": self.prompt, **self.extra})

    def visuals(self, model_cfg=None) -> list:
        """The question's visuals in order ([] for a text-only question)."""
        if self.load_visuals is not None:
            return list(self.load_visuals(model_cfg))
        image = self.load_image() if self.load_image is not None else None
        return [] if image is None else [image]


def answer_key(row: dict) -> tuple:
    # The question id alone is not unique in every benchmark (MME asks two questions per image id,
    # MMBench --all-rounds asks each question once per rotation).
    return str(row["question_id"]), row.get("round_id"), row["prompt"]


def split_list(items: Sequence, n: int) -> list[list]:
    """The original's contiguous split: chunks of ceil(len / n) items (the last ones may be short or absent)."""
    size = math.ceil(len(items) / n) if items else 1
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def get_chunk(items: Sequence, n: int, k: int) -> list:
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"--chunk-idx {k} must be in [0, --num-chunks {n})")
    chunks = split_list(items, n)
    return chunks[k] if k < len(chunks) else []


class AnswerFile:
    """The answers file, opened for resuming: ``done`` holds the keys already answered."""

    def __init__(self, path: str | os.PathLike, model_id: str, overwrite: bool = False):
        self.path = Path(os.path.expanduser(str(path)))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = [] if overwrite else read_jsonl_tolerant(self.path)
        others = sorted({str(r.get("model_id")) for r in rows} - {model_id})
        if others:
            raise ValueError(
                f"{self.path} already holds answers of model {others[0]!r}, not {model_id!r}: "
                "pass --overwrite to replace them or choose another --answers-file"
            )
        if overwrite or not self.path.exists() or self._torn(len(rows)):
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        self.done = {answer_key(r) for r in rows}
        self._f = open(self.path, "a", encoding="utf-8")

    def _torn(self, n_rows: int) -> bool:
        text = self.path.read_text(encoding="utf-8")
        return bool(text) and (
            not text.endswith("\n") or sum(1 for line in text.splitlines() if line.strip()) != n_rows
        )

    def write(self, rows: Sequence[dict]) -> None:
        self._f.write("".join(json.dumps(r) + "\n" for r in rows))
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def user_message(item: EvalItem, visuals: int | bool, mm_use_im_start_end: bool) -> str:
    """The user turn: ``item.text`` with one ``<image>`` per visual (in place when the text has exactly
    that many markers, else all at the front), wrapped in im_start/im_end when the model uses them."""
    n = int(visuals)
    marker = (
        DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
        if mm_use_im_start_end
        else DEFAULT_IMAGE_TOKEN
    )
    placed = item.text.count(DEFAULT_IMAGE_TOKEN)
    if n == 0 or placed == 0:
        return (f"{marker}\n" * n) + item.text
    if placed != n:
        raise ValueError(
            f"question {item.question_id}: its text has {placed} {DEFAULT_IMAGE_TOKEN} marker(s) but it has "
            f"{n} image(s)/video(s); put one marker per visual, or none to have them put at the front"
        )
    return item.text.replace(DEFAULT_IMAGE_TOKEN, marker)


class PreparedQuestion(NamedTuple):
    index: int
    ids: list
    pixels: list | None  # one tensor per visual: [3,H,W], [1+K,3,H,W] (anyres) or [F,3,H,W] (video)
    visuals: tuple | None  # (image_sizes, modalities)


class _Prepared:
    """Turns items into ``PreparedQuestion``s (prompt ids, pixels per visual); usable as a torch Dataset.

    `sample_format` (llava.data.sample_format, built from the loaded model) says how: its template,
    im_start/im_end use, image processor and image aspect ratio / grid (pixels by llava.images.inputs:
    one image by the aspect ratio, several padded, a video's frames). `model_cfg` (the model's config)
    says how a video's frames are sampled (``frames_upbound``).
    """

    def __init__(self, items, tokenizer, sample_format, model_cfg=None):
        self.items, self.tokenizer, self.format = items, tokenizer, sample_format
        self.model_cfg = model_cfg if model_cfg is not None else sample_format

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from llava.conversation import get_conv_template
        from llava.images.inputs import prepare_visual_list
        from llava.mm_utils import tokenizer_image_token

        item, fmt = self.items[i], self.format
        visuals = item.visuals(self.model_cfg)
        if visuals and fmt.image_processor is None:
            raise ValueError(f"question {item.question_id} has an image but the model has no vision tower")
        conv = get_conv_template(fmt.template, self.tokenizer)
        conv.append_message(conv.roles[0], user_message(item, len(visuals), fmt.mm_use_im_start_end))
        conv.append_message(conv.roles[1], None)
        ids = tokenizer_image_token(conv.get_prompt(), self.tokenizer, IMAGE_TOKEN_INDEX)
        if not visuals:
            return PreparedQuestion(i, ids, None, None)
        pixels, sizes, modalities = prepare_visual_list(visuals, fmt.image_processor, fmt)
        return PreparedQuestion(i, ids, list(pixels), (sizes, modalities))


def stop_string(conv_mode: str, tokenizer) -> str | None:
    """Where answers in template `conv_mode` end (`Conversation.stop_str`, as serving stops)."""
    from llava.conversation import get_conv_template

    return get_conv_template(conv_mode, tokenizer).stop_str


def generation_kwargs(args, tokenizer, stop: str | None) -> dict:
    from transformers import StoppingCriteriaList

    from llava.mm_utils import KeywordsStoppingCriteria

    kwargs = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams, "use_cache": True,
              "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    if args.temperature > 0:
        kwargs.update(do_sample=True, temperature=args.temperature)
        if args.top_p is not None:
            kwargs["top_p"] = args.top_p
    else:
        kwargs["do_sample"] = False
    if stop:
        kwargs["stopping_criteria"] = StoppingCriteriaList([KeywordsStoppingCriteria([stop], tokenizer)])
    return kwargs


def generate_batch(model, tokenizer, batch, gen_kwargs: dict, stop: str | None) -> list[str]:
    """Answers for a batch of ``PreparedQuestion``s, left-padded; their visuals go in batch order."""
    import torch

    width = max(len(q.ids) for q in batch)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, q in enumerate(batch):
        input_ids[row, width - len(q.ids) :] = torch.tensor(q.ids, dtype=torch.long)
        mask[row, width - len(q.ids) :] = 1
    pixels = [p for q in batch if q.pixels for p in q.pixels]
    sizes = [s for q in batch if q.pixels for s in q.visuals[0]]
    modalities = [m for q in batch if q.pixels for m in q.visuals[1]]
    images, extra = None, {}
    if pixels:
        dtype = next(model.parameters()).dtype
        images = [p.to(device=model.device, dtype=dtype) for p in pixels]
        if all(p.shape == pixels[0].shape for p in pixels) and pixels[0].ndim == 3:
            images = torch.stack(images)
        if "video" in modalities:
            extra["modalities"] = modalities
    with torch.inference_mode():
        out = model.generate(input_ids.to(model.device), attention_mask=mask.to(model.device), images=images,
                             image_sizes=sizes or None, **extra, **gen_kwargs)  # fmt: skip
    texts = []
    for text in tokenizer.batch_decode(out, skip_special_tokens=True):
        text = text.strip()
        if stop and stop in text:
            text = text[: text.index(stop)]
        texts.append(text.strip())
    return texts


def add_runner_args(parser: argparse.ArgumentParser, *, question_file: str, max_new_tokens: int,
                    temperature: float = 0.0, num_workers: int = 0) -> None:  # fmt: skip
    """The original runners' flags (with their defaults, except greedy decoding and the template,
    which comes from the checkpoint) plus this runner's."""
    parser.add_argument("--model-path", type=str, default="facebook/opt-350m")
    parser.add_argument("--model-base", type=str, default=None)
    parser.add_argument("--image-folder", type=str, default="")
    parser.add_argument("--video-folder", type=str, default=None,
                        help="where questions' `video` files or frame folders are (default: --image-folder)")  # fmt: skip
    parser.add_argument("--question-file", type=str, default=question_file,
                        help="questions (jsonl/json/tsv), or lmms-lab's parquet: a file, glob or folder of shards")  # fmt: skip
    parser.add_argument("--benchmark", type=str, default=None,
                        help="the lmms-lab parquet layout of --question-file (default: told by its columns)")  # fmt: skip
    parser.add_argument("--answers-file", type=str, default="answer.jsonl")
    parser.add_argument("--conv-mode", type=str, default=None,
                        help="template (default: conv_template in the checkpoint's config, else from its name)")  # fmt: skip
    parser.add_argument("--num-chunks", type=int, default=1)
    parser.add_argument("--chunk-idx", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=max_new_tokens)
    parser.add_argument(
        "--batch-size", type=int, default=1, help="questions generated together (left-padded)"
    )
    parser.add_argument("--num-workers", type=int, default=min(num_workers, os.cpu_count() or 1),
                        help=f"image loading processes (default {num_workers}, at most the CPU count)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    parser.add_argument("--device", type=str, default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=["auto", "float16", "bfloat16", "float32"], default="auto",
                        help="weights' dtype (auto: float16 on CUDA, float32 on CPU)")  # fmt: skip
    parser.add_argument("--load-8bit", action="store_true")
    parser.add_argument("--load-4bit", action="store_true")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the answers file instead of resuming"
    )


def eval_conv_mode(requested: str | None, model, image_processor, model_name: str) -> str:
    """The template to answer in: ``--conv-mode``, else the checkpoint's ``conv_template``, else the guess."""
    from llava.conversation import choose_conv_mode

    return choose_conv_mode(requested, model.config, model_name, multimodal=image_processor is not None)


def run(args, items: Sequence[EvalItem], loaded=None) -> Path:
    """Answer ``items`` (this process's chunk is taken here) into ``args.answers_file``.

    ``loaded`` is an already loaded ``(tokenizer, model, image_processor, context_len)``; by default
    the model is loaded from ``args.model_path`` / ``args.model_base``.
    """
    import torch
    from torch.utils.data import DataLoader

    from llava.data.sample_format import SampleFormat
    from llava.mm_utils import get_model_name_from_path

    model_path = os.path.expanduser(args.model_path)
    model_name = get_model_name_from_path(model_path)
    chunk = get_chunk(items, args.num_chunks, args.chunk_idx)
    answers = AnswerFile(args.answers_file, model_name, overwrite=args.overwrite)
    todo = [it for it in chunk if it.key not in answers.done]
    if not todo:
        answers.close()
        print(f"{args.answers_file}: all {len(chunk)} questions of this chunk are answered")
        return answers.path
    if loaded is None:
        from llava.model.builder import load_pretrained_model

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = {} if args.dtype == "auto" else {"dtype": getattr(torch, args.dtype)}
        loaded = load_pretrained_model(model_path, args.model_base, model_name, load_8bit=args.load_8bit,
                                       load_4bit=args.load_4bit, device=device, **dtype)  # fmt: skip
    tokenizer, model, image_processor, _ = loaded
    model.eval()
    torch.manual_seed(args.seed)
    conv_mode = eval_conv_mode(args.conv_mode, model, image_processor, model_name)
    stop = stop_string(conv_mode, tokenizer)
    gen_kwargs = generation_kwargs(args, tokenizer, stop)
    sample_format = SampleFormat.for_model(
        model, tokenizer, conv_mode, vision=image_processor is not None, image_processor=image_processor
    )
    data = _Prepared(todo, tokenizer, sample_format, model.config)
    loader = DataLoader(
        data, batch_size=max(1, args.batch_size), num_workers=args.num_workers, collate_fn=list
    )
    try:
        with tqdm(total=len(chunk), initial=len(chunk) - len(todo), desc="answers") as bar:
            for batch in loader:
                texts = generate_batch(model, tokenizer, batch, gen_kwargs, stop)
                rows = []
                for q, text in zip(batch, texts):
                    item = todo[q.index]
                    rows.append({"question_id": item.question_id, **item.extra, "prompt": item.prompt, "text": text,
                                 "answer_id": uuid.uuid4().hex, "model_id": model_name, "metadata": {}})  # fmt: skip
                answers.write(rows)
                bar.update(len(rows))
    finally:
        answers.close()
    return answers.path
