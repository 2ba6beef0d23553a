"""Per-sample token counts of a training file, computed once and cached next to the data.

The length-grouped samplers need every sample's length before the first step. Counting tokens
means rendering and tokenising every conversation exactly as training will (through
`llava.data.preprocess.preprocess`), which also finds samples whose labels cannot be built
before hours of training are spent. For 665K samples that takes minutes, so the result is cached
in a JSON file keyed by the data file (path, size, mtime), the tokenizer (its full serialisation),
the template, `mm_use_im_start_end` and `model_max_length`; any change gives a new cache file.

The cache stores text-token counts (without image tokens); the caller adds the number of image
tokens for samples with an image.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
PARALLEL_THRESHOLD = 5000  # samples; below this one process is faster than starting workers


@dataclass(frozen=True)
class LengthOptions:
    """What the token counts depend on besides the data file and the tokenizer."""

    conv_version: str | None
    mm_use_im_start_end: bool
    is_multimodal: bool

    def as_data_args(self):
        # preprocess_multimodal reads these attributes off DataArguments.
        from types import SimpleNamespace

        return SimpleNamespace(is_multimodal=self.is_multimodal, mm_use_im_start_end=self.mm_use_im_start_end)


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


def cache_key(data_path: str | os.PathLike, tokenizer, opts: LengthOptions) -> str:
    st = os.stat(data_path)
    payload = {
        "format": CACHE_FORMAT,
        "data": [str(Path(data_path).resolve()), st.st_size, st.st_mtime_ns],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "model_max_length": int(tokenizer.model_max_length),
        "opts": [opts.conv_version, opts.mm_use_im_start_end, opts.is_multimodal],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_path(data_path: str | os.PathLike, key: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """`<data dir>/.llava_cache/<data file>.<key>.lengths.json`, or under `cache_dir` when given."""
    data_path = Path(data_path)
    folder = Path(cache_dir) if cache_dir else data_path.resolve().parent / ".llava_cache"
    return folder / f"{data_path.name}.{key[:16]}.lengths.json"


def _fallback_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llava" / "lengths"


def count_sample(sample: dict, tokenizer, opts: LengthOptions) -> tuple[int, str | None]:
    """(text-token count, None) or (0, error message) for one sample."""
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.data.preprocess import SampleError, preprocess, preprocess_multimodal

    try:
        has_image = "image" in sample
        sources = [copy.deepcopy(sample["conversations"])]
        if has_image:
            sources = preprocess_multimodal(sources, opts.as_data_args(), conv=opts.conv_version)
        out = preprocess(sources, tokenizer, has_image=has_image, conv=opts.conv_version)
        ids = out["input_ids"][0]
        return int((ids != IMAGE_TOKEN_INDEX).sum()), None
    except SampleError as e:
        return 0, e.reason
    except Exception as e:  # every failure is reported with the sample, not just label errors
        return 0, f"{type(e).__name__}: {e}"


@dataclass
class _Counter:
    tokenizer: Any
    opts: LengthOptions

    def __call__(self, samples: list[dict]) -> list[tuple[int, str | None]]:
        return [count_sample(s, self.tokenizer, self.opts) for s in samples]


def count_all(samples: list[dict], tokenizer, opts: LengthOptions, num_workers: int | None = None):
    """Token counts and errors of all samples, in parallel for large files."""
    from tqdm import tqdm

    counter = _Counter(tokenizer, opts)
    if num_workers is None:
        num_workers = min(os.cpu_count() or 1, 16)
    if len(samples) < PARALLEL_THRESHOLD or num_workers <= 1:
        return [counter([s])[0] for s in tqdm(samples, desc="counting tokens", mininterval=5)]
    import multiprocessing as mp

    chunk = max(1, min(2000, len(samples) // (num_workers * 4)))
    chunks = [samples[i : i + chunk] for i in range(0, len(samples), chunk)]
    results: list[tuple[int, str | None]] = []
    with ProcessPoolExecutor(num_workers, mp_context=mp.get_context("spawn")) as pool:
        for part in tqdm(pool.map(counter, chunks), total=len(chunks), desc="counting tokens", mininterval=5):
            results.extend(part)
    return results


def _write_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_or_compute(
    data_path: str | os.PathLike,
    samples: list[dict],
    tokenizer,
    opts: LengthOptions,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[list[int], dict[int, str]]:
    """(text-token count per sample, {index: error}) from the cache, computing and caching on a miss."""
    key = cache_key(data_path, tokenizer, opts)
    candidates = [cache_path(data_path, key, cache_dir)]
    if cache_dir is None:
        candidates.append(cache_path(data_path, key, _fallback_dir()))
    for path in candidates:
        if path.is_file():
            try:
                cached = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                logger.warning("ignoring unreadable length cache %s (%s)", path, e)
                continue
            if cached.get("key") == key and len(cached.get("lengths", [])) == len(samples):
                logger.info("token lengths of %d samples read from %s", len(samples), path)
                return cached["lengths"], {int(k): v for k, v in cached.get("errors", {}).items()}
    results = count_all(samples, tokenizer, opts)
    lengths = [n for n, _ in results]
    errors = {i: err for i, (_, err) in enumerate(results) if err is not None}
    record = {"key": key, "data_path": str(data_path), "lengths": lengths, "errors": errors}
    for path in candidates:
        try:
            _write_atomic(path, record)
            logger.info("token lengths of %d samples cached in %s", len(samples), path)
            break
        except OSError as e:
            logger.warning("cannot write the length cache to %s (%s)", path, e)
    return lengths, errors
