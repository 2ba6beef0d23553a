"""Exact token counts of many prompts, fast: ``len(tokenizer_image_token(prompt, tokenizer))``.

Tokenising every conversation of a 665K-sample file with a fast tokenizer costs minutes: the
Rust pipeline handles every character (about 1 µs per token on one core). Most of the text is
words seen many times, so the counter cuts each text piece into *segments* at the places where
no token can cross -- before a run of spaces that follows a non-space character -- and counts
each distinct segment once:

- a segment after the first one gets ``len(enc("a" + seg)) - len(enc("a"))`` tokens (special
  tokens off) in any context, because the tokenizer's work before such a boundary never reaches
  past it and its work after it does not look back; new ordinary words are measured a thousand to
  a string ("a w1 w2 ...", the tokens assigned to words by their character offsets);
- the first segment of a piece is tokenised on its own, with the special tokens (BOS).

This holds for BPE tokenizers of the SentencePiece kind (spaces become "▁", no vocabulary entry
has a "▁" after another character: LLaMA, Vicuna, Mistral in legacy and non-legacy form) and of
the byte-level kind (GPT-2-style pre-tokenisation splits before spaces: Qwen2, LLaMA-3), when no
added token holds a space or strips spaces. Boundaries right after an added token's last
character or after a literal "▁" are not used. Other tokenizers use the plain batch path. Each
call also compares a random sample of prompts with the plain path and, on any difference,
counts everything the plain way (tests compare both paths on adversarial text).
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import re
from collections.abc import Sequence

from llava.constants import DEFAULT_IMAGE_TOKEN

logger = logging.getLogger(__name__)

CHUNK = 2000  # prompts per round of cache filling
VERIFY_PIECES = 200  # pieces compared with the tokenizer's own output per call
JOIN_PARTS = 1000  # words per probe string when learning new words
_PREFIX = "a"
_BAD_METASPACE_ENTRY = re.compile("[^▁]▁")


def _components(section: dict | None, key: str) -> list[dict]:
    """The component dicts of a (possibly Sequence) normalizer / pre-tokenizer section."""
    if not section:
        return []
    return [c for sub in section.get(key, []) for c in _components(sub, key)] or [section]


def segmenting_supported(tokenizer) -> str | None:
    """Why the segment cache cannot be used with ``tokenizer`` (None when it can)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not getattr(tokenizer, "is_fast", False) or backend is None:
        return "not a fast tokenizer"
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout"):
        return f"model type {model.get('type')} (only BPE without dropout)"
    for token in tokenizer.added_tokens_decoder.values():
        if " " in token.content or token.lstrip or token.rstrip or token.single_word:
            return f"added token {token.content!r} holds or strips spaces"
    pre = [c.get("type") for c in _components(spec.get("pre_tokenizer"), "pretokenizers")]
    norm = _components(spec.get("normalizer"), "normalizers")
    metaspace = "Metaspace" in pre or any(
        c.get("type") == "Replace" and c.get("pattern", {}).get("String") == " " and c.get("content") == "▁"
        for c in norm
    )
    if metaspace:
        if any(_BAD_METASPACE_ENTRY.search(piece) for piece in model.get("vocab", {})):
            return "a vocabulary entry joins a character with a following '▁'"
        return None
    if "ByteLevel" in pre:
        return None
    return f"pre-tokenizer {pre or None} / normalizer {[c.get('type') for c in norm] or None}"


