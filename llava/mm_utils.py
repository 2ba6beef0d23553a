"""Token helpers shared by training, serving and evaluation, and the image helpers' original names.

The image helpers (`process_images`, `expand2square`, the anyres ones) live in `llava.images` and are
re-exported here for code that imports them from `llava.mm_utils`, as it does with the original.
`tokenizer_image_token` turns a rendered prompt into ids with IMAGE_TOKEN_INDEX where each
`<image>` stood. `tokenizer_image_token_with_offsets` is the same tokenisation (one code path)
that also returns each token's character span in the prompt; the training label builder uses it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from transformers import StoppingCriteria

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.images.process import (  # noqa: F401  (the original's public names)
    IMAGE_ASPECT_RATIOS,
    divide_to_patches,
    expand2square,
    get_anyres_image_grid_shape,
    load_image_from_base64,
    process_anyres_image,
    process_images,
    resize_and_pad_image,
    select_best_resolution,
)


# --------------------------------------------------------------------------------------- tokens
class TokenizedPrompt(NamedTuple):
    """ids (IMAGE_TOKEN_INDEX for each `<image>`), per-token [start, end) character spans in the
    prompt, and whether each token was added by the tokenizer (BOS) rather than read from text."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    added: list[bool]


def _encode(prompt: str, tokenizer, image_token_index: int, with_offsets: bool) -> TokenizedPrompt:
    # Each chunk between `<image>` markers is tokenised on its own, exactly as the original
    # tokenizer_image_token did; the BOS of the first chunk is kept and later chunks' BOS dropped.
    chunks = prompt.split(DEFAULT_IMAGE_TOKEN)
    encoded, start = [], 0
    for chunk in chunks:
        if with_offsets:
            enc = tokenizer(chunk, return_offsets_mapping=True, return_special_tokens_mask=True)
            offsets = [(start + a, start + b) for a, b in enc["offset_mapping"]]
            added = [bool(m) for m in enc["special_tokens_mask"]]
        else:
            enc = tokenizer(chunk)
            offsets, added = [(start, start)] * len(enc["input_ids"]), [False] * len(enc["input_ids"])
        encoded.append((list(enc["input_ids"]), offsets, added, start))
        start += len(chunk) + len(DEFAULT_IMAGE_TOKEN)
    bos = getattr(tokenizer, "bos_token_id", None)
    strip = int(bos is not None and bool(encoded[0][0]) and encoded[0][0][0] == bos)
    out = TokenizedPrompt([], [], [])
    if strip:
        out.ids.append(bos)
        out.offsets.append(encoded[0][1][0])
        out.added.append(True)
    for n, (ids, offsets, added, chunk_start) in enumerate(encoded):
        if n > 0:
            img_start = chunk_start - len(DEFAULT_IMAGE_TOKEN)
            out.ids.append(image_token_index)
            out.offsets.append((img_start, chunk_start))
            out.added.append(False)
        out.ids.extend(ids[strip:])
        out.offsets.extend(offsets[strip:])
        out.added.extend(added[strip:])
    return out


def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX, return_tensors=None):
    """Token ids of `prompt` with `image_token_index` spliced in where each `<image>` was."""
    ids = _encode(prompt, tokenizer, image_token_index, with_offsets=False).ids
    if return_tensors is None:
        return ids
    if return_tensors == "pt":
        return torch.tensor(ids, dtype=torch.long)
    raise ValueError(f"Unsupported tensor type: {return_tensors} (only 'pt' or None)")


def tokenizer_image_token_with_offsets(
    prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX
) -> TokenizedPrompt:
    """`tokenizer_image_token` plus each token's character span (needs a fast tokenizer)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} gives no character offsets; load the tokenizer with "
            "AutoTokenizer.from_pretrained(path, use_fast=True) (needs its tokenizer.json or a convertible model)"
        )
    return _encode(prompt, tokenizer, image_token_index, with_offsets=True)


# --------------------------------------------------------------------------------------- misc
def get_model_name_from_path(model_path: str) -> str:
    """Last folder name, or "<parent>_checkpoint-N" for a Trainer checkpoint folder."""
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return parts[-2] + "_" + parts[-1]
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stops each sequence once its generated text ends with (or contains) one of `keywords`.

    Returns a per-sequence BoolTensor, as current transformers expects, so in a batch finished
    rows stop while the others go on. `input_ids` is the prompt given to generate (its length is
    skipped when the sequences passed in still hold the prompt); None when they hold only new tokens.
    """

    def __init__(self, keywords, tokenizer, input_ids: Any = None):
        self.keywords = [k for k in keywords if k]
        self.tokenizer = tokenizer
        self.keyword_ids = []
        for keyword in self.keywords:
            ids = tokenizer(keyword).input_ids
            if len(ids) > 1 and ids[0] == tokenizer.bos_token_id:
                ids = ids[1:]
            self.keyword_ids.append(torch.tensor(ids, dtype=torch.long))
        self.max_keyword_len = max((len(k) for k in self.keyword_ids), default=0)
        self.start_len = 0 if input_ids is None else int(input_ids.shape[-1])

    def _row_done(self, row: torch.Tensor) -> bool:
        for kid in self.keyword_ids:
            if 0 < len(kid) <= row.shape[0] and torch.equal(row[-len(kid) :], kid.to(row.device)):
                return True
        cur = row.shape[0]
        new = cur - self.start_len if cur > self.start_len else cur
        window = min(new, self.max_keyword_len + 2)
        if window <= 0:
            return False
        text = self.tokenizer.decode(row[-window:], skip_special_tokens=True)
        return any(k in text for k in self.keywords)

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor = None, **kwargs
    ) -> torch.BoolTensor:
        done = [self._row_done(row) for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
