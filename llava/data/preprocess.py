"""Training samples -> input_ids and labels, from one rendering of the conversation.

For each sample the conversation template renders the whole prompt once
(`Conversation.get_prompt_with_target_spans`), the whole string is tokenised exactly as
inference tokenises a prompt (`tokenizer_image_token`), and a token is a target when its
character span (from the fast tokenizer's offset mapping, chunk by chunk around `<image>`)
overlaps an assistant span: the reply plus its end-of-turn text (`"</s>"` for v1, `" </s>"` for
llama_2, `"<|im_end|>"` for mpt/chatml, `"\\n"` for plain). Everything else is IGNORE_INDEX.
No piece is re-tokenised and no offsets are counted, so legacy and non-legacy LLaMA tokenizers
(which differ right after `</s>`) both get right labels.

A sample whose labels cannot be built raises `SampleError` naming the sample; nothing is masked
silently. Differences from the original LLaVA `preprocess`, on purpose:
- v0/SINGLE templates train on `get_prompt()` text (the original used a separate "### " format).
- A batch of N > 1 samples is right-padded (ids with the pad id, or 0 when the tokenizer has none;
  labels with IGNORE_INDEX) instead of failing in torch.stack; the dataset passes N = 1.
- `preprocess_multimodal` keeps the number of `<image>` markers (the original merged them into one),
  and leaves several markers of one turn in place (interleaved images, as LLaVA-NeXT).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from llava import conversation as conversation_lib
from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
)
from llava.conversation import Conversation, SeparatorStyle, get_conv_template
from llava.data.length_budget import CutError, LengthBudget
from llava.mm_utils import tokenizer_image_token_with_offsets

HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")


class SampleError(ValueError):
    """A training sample whose input_ids/labels cannot be built; `.sample_id` says which one."""

    def __init__(self, sample_id: Any, reason: str):
        self.sample_id = sample_id
        self.reason = reason
        super().__init__(f"sample {sample_id!r}: {reason}")


def resolve_conversation(conv: Conversation | str | None, tokenizer=None) -> Conversation:
    """A fresh Conversation from a template name, a Conversation, or None (`default_conversation`,
    which is v1 unless a caller reassigned it as the original train() did)."""
    if conv is None:
        conv = conversation_lib.default_conversation
    conv = get_conv_template(conv) if isinstance(conv, str) else conv.copy()
    if conv.sep_style == SeparatorStyle.CHAT_TEMPLATE and conv.tokenizer is None:
        conv.bind_tokenizer(tokenizer)
    return conv


def preprocess_multimodal(sources, data_args, conv: Conversation | str | None = None):
    """Move a turn's one `<image>` to its front (followed by a newline) and wrap markers as configured.

    A turn with several markers (interleaved images) keeps them where they stand, as LLaVA-NeXT does.

    `data_args`: any object with `is_multimodal` and `mm_use_im_start_end` (a SampleFormat, or the
    original's DataArguments). `is_multimodal` False leaves sources untouched; `mm_use_im_start_end`
    wraps each marker as `<im_start><image><im_end>`; "mmtag" templates wrap it as
    `<Image><image></Image>`. Edits `sources` in place (as the original) and returns it.
    """
    if not getattr(data_args, "is_multimodal", False):
        return sources
    version = resolve_conversation(conv).version
    for source in sources:
        for sentence in source:
            value = sentence["value"]
            count = value.count(DEFAULT_IMAGE_TOKEN)
            if count == 1:  # as LLaVA-1.5: the one marker moves to the front of its turn
                rest = value.replace(DEFAULT_IMAGE_TOKEN, "").strip()
                value = (DEFAULT_IMAGE_TOKEN + "\n" + rest).strip()
            # several markers are interleaved with the text and stay where they are (LLaVA-NeXT)
            if count:
                if "mmtag" in version:
                    value = value.replace(DEFAULT_IMAGE_TOKEN, "<Image>" + DEFAULT_IMAGE_TOKEN + "</Image>")
            if getattr(data_args, "mm_use_im_start_end", False):
                value = value.replace(
                    DEFAULT_IMAGE_TOKEN, DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
                )
            sentence["value"] = value
    return sources


def _turns(source: Sequence[dict], sample_id: Any) -> tuple[str | None, list[str]]:
    """(system override or None, alternating human/assistant texts), validated."""
    if not source:
        raise SampleError(sample_id, "conversation is empty")
    system = None
    turns = list(source)
    if str(turns[0].get("from", "")).lower() == "system":
        system, turns = turns[0].get("value", ""), turns[1:]
    if turns and str(turns[0].get("from", "")).lower() in ASSISTANT_ROLES:
        turns = turns[1:]  # the original skips a leading assistant turn
    texts = []
    for j, turn in enumerate(turns):
        who = str(turn.get("from", "")).lower()
        if who not in HUMAN_ROLES + ASSISTANT_ROLES:
            raise SampleError(sample_id, f"turn {j} has role {turn.get('from')!r}; expected human/gpt")
        if (who in ASSISTANT_ROLES) != (j % 2 == 1):
            raise SampleError(
                sample_id, f"roles do not alternate human/gpt at turn {j} ({turn.get('from')!r})"
            )
        value = turn.get("value")
        if not isinstance(value, str) or not value.strip():
            raise SampleError(sample_id, f"turn {j} ({turn.get('from')!r}) is empty")
        if j % 2 == 1 and DEFAULT_IMAGE_TOKEN in value:
            raise SampleError(sample_id, f"assistant turn {j} contains {DEFAULT_IMAGE_TOKEN}")
        texts.append(value)
    if len(texts) < 2:
        raise SampleError(
            sample_id, "no assistant reply to train on (need a human turn followed by a gpt turn)"
        )
    return system, texts


def _check_images(texts: list[str], num_images: int, sample_id: Any) -> None:
    found = sum(t.count(DEFAULT_IMAGE_TOKEN) for t in texts)
    if num_images == 0 and found:
        raise SampleError(sample_id, f"{DEFAULT_IMAGE_TOKEN} in a text-only sample ({found} found, no image)")
    if found > num_images:
        raise SampleError(sample_id, f"{found} {DEFAULT_IMAGE_TOKEN} markers but only {num_images} image(s)")
    if found < num_images:
        raise SampleError(
            sample_id,
            f"{num_images} image(s) but {found} {DEFAULT_IMAGE_TOKEN} marker(s); "
            "run preprocess_multimodal or add the marker to the first human turn",
        )


def render_sample(
    source: Sequence[dict],
    tokenizer=None,
    conv: Conversation | str | None = None,
    num_images: int = 0,
    sample_id: Any = None,
) -> tuple[str, list[tuple[int, int]]]:
    """The prompt text `tokenize_sample` tokenises for `source`, and its assistant character spans.

    Validates the turns and the `<image>` count first; raises SampleError naming the sample.
    (`tokenizer` is needed only by the "chat_template" template.)
    """
    conv = resolve_conversation(conv, tokenizer)
    system, texts = _turns(source, sample_id)
    _check_images(texts, num_images, sample_id)
    if conv.sep_style == SeparatorStyle.PLAIN:
        # As the original preprocess_plain: one caption per image, the human text replaced by the
        # bare image marker, rendered "<image>" + caption + "\n".
        if len(texts) != 2 or num_images != 1:
            raise SampleError(sample_id, "the plain template needs one image and exactly one human/gpt pair")
        texts = [DEFAULT_IMAGE_TOKEN, texts[1]]
    if system is not None:
        conv.system = system
    conv.messages = []
    for j, text in enumerate(texts):
        conv.append_message(conv.roles[j % 2], text)
    try:
        return conv.get_prompt_with_target_spans()
    except ValueError as err:
        raise SampleError(sample_id, f"cannot render with template {conv.version!r}: {err}") from err


def tokenize_sample(
    source: Sequence[dict],
    tokenizer,
    conv: Conversation | str | None = None,
    num_images: int = 0,
    sample_id: Any = None,
    budget: LengthBudget | None = None,
) -> tuple[list[int], list[int]]:
    """input_ids and labels (lists of equal length) for one conversation `source`, cut by `budget`.

    `source` is a list of {"from": "human"|"gpt", "value": str} (a leading "system" turn replaces
    the template's system prompt). `budget` (llava.data.length_budget) defaults to
    `tokenizer.model_max_length` with an image placeholder counted as one token (the original
    `preprocess`); the dataset passes its SampleFormat's budget. Raises SampleError when labels
    cannot be built or the cut would drop an image or every target.
    """
    prompt, spans = render_sample(source, tokenizer, conv, num_images, sample_id)
    enc = tokenizer_image_token_with_offsets(prompt, tokenizer)
    labels = _labels_from_spans(enc, spans, sample_id)
    if budget is None:
        budget = LengthBudget(tokenizer.model_max_length)
    try:
        return budget.cut(enc.ids, labels)
    except CutError as err:
        raise SampleError(sample_id, str(err)) from err


def _labels_from_spans(enc, spans: list[tuple[int, int]], sample_id: Any) -> list[int]:
    labels = [IGNORE_INDEX] * len(enc.ids)
    hit = [False] * len(spans)
    k = 0  # tokens and spans both run in text order
    for i, (tid, (a, b), added) in enumerate(zip(enc.ids, enc.offsets, enc.added)):
        if added or tid == IMAGE_TOKEN_INDEX:
            continue  # BOS added by the tokenizer, image placeholders: never targets
        while k < len(spans) and spans[k][1] <= a:
            k += 1
        # Overlap of the token's [a, b) with the span; a zero-width token counts at its position.
        if k < len(spans) and (spans[k][0] < b or spans[k][0] <= a):
            labels[i] = tid
            hit[k] = True
    missing = [s for s, ok in enumerate(hit) if not ok]
    if missing:
        raise SampleError(
            sample_id, f"assistant turn(s) {missing} got no tokens (tokenizer offsets unusable?)"
        )
    return labels


def preprocess(
    sources: Sequence[Sequence[dict]],
    tokenizer,
    has_image: bool | int = False,
    conv: Conversation | str | None = None,
    sample_ids: Sequence[Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Original signature: `sources` is a list of conversations; returns LongTensors [N, L].

    `has_image`: True (or a count) means each sample comes with that many images (True = 1).
    `conv`: template name or Conversation; None uses `conversation.default_conversation` (v1).
    `sample_ids`: names used in SampleError messages (default: the position in `sources`).
    """
    num_images = int(has_image)
    rows = [
        tokenize_sample(
            src, tokenizer, conv, num_images, sample_ids[i] if sample_ids is not None else f"#{i}"
        )
        for i, src in enumerate(sources)
    ]
    width = max((len(ids) for ids, _ in rows), default=0)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, (ids, lab) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[r, : len(lab)] = torch.tensor(lab, dtype=torch.long)
    return dict(input_ids=input_ids, labels=labels)
