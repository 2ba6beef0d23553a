"""Per-sample tokens of a training file, computed once and cached next to the data.

The length-grouped samplers need every sample's length before the first step, and training needs
every sample's input ids and labels. Both come from rendering and tokenising every conversation
exactly as training does (`SampleFormat.tokenize`: rendered, tokenised and cut once by the length
budget), which also finds samples whose labels cannot be built before hours of training are spent.
For 665K samples that takes minutes, so it is done once and cached, keyed by the data file (path,
size, mtime), the tokenizer (its full serialisation), what of the SampleFormat changes ids
(`SampleFormat.token_key`: template, `mm_use_im_start_end`, the length budget), every sample's visual
token counts (which move the cut: an anyres image's tiles, a video's frames) and the source of the
rendering code (templates, preprocess, mm_utils, sample format, length budget); any change gives a
new cache. Two files per key:

- `<data file>.<key>.tokens.npy`: all samples' ids end to end, one integer per token (uint16 when
  the vocabulary allows, else uint32): the id, the top bit set when the token is a target
  (its label is the id), and all low bits set for an image placeholder. Training memory-maps it,
  so DataLoader workers share one copy and nothing is re-tokenised.
- `<data file>.<key>.lengths.json`: text-token counts after the cut (without image tokens; the
  caller adds them with `LengthBudget.cost`), errors by sample, the samples the budget cut, and each
  sample's offset into the token file. Written last: its presence means the token file is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava.data.sample_format import SampleFormat
from llava.data.token_store import TokenStore, write_tokens
from llava.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)

CACHE_FORMAT = 4  # 2: the token file; 3: keyed by the SampleFormat, the cut samples; 4: per-visual costs
# Samples below which one process is faster than starting spawned workers: each imports torch,
# transformers and llava first (about 8 CPU s on a 2-core machine, against 1.8 ms per sample), and
# only W - 1 of W workers' time is a gain over this process doing it all: the threshold is
# PARALLEL_THRESHOLD x W / (W - 1). Measured on 2 cores (2 workers vs 1): 5,000 samples 12.1 vs 11.5 s
# wall, 10,000 19.7 vs 23.7 s, 20,000 28.0 vs 36.2 s.
PARALLEL_THRESHOLD = 5000


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything in the tokenizer that changes token ids."""
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    extras = {
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "added": sorted(str(t) for t in tokenizer.get_added_vocab()),
        "legacy": getattr(tokenizer, "legacy", None),
        "add_bos": getattr(tokenizer, "add_bos_token", None),
        "add_eos": getattr(tokenizer, "add_eos_token", None),
    }
    h.update(json.dumps(extras, sort_keys=True).encode())
    return h.hexdigest()


def cache_key(
    data_path: str | os.PathLike, tokenizer, fmt: SampleFormat, visual_tokens=None, data_fingerprint=None
) -> str:
    """`visual_tokens`: each sample's per-visual token counts (None: the format's fixed ones);
    `data_fingerprint`: what identifies the data (llava.data.sources: shards, a mixture), else the
    file's path, size and modification time."""
    if data_fingerprint is None:
        st = os.stat(data_path)
        data_fingerprint = [str(Path(data_path).resolve()), st.st_size, st.st_mtime_ns]
    payload = {
        "format": CACHE_FORMAT,
        "data": data_fingerprint,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "sample_format": fmt.token_key(),
        "code": code_fingerprint(),
    }
    if visual_tokens is not None:
        payload["visual_tokens"] = hashlib.sha256(json.dumps(visual_tokens).encode()).hexdigest()
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def code_fingerprint() -> str:
    """A hash of the code that renders and tokenises samples (templates, label building), so a
    changed template or label rule never reads tokens cached by the old code."""
    import llava.constants
    import llava.conversation
    import llava.conversation_templates
    import llava.data.length_budget
    import llava.data.preprocess
    import llava.data.sample_format
    import llava.data.visuals
    import llava.mm_utils

    h = hashlib.sha256()
    modules = (llava.conversation, llava.conversation_templates, llava.constants, llava.data.preprocess,
               llava.mm_utils, llava.data.sample_format, llava.data.length_budget, llava.data.visuals)  # fmt: skip
    for module in modules:
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()


