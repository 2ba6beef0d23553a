"""A YAML data mixture (LLaVA-NeXT / OneVision's `--data_path x.yaml`): several sources, each sampled.

    datasets:
      - json_path: llava_next_fit_mix.json        # any --data_path form: JSON/JSONL, parquet, a folder...
        sampling_strategy: "first:50%"            # all (default) | first:N | end:N | random:N, N or N%
        image_folder: /data/next/images           # ours: this entry's folders (default: the run's flags)
        video_folder: /data/next/videos
      - json_path: /data/ov/shards/               # a folder of parquet shards
        sampling_strategy: "random:1000"

LLaVA-NeXT's semantics: `N%` takes ceil(N * len / 100) samples (N may have decimals here), `N` takes
N samples (capped at the entry's length, with a warning); `first` the first ones, `end` the last ones,
`random` a seeded sample. Unlike LLaVA-NeXT the random sample is deterministic: drawn with a generator
seeded by (seed, json_path, sampling_strategy), so it does not depend on the order of the entries, and
it keeps the entry's order (the training sampler shuffles). The mixture is the entries one after
another, each a view of its source (nothing copied). A relative path is taken from the current folder
(as LLaVA-NeXT does), else from the YAML file's folder. Errors name the YAML file and the entry.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
import os
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from llava.data.sources import SampleSource

logger = logging.getLogger(__name__)

ENTRY_KEYS = ("json_path", "sampling_strategy", "image_folder", "video_folder")
STRATEGIES = "all | first:N | end:N | random:N (N a count, or a percentage such as 10%)"
_STRATEGY = re.compile(r"^(first|end|random):(\d+(?:\.\d+)?)(%?)$")


@dataclass(frozen=True)
class Sampling:
    kind: str  # all, first, end, random
    amount: Fraction | None = None  # a count, or a percentage when `percent`
    percent: bool = False

    def count(self, n: int) -> int:
        if self.kind == "all":
            return n
        k = math.ceil(self.amount * n / 100) if self.percent else int(self.amount)
        return min(k, n)

    def select(self, n: int, seed: int, key: str):
        """The indices (a range, or a sorted list for random) of the `n` samples this keeps."""
        k = self.count(n)
        if self.kind in ("all", "first"):
            return range(k)
        if self.kind == "end":
            return range(n - k, n)
        return sorted(random.Random(f"{seed}|{key}").sample(range(n), k))


def parse_sampling(text) -> Sampling:
    """`all`, `first:N`, `end:N`, `random:N` with N a count or `N%`; a ValueError says what is accepted."""
    s = str(text).strip().replace(" ", "")
    if s == "all":
        return Sampling("all")
    m = _STRATEGY.match(s)
    if not m:
        raise ValueError(f"sampling_strategy {text!r} is not one of: {STRATEGIES}")
    kind, number, percent = m.group(1), Fraction(m.group(2)), bool(m.group(3))
    if percent and not 0 < number <= 100:
        raise ValueError(f"sampling_strategy {text!r}: a percentage must be above 0 and at most 100")
    if not percent and (number.denominator != 1 or number < 1):
        raise ValueError(f"sampling_strategy {text!r}: a count must be a whole number of at least 1")
    return Sampling(kind, number, percent)


@dataclass
class MixtureEntry:
    json_path: str  # as written in the YAML
    sampling_strategy: str
    source: SampleSource
    indices: range | list[int]  # rows of `source` this entry keeps, in order
    image_folder: str | None = None
    video_folder: str | None = None


def _resolve(value: str, base: Path) -> str:
    """`value` as written when absolute or found from the current folder, else under `base` if there."""
    p = os.path.expanduser(value)
    if os.path.isabs(p) or os.path.exists(p) or not (base / p).exists():
        return p
    return str(base / p)


class MixtureSource(SampleSource):
    """The entries of a YAML mixture one after another; `entries`: each MixtureEntry."""

    def __init__(self, path: str, entries: list[MixtureEntry], seed: int):
        self.path = self.name = str(path)
        self.entries = entries
        self.seed = seed
        self._ends = []
        total = 0
        for e in entries:
            total += len(e.indices)
            self._ends.append(total)
        uses_seed = any(e.sampling_strategy.strip().startswith("random") for e in entries)
        payload = {
            "entries": [
                [e.source.fingerprint, e.sampling_strategy, e.image_folder, e.video_folder] for e in entries
            ],
            "seed": seed if uses_seed else None,
        }
        self._fingerprint = hashlib.sha256(json.dumps(payload).encode()).hexdigest()

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def _find(self, i: int) -> tuple[MixtureEntry, int]:
        k = bisect.bisect_right(self._ends, i)
        start = self._ends[k - 1] if k else 0
        entry = self.entries[k]
        return entry, entry.indices[i - start]

    def _get(self, i: int) -> dict:
        entry, j = self._find(i)
        return entry.source[j]

    def image_folder(self, i: int) -> str | None:
        entry, j = self._find(i)
        return entry.image_folder or entry.source.image_folder(j)

    def video_folder(self, i: int) -> str | None:
        entry, j = self._find(i)
        return entry.video_folder or entry.source.video_folder(j)

    def ids(self) -> list:
        out = []
        for e in self.entries:
            ids = e.source.ids()
            out += [ids[j] for j in e.indices]
        return out

    def locate(self, i: int) -> tuple[SampleSource, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample index {i} out of range for {self.name} ({len(self)} samples)")
        entry, j = self._find(i)
        return entry.source.locate(j)


def _entry(raw, k: int, yaml_path: Path, seed: int, cache_dir, stack) -> MixtureEntry:
    from llava.data.sources import open_source

    where = f"{yaml_path}: entry {k}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping with json_path (and sampling_strategy), got {raw!r}")
    unknown = [key for key in raw if key not in ENTRY_KEYS]
    if unknown:
        raise ValueError(
            f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(ENTRY_KEYS)}"
        )
    json_path = raw.get("json_path")
    if not isinstance(json_path, str) or not json_path:
        raise ValueError(f"{where} needs a json_path (a data file, folder or glob), got {json_path!r}")
    where = f"{yaml_path}: entry {k} (json_path {json_path})"
    strategy = str(raw.get("sampling_strategy", "all"))
    try:
        sampling = parse_sampling(strategy)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    base = yaml_path.parent
    folders = {}
    for key in ("image_folder", "video_folder"):
        value = raw.get(key)
        if value is not None and not (isinstance(value, str) and value):
            raise ValueError(f"{where}: {key} must be a folder path, got {value!r}")
        folders[key] = _resolve(value, base) if value else None
    try:
        source = open_source(_resolve(json_path, base), seed=seed, cache_dir=cache_dir, _stack=stack)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{where} (looked in the current folder and in {base}): {e}") from None
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    n = len(source)
    if sampling.kind != "all" and not sampling.percent and sampling.amount > n:
        logger.warning("%s: %s asks for more samples than the %d there are; taking all", where, strategy, n)
    indices = sampling.select(n, seed, f"{json_path}|{strategy}")
    if not len(indices):
        raise ValueError(f"{where}: sampling_strategy {strategy!r} keeps no sample of {n}")
    logger.info("%s: %d of %d samples (%s)", where, len(indices), n, strategy)
    return MixtureEntry(
        json_path, strategy, source, indices, folders["image_folder"], folders["video_folder"]
    )


def open_mixture(path: str | os.PathLike, *, seed: int = 0, cache_dir: str | None = None,
                 _stack: tuple[str, ...] = ()) -> MixtureSource:  # fmt: skip
    """The mixture described by the YAML file at `path` (see the module doc)."""
    import yaml

    yaml_path = Path(path)
    key = str(yaml_path.resolve())
    if key in _stack:
        raise ValueError(f"{yaml_path}: the mixture includes itself (through {' -> '.join(_stack)})")
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{yaml_path}: not valid YAML ({e})") from None
    entries = data.get("datasets") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(
            f"{yaml_path}: a mixture needs a non-empty 'datasets:' list of entries "
            "{json_path, sampling_strategy?, image_folder?, video_folder?}"
        )
    stack = (*_stack, key)
    return MixtureSource(
        str(path),
        [_entry(raw, k, yaml_path, seed, cache_dir, stack) for k, raw in enumerate(entries, 1)],
        seed,
    )