class PromptTokenCounter:
    """``count(prompts)`` -> the length of ``tokenizer_image_token(p, tokenizer)`` for each prompt."""

    def __init__(self, tokenizer, use_cache: bool = True):
        self.tokenizer = tokenizer
        reason = segmenting_supported(tokenizer) if use_cache else "disabled"
        self.cached = reason is None
        if reason and use_cache:
            logger.info("token counts without the segment cache: %s", reason)
        self.bos = getattr(tokenizer, "bos_token_id", None)
        self._first: dict[str, tuple[int, int | None]] = {}  # segment -> (ids with specials, first id)
        self._rest: dict[str, int] = {}  # part x -> ids of " " + x after a non-space character
        ends = {t.content[-1] for t in tokenizer.added_tokens_decoder.values() if t.content} | {"▁"}
        # No boundary after whitespace (byte-level BPE joins "\n" and " ") or an unsplittable character.
        no_split_after = r"\s" + re.escape("".join(sorted(ends)))
        self._segments = re.compile(f"(?<=[^{no_split_after}])(?= )").split
        self._irregular = re.compile(f"^ | $|[{no_split_after}] ").search
        self._no_end = re.compile(f"[{no_split_after}]$").search

    # --------------------------------------------------------------------------- exact path
    def _exact(self, pieces: Sequence[str]) -> tuple[list[int], list[int | None]]:
        if not pieces:
            return [], []
        ids = self.tokenizer(list(pieces), return_attention_mask=False)["input_ids"]
        return [len(x) for x in ids], [x[0] if x else None for x in ids]

    # --------------------------------------------------------------------------- cached path
    # A piece becomes its parts: the first segment, then each later segment without the one space
    # it starts with (``str.split(" ")`` gives exactly that for ordinary text; pieces with space
    # runs, edge spaces or unsplittable boundaries go through the boundary regex).
    def _split(self, piece: str) -> list[str]:
        if self._irregular(piece):
            first, *rest = self._segments(piece)
            return [first, *(x[1:] for x in rest)]
        return piece.split(" ")

    def _learn(self, split: list[list[str]]) -> None:
        """Encode the parts not seen yet: first parts alone (with specials), all parts after "a "."""
        new_first = list({parts[0] for parts in split}.difference(self._first))
        if new_first:
            lengths, firsts = self._exact(new_first)
            self._first.update(zip(new_first, zip(lengths, firsts)))
        # (first parts are counted as later parts too: one set over everything is built in C)
        new_rest = set(itertools.chain.from_iterable(split)).difference(self._rest)
        # Ordinary words are probed many to a string ("a w1 w2 ..."; the same boundaries), the rest alone.
        joined = [x for x in new_rest if x and " " not in x and not self._no_end(x)]
        alone = list(new_rest.difference(joined))
        self._rest.update(self._joined_counts(joined))
        if alone:
            backend = self.tokenizer.backend_tokenizer
            base = len(backend.encode(_PREFIX, add_special_tokens=False).ids)
            encoded = backend.encode_batch([f"{_PREFIX} {x}" for x in alone], add_special_tokens=False)
            self._rest.update(zip(alone, (len(e.ids) - base for e in encoded)))

    def _joined_counts(self, parts: list[str]):
        """(part, ids of " " + part) for space-free parts, from strings of JOIN_PARTS parts each."""
        import numpy as np

        groups = [parts[k : k + JOIN_PARTS] for k in range(0, len(parts), JOIN_PARTS)]
        texts = [f"{_PREFIX} " + " ".join(group) for group in groups]
        for group, enc in zip(
            groups, self.tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
        ):
            widths = np.fromiter((len(x) + 1 for x in group), dtype=np.int64, count=len(group))
            space_at = len(_PREFIX) + np.cumsum(widths) - widths  # where each part's space is
            token_at = np.fromiter(
                (start for start, _ in enc.offsets), dtype=np.int64, count=len(enc.offsets)
            )
            owner = np.searchsorted(space_at, token_at, side="right") - 1  # -1: the prefix's tokens
            yield from zip(group, np.bincount(owner[owner >= 0], minlength=len(group)).tolist())

    def _piece_counts(self, pieces: Sequence[str]) -> tuple[list[int], list[int | None]]:
        if not self.cached or not pieces:
            return self._exact(pieces)
        import numpy as np

        split = [self._split(p) for p in pieces]
        self._learn(split)
        flat = list(itertools.chain.from_iterable(split))
        counts = np.fromiter(map(self._rest.__getitem__, flat), dtype=np.int64, count=len(flat))
        starts = np.cumsum([0] + [len(parts) for parts in split[:-1]])
        sums = np.add.reduceat(counts, starts).tolist()
        lengths, firsts = [], []
        for parts, total in zip(split, sums):
            n, first = self._first[parts[0]]
            lengths.append(n + total - self._rest[parts[0]])
            firsts.append(first)
        return lengths, firsts

    # --------------------------------------------------------------------------- public
    def _count_chunk(self, prompts: Sequence[str]) -> list[int]:
        pieces, owner = [], []
        for n, prompt in enumerate(prompts):
            parts = prompt.split(DEFAULT_IMAGE_TOKEN)
            pieces.extend(parts)
            owner.extend([n] * len(parts))
        lengths, firsts = self._piece_counts(pieces)
        # As tokenizer_image_token: BOS + the first piece, then per image its id and the next piece
        # without the BOS the first piece began with.
        totals, strip = [0] * len(prompts), [-1] * len(prompts)
        for k, n in enumerate(owner):
            if strip[n] < 0:
                strip[n] = int(self.bos is not None and firsts[k] == self.bos)
                totals[n] = lengths[k]
            else:
                totals[n] += 1 + max(lengths[k] - strip[n], 0)
        return totals

    def count(self, prompts: Sequence[str], progress: bool = False) -> list[int]:
        from tqdm import tqdm

        out: list[int] = []
        for start in tqdm(
            range(0, len(prompts), CHUNK), desc="counting tokens", disable=not progress, mininterval=2
        ):
            out.extend(self._count_chunk(prompts[start : start + CHUNK]))
        if self.cached and prompts and not self._verified(prompts, out):
            logger.warning(
                "segment-cached token counts differ from the tokenizer's; counting everything exactly"
            )
            self.cached = False
            return self.count(prompts, progress)
        return out

    def _verified(self, prompts: Sequence[str], counts: list[int]) -> bool:
        """Compare the counts of a random sample of prompts with the uncached path."""
        rng = random.Random(len(prompts))
        picked = rng.sample(range(len(prompts)), min(len(prompts), VERIFY_PIECES))
        self.cached = False
        try:
            exact = self._count_chunk([prompts[i] for i in picked])
        finally:
            self.cached = True
        return exact == [counts[i] for i in picked]