def cache_path(data_path: str | os.PathLike, key: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """`<data dir>/.llava_cache/<data file>.<key>.lengths.json`, or under `cache_dir` when given."""
    data_path = Path(data_path)
    folder = Path(cache_dir) if cache_dir else data_path.resolve().parent / ".llava_cache"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", data_path.name) or "data"  # a glob's pattern
    return folder / f"{name}.{key[:16]}.lengths.json"


def _fallback_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llava" / "lengths"


@dataclass
class Encoded:
    """One sample as training tokenises it: `ids` (int32, IMAGE_TOKEN_INDEX for image placeholders)
    and `targets` (bool: the label is the id, else IGNORE_INDEX), or the reason it cannot be used.
    Compact because a large file's samples are all held once while the cache is written."""

    ids: Any = None
    targets: Any = None
    error: str | None = None
    cut: bool = False  # the length budget cut it

    @property
    def count(self) -> int:
        """Text tokens (image placeholders not counted); 0 for a failed sample."""
        from llava.constants import IMAGE_TOKEN_INDEX

        return 0 if self.ids is None else int((self.ids != IMAGE_TOKEN_INDEX).sum())


def encode_sample(sample: dict, tokenizer, fmt: SampleFormat, visual_tokens=None) -> Encoded:
    """`sample` rendered, tokenised and cut exactly as training does (`SampleFormat.tokenize`, each
    visual costing `visual_tokens`)."""
    import numpy as np

    from llava.constants import IGNORE_INDEX
    from llava.data.preprocess import SampleError

    try:
        ids, labels, cut = fmt.tokenize(sample, tokenizer, visual_tokens)
        ids, labels = np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    except SampleError as e:
        return Encoded(error=e.reason)
    except Exception as e:  # every failure is reported with the sample, not just label errors
        return Encoded(error=f"{type(e).__name__}: {e}")
    targets = labels != IGNORE_INDEX
    if not (labels[targets] == ids[targets]).all():
        raise ValueError("preprocess gave a label that is not its input id; the token cache cannot hold it")
    return Encoded(ids.astype(np.int32), targets, cut=cut)


def count_sample(sample: dict, tokenizer, fmt: SampleFormat, visual_tokens=None) -> tuple[int, str | None]:
    """(text-token count after the cut, None) or (0, error message) for one sample."""
    enc = encode_sample(sample, tokenizer, fmt, visual_tokens)
    return enc.count, enc.error


@dataclass
class _Encoder:
    tokenizer: Any
    fmt: SampleFormat

    def __call__(self, items: list[tuple[dict, list[int] | None]]) -> list[Encoded]:
        return [encode_sample(s, self.tokenizer, self.fmt, costs) for s, costs in items]


def count_all(
    samples: list[dict], tokenizer, fmt: SampleFormat, num_workers: int | None = None, visual_tokens=None
) -> list[Encoded]:
    """Every sample encoded (ids, targets, count) or failed, in parallel for large files;
    `visual_tokens`: each sample's per-visual token counts (None: the format's fixed ones)."""
    samples = list(zip(samples, visual_tokens if visual_tokens is not None else [None] * len(samples)))
    from tqdm import tqdm

    encoder = _Encoder(tokenizer, fmt.for_tokens())
    if num_workers is None:
        num_workers = min(os.cpu_count() or 1, 16)
    if num_workers <= 1 or len(samples) < PARALLEL_THRESHOLD * num_workers / (num_workers - 1):
        return [encoder([item])[0] for item in tqdm(samples, desc="tokenising", mininterval=5)]
    import multiprocessing as mp

    chunk = max(1, min(2000, len(samples) // (num_workers * 4)))
    chunks = [samples[i : i + chunk] for i in range(0, len(samples), chunk)]
    results: list[Encoded] = []
    with ProcessPoolExecutor(num_workers, mp_context=mp.get_context("spawn")) as pool:
        for part in tqdm(pool.map(encoder, chunks), total=len(chunks), desc="tokenising", mininterval=5):
            results.extend(part)
    return results


@dataclass
class TokenCache:
    """What `load_or_build` returns: text-token counts (after the cut), {index: error}, the tokens,
    and the indices of the samples the length budget cut."""

    lengths: list[int]
    errors: dict[int, str]
    tokens: TokenStore
    cut: list[int] = field(default_factory=list)


def _read(path: Path, key: str, n: int) -> TokenCache | None:
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable token cache %s (%s)", path, e)
        return None
    if cached.get("key") != key or len(cached.get("lengths", [])) != n:
        return None
    tokens_file = path.with_name(cached.get("tokens_file", ""))
    offsets = cached.get("token_offsets")
    if not cached.get("tokens_file") or offsets is None or not tokens_file.is_file():
        return None
    errors = {int(k): v for k, v in cached.get("errors", {}).items()}
    return TokenCache(cached["lengths"], errors, TokenStore(tokens_file, offsets), cached.get("cut", []))


def load_or_build(
    data_path: str | os.PathLike,
    samples: list[dict],
    tokenizer,
    fmt: SampleFormat,
    cache_dir: str | os.PathLike | None = None,
    visual_tokens: list[list[int]] | None = None,
    data_fingerprint=None,
) -> TokenCache:
    """Counts, errors and tokens of `samples` from the cache; tokenising and caching on a miss.
    `visual_tokens`: each sample's per-visual token counts (None: the format's fixed ones);
    `data_fingerprint`: see `cache_key`.

    When no cache folder is writable the tokens are kept in a temporary file for this process.
    """
    key = cache_key(data_path, tokenizer, fmt, visual_tokens, data_fingerprint)
    candidates = [cache_path(data_path, key, cache_dir)]
    if cache_dir is None:
        candidates.append(cache_path(data_path, key, _fallback_dir()))
    for path in candidates:
        if path.is_file() and (found := _read(path, key, len(samples))) is not None:
            logger.info("tokens of %d samples read from %s", len(samples), path)
            return found
    results = count_all(samples, tokenizer, fmt, visual_tokens=visual_tokens)
    lengths = [r.count for r in results]
    errors = {i: r.error for i, r in enumerate(results) if r.error is not None}
    cut = [i for i, r in enumerate(results) if r.cut]
    encoded = [None if r.error is not None else (r.ids, r.targets) for r in results]
    record = {"key": key, "data_path": str(data_path), "lengths": lengths, "errors": errors, "cut": cut}
    for path in candidates:
        try:
            return _write_cache(path, record, encoded)
        except OSError as e:
            logger.warning("cannot write the token cache to %s (%s)", path, e)
    path = Path(tempfile.mkdtemp(prefix="llava-tokens-")) / candidates[0].name
    logger.warning("token cache kept in %s for this run only", path.parent)
    return _write_cache(path, record, encoded)


def _write_cache(path: Path, record: dict, encoded) -> TokenCache:
    tokens_file = path.with_name(path.name.replace(".lengths.json", ".tokens.npy"))
    offsets = write_tokens(tokens_file, encoded)
    atomic_write_text(path, json.dumps(dict(record, tokens_file=tokens_file.name, token_offsets=offsets)))
    logger.info("tokens of %d samples cached in %s", len(encoded), path)
    return TokenCache(record["lengths"], record["errors"], TokenStore(tokens_file, offsets), record["cut"])


def load_or_compute(
    data_path: str | os.PathLike,
    samples: list[dict],
    tokenizer,
    fmt: SampleFormat,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[list[int], dict[int, str]]:
    """(text-token count per sample, {index: error}) from the cache, computing and caching on a miss."""
    cache = load_or_build(data_path, samples, tokenizer, fmt, cache_dir)
    return cache.lengths, cache.errors
