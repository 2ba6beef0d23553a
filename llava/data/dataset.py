"""The training dataset: LCS-558K / mix665k / LLaVA-NeXT / OneVision JSON, tokenised lazily.

A sample is `{"id", "image"?: name or [names], "video"?: name, "conversations": [{"from":
"human"|"gpt", "value"}, ...]}` (llava.data.visuals); samples with neither are text-only.
`__getitem__` returns `input_ids`, `labels` (from `llava.data.preprocess`), `length` (the tokens
the LLM sees) and, for a multimodal model, `images` (one pixel tensor per visual:
llava.data.visual_loader), `image_sizes` and `modalities` (a zero stand-in image for text-only
samples, so every sample carries one). How a sample becomes ids, labels and pixels is the
`SampleFormat` given to the dataset (llava.data.sample_format); the length budget
(llava.data.length_budget) cuts each sample once, when it is tokenised. After `prepare()` the ids
and labels come from the token cache (tokenised once per data file, tokenizer and format:
llava.data.length_cache) and images go through `llava.images.transform` (decode, pad, resize,
normalise in one pass), so a DataLoader worker does no per-sample work that could be done once.
Bad samples stop training with an error that names the sample and the file, or with
`--skip_bad_samples True` are dropped (found before training) or replaced by the next good sample
of the same modality (found while loading) and counted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from llava.data.length_cache import load_or_build
from llava.data.sample_format import SampleFormat
from llava.data.visual_loader import VisualLoader
from llava.data.visuals import VisualError, has_visuals, probe, sample_visuals, visual_fields_problem

logger = logging.getLogger(__name__)

MAX_LISTED_ERRORS = 10
MAX_LISTED_CUT = 5  # over-long samples named in the warning


class SharedCounter:
    """A count that DataLoader worker processes add to and the main process reads: created with the
    dataset, before any worker starts, it reaches them by fork or with the dataset at spawn (a
    `multiprocessing.Value`). Pickled any other way (a copy of the dataset) it becomes a local count."""

    def __init__(self):
        import multiprocessing

        self._value = multiprocessing.Value("q", 0)
        self._local = 0

    def add(self, n: int = 1) -> int:
        if self._value is None:
            self._local += n
            return self._local
        with self._value.get_lock():
            self._value.value += n
            return self._value.value

    @property
    def value(self) -> int:
        return self._local if self._value is None else self._value.value

    def __getstate__(self):
        from multiprocessing.context import get_spawning_popen

        if get_spawning_popen() is not None:  # going to a worker process at its start: stays shared
            return {"_value": self._value, "_local": self._local}
        return {"_value": None, "_local": self.value}


class BadSampleError(ValueError):
    """A sample that cannot be used: names it (`sample_id`, `index`) and says what to do."""

    def __init__(self, message: str, sample_id=None, index: int | None = None):
        super().__init__(message)
        self.sample_id = sample_id
        self.index = index


def load_samples(data_path: str | os.PathLike) -> list[dict]:
    """The JSON list of samples in `data_path` (a .jsonl file is read line by line); errors name the file
    and, for JSON lines, the line."""
    from llava.utils.jsonfiles import read_json, read_jsonl

    path = Path(data_path)
    if not path.is_file():
        raise FileNotFoundError(f"--data_path {path} does not exist")
    try:
        samples = read_jsonl(path) if path.suffix == ".jsonl" else read_json(path)
    except UnicodeDecodeError as e:
        raise ValueError(f"--data_path {path} is not UTF-8 text ({e}); JSON data files must be") from None
    except ValueError as e:
        raise ValueError(f"--data_path {e}") from None
    if not isinstance(samples, list) or not all(isinstance(s, dict) for s in samples):
        raise ValueError(f"--data_path {path} must hold a JSON list of sample objects")
    if not samples:
        raise ValueError(f"--data_path {path} holds no samples")
    return samples


def check_sample_shape(sample: dict, is_multimodal: bool) -> str | None:
    """Why the sample's structure is unusable here, or None. (`<image>` marker counts are checked
    by `preprocess`, which tokenises the sample.)"""
    if not isinstance(sample.get("conversations"), list) or not sample["conversations"]:
        return "has no 'conversations' list"
    problem = visual_fields_problem(sample)
    if problem:
        return problem
    if has_visuals(sample) and not is_multimodal:
        return "has an image or video but the model has no vision tower (pass --vision_tower)"
    return None


class SampleView(Sequence):
    """The samples a dataset trains on: rows `rows` (an int64 array) of a source (llava.data.sources: a
    JSON list, parquet shards, a mixture), read on access, never copied into a list."""

    def __init__(self, source, rows=None):
        self.source = source
        self.rows = np.arange(len(source), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.source[int(self.rows[i])]

    def subset(self, keep) -> SampleView:
        return SampleView(self.source, self.rows[np.asarray(keep, dtype=np.int64)])

    def folders(self, i: int) -> tuple[str | None, str | None]:
        """(image folder, video folder) of sample `i` when its source names them (a mixture entry)."""
        row = int(self.rows[i])
        return self.source.image_folder(row), self.source.video_folder(row)

    def describe(self, i: int) -> str:
        return self.source.describe(int(self.rows[i]))


class RaggedInts(Sequence):
    """A list of integer lists kept as one flat int64 array and offsets: item `i` is
    `flat[offsets[i]:offsets[i + 1]]`, given as a list. Per-sample visual token costs, without a Python
    object per sample (which DataLoader workers would copy as they touch it)."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets

    @classmethod
    def from_lists(cls, lists) -> RaggedInts:
        sizes = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
        offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        flat = np.fromiter((v for x in lists for v in x), dtype=np.int64, count=int(offsets[-1]))
        return cls(flat, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> list[int]:
        return self.flat[self.offsets[i] : self.offsets[i + 1]].tolist()

    def take(self, rows: np.ndarray) -> RaggedInts:
        """The items at `rows`, in that order."""
        starts, ends = self.offsets[rows], self.offsets[np.asarray(rows) + 1]
        sizes = ends - starts
        offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        picks = np.repeat(starts - offsets[:-1], sizes) + np.arange(offsets[-1], dtype=np.int64)
        return RaggedInts(self.flat[picks], offsets)


class _TextViews(Sequence):
    """`text_view` of the samples `indices` of `view`, read when asked for (the token cache reads them
    only when it has to tokenise), so prepare() holds no list of all samples."""

    def __init__(self, view: SampleView, indices: np.ndarray):
        self.view, self.indices = view, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict:
        return text_view(self.view[int(self.indices[k])])


def text_view(sample: dict) -> dict:
    """The sample without its embedded bytes (what tokenising needs: id, conversations, how many visuals)."""
    from llava.data.sources import Embedded

    def light(v):
        return f"<embedded {v.name or 'file'}>" if isinstance(v, Embedded) else v

    out = dict(sample)
    for key in ("image", "video"):
        if key in out:
            out[key] = [light(v) for v in out[key]] if isinstance(out[key], list) else light(out[key])
    return out


class LazySupervisedDataset(Dataset):
    """Dataset for supervised fine-tuning; samples are tokenised when they are loaded.

    `data_args`: the run's data flags (`image_folder`, `skip_bad_samples`, `lengths_cache_dir`,
    e.g. DataArguments), read here once. `sample_format`: how samples become ids, labels and pixels.
    `seed`: a YAML mixture's `random:` sampling (training passes --data_seed, else --seed).
    """

    def __init__(
        self, data_path: str, tokenizer, data_args, sample_format: SampleFormat, seed: int = 0, samples=None
    ):
        super().__init__()
        if not isinstance(sample_format, SampleFormat):
            raise TypeError(
                "LazySupervisedDataset(data_path, tokenizer, data_args, sample_format) needs a "
                "llava.data.sample_format.SampleFormat (SampleFormat.for_model(model, tokenizer, template) "
                f"after the model is set up), got {type(sample_format).__name__}"
            )
        self.data_path = str(data_path)
        self.tokenizer = tokenizer
        self.sample_format = sample_format
        self.budget = sample_format.budget
        self.image_folder = data_args.image_folder or ""
        self.video_folder = getattr(data_args, "video_folder", None)
        self.skip_bad_samples = bool(data_args.skip_bad_samples)
        self.lengths_cache_dir = data_args.lengths_cache_dir
        from llava.data.sources import open_source

        # `samples`: what to read the samples through instead (llava.data.streaming_dataset's StreamView)
        self.list_data_dict = (
            samples if samples is not None else SampleView(open_source(data_path, seed=seed))
        )
        if not len(self.list_data_dict):
            raise ValueError(f"--data_path {self.data_path} holds no samples")
        # per-sample state after prepare(), all numpy (no Python object per sample: workers share it)
        self._has_visuals: np.ndarray | None = None  # bool
        self._text_lengths: np.ndarray | None = None  # int64: text tokens after the cut
        self._tokens = None  # TokenStore after prepare()
        self._token_rows: np.ndarray | None = None  # int64: sample index -> row of the token store
        self._loader: VisualLoader | None = None  # built on first use
        self._visual_tokens: RaggedInts | None = None  # each sample's visual costs, after prepare()
        self._skipped = SharedCounter()  # samples replaced while loading, summed over loader workers
        self._failed: set[int] = set()
        self.cut = 0  # samples the length budget cut (after prepare())

    def __len__(self) -> int:
        return len(self.list_data_dict)

    # ---------------------------------------------------------------- validation and lengths
    @property
    def is_multimodal(self) -> bool:
        return self.sample_format.is_multimodal

    def _visuals(self, sample: dict, i: int):
        images, videos = self.list_data_dict.folders(i)
        return sample_visuals(sample, images or self.image_folder, videos or self.video_folder)

    def _probe_visuals(self, indices: list[int]) -> tuple[dict[int, str], dict[int, list[int]]]:
        """({index: why its visuals are unusable}, {index: each visual's tokens}) for `indices`.

        Reads what the token counts need and no more: that image files exist, the header of an
        anyres image, a video's container (frame count)."""
        from tqdm import tqdm

        fmt, errors, costs = self.sample_format, {}, {}
        for i in tqdm(indices, desc="checking visual files", mininterval=5, disable=len(indices) < 10000):
            sample = self.list_data_dict[i]
            fixed = fmt.fixed_visual_tokens(sample)
            try:
                infos = [probe(v, image_size=fixed is None) for v in self._visuals(sample, i)]
            except VisualError as e:
                errors[i] = str(e)
                costs[i] = [fmt.single_image_tokens] * len(self._visuals(sample, i))
                continue
            costs[i] = fixed if fixed is not None else fmt.visual_tokens(infos)
        return errors, costs

    def prepare(self) -> None:
        """Probe visuals (files exist; an anyres image's size, a video's frames), count tokens (cached next
        to the data); raise on or drop bad samples. Afterwards the per-sample state is numpy arrays."""
        if self._text_lengths is not None:
            return
        view, n = self.list_data_dict, len(self.list_data_dict)
        errors, visual = self._check_shapes()
        good_index = np.array([i for i in range(n) if i not in errors], dtype=np.int64)
        file_errors, costs = self._probe_visuals(good_index.tolist()) if self.is_multimodal else ({}, {})
        good_costs = [costs.pop(i, []) for i in good_index.tolist()]
        del costs
        cache = load_or_build(
            self.data_path, _TextViews(view, good_index), self.tokenizer, self.sample_format,
            self.lengths_cache_dir, good_costs,
            data_fingerprint=None if os.path.isfile(self.data_path) else view.source.fingerprint,
        )  # fmt: skip
        good_visual_tokens = RaggedInts.from_lists(good_costs)
        del good_costs
        errors.update(file_errors)
        for j, err in cache.errors.items():  # tokenising failed: kept unless the sample failed before
            errors.setdefault(int(good_index[j]), err)
        text_lengths, token_rows = np.zeros(n, dtype=np.int64), np.full(n, -1, dtype=np.int64)
        text_lengths[good_index] = np.asarray(cache.lengths, dtype=np.int64)
        token_rows[good_index] = np.arange(len(good_index), dtype=np.int64)
        was_cut = sorted({int(good_index[j]) for j in cache.cut} - set(errors))
        keep = np.arange(n, dtype=np.int64)
        if errors:
            self._report(errors)
            keep = np.setdiff1d(keep, np.fromiter(errors, dtype=np.int64, count=len(errors)))
            self.list_data_dict = view.subset(keep)
            if not self.list_data_dict:
                raise ValueError(f"no usable samples left in {self.data_path}")
        self._has_visuals, self._text_lengths = visual[keep], text_lengths[keep]
        self._tokens, self._token_rows = cache.tokens, token_rows[keep]
        self._visual_tokens = good_visual_tokens.take(self._token_rows)
        self.cut = len(was_cut)
        if was_cut:
            ids = [repr(view[i].get("id", f"#{i}")) for i in was_cut[:MAX_LISTED_CUT]]
            more = f" and {len(was_cut) - MAX_LISTED_CUT} more" if len(was_cut) > MAX_LISTED_CUT else ""
            logger.warning(
                "%d of %d samples are longer than --model_max_length %d (visual tokens included) and are "
                "cut: %s%s (python -m llava.data.validate lists them all)",
                len(was_cut),
                len(self),
                self.budget.max_length,
                ", ".join(ids),
                more,
            )

    def _check_shapes(self) -> tuple[dict[int, str], np.ndarray]:
        """({index: why its structure is unusable}, whether each sample has visuals), in one pass over
        the samples (without their bytes), keeping none of them."""
        errors, visual = {}, np.zeros(len(self.list_data_dict), dtype=bool)
        for i, sample in enumerate(self.list_data_dict):
            sample = text_view(sample)
            problem = check_sample_shape(sample, self.is_multimodal)
            if problem:
                errors[i] = problem
            else:
                visual[i] = has_visuals(sample)
        return errors, visual

    def _report(self, errors: dict[int, str]) -> None:
        listed = "\n".join(
            f"  sample {self.list_data_dict[i].get('id', '?')!r} (index {i}): {err}"
            for i, err in sorted(errors.items())[:MAX_LISTED_ERRORS]
        )
        more = (
            f"\n  ... and {len(errors) - MAX_LISTED_ERRORS} more" if len(errors) > MAX_LISTED_ERRORS else ""
        )
        summary = f"{len(errors)} of {len(self.list_data_dict)} samples in {self.data_path} are unusable:\n"
        if not self.skip_bad_samples:
            raise BadSampleError(
                summary
                + listed
                + more
                + "\nFix them, or pass --skip_bad_samples True to train without them.",
                sample_id=self.list_data_dict[min(errors)].get("id"),
                index=min(errors),
            )
        logger.warning("--skip_bad_samples: dropping %s%s%s", summary, listed, more)

    @property
    def lengths(self) -> list[int]:
        """Tokens per sample the model sees after the cut: `LengthBudget.cost` of text and visuals."""
        self.prepare()
        cost = self.budget.cost
        return [cost(t, c) for t, c in zip(self._text_lengths.tolist(), self._visual_tokens)]

    @property
    def modality_lengths(self) -> list[int]:
        """`lengths`, negated for text-only samples (the modality-grouped sampler's input)."""
        lengths = self.lengths
        return [n if v else -n for n, v in zip(lengths, self._has_visuals.tolist())]

    # ---------------------------------------------------------------- loading
    @property
    def loader(self) -> VisualLoader:
        if self._loader is None:
            self._loader = VisualLoader(self.sample_format)
        return self._loader

    def _where(self, i: int) -> str:
        """Where sample `i` is, for messages: 'index 7, row 7 of data.json'."""
        return f"index {i}, {self.list_data_dict.describe(i)}"

    def _error(self, i: int, message: str) -> BadSampleError:
        sid = self.list_data_dict[i].get("id", "?")
        hint = "" if self.skip_bad_samples else " (or pass --skip_bad_samples True)"
        return BadSampleError(f"sample {sid!r} ({self._where(i)}): {message}{hint}", sample_id=sid, index=i)

    def _load(self, i: int) -> dict:
        from llava.data.preprocess import SampleError

        sample = self.list_data_dict[i]
        problem = check_sample_shape(sample, self.is_multimodal)
        if problem:
            raise self._error(i, problem)
        item = {}
        visuals = self._visuals(sample, i)
        if visuals:
            try:
                item["images"], item["image_sizes"], item["modalities"] = self.loader.load(visuals)
            except VisualError as e:
                raise self._error(i, str(e)) from e
        elif self.is_multimodal:
            image, size = self.loader.stand_in()
            item["images"], item["image_sizes"], item["modalities"] = [image], [size], ["image"]
        if self._tokens is not None:
            ids, labels = self._tokens.get(int(self._token_rows[i]))
            costs = self._visual_tokens[i]
        else:  # not prepared: tokenise (and cut) this one sample now, as the token cache does
            costs = self._costs_of_loaded(sample, item) if visuals else []
            try:
                ids, labels, _ = self.sample_format.tokenize(sample, self.tokenizer, costs)
            except SampleError as e:
                raise self._error(i, e.reason) from e
            ids, labels = torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)
        item["input_ids"], item["labels"] = ids, labels
        item["length"] = self.budget.sequence_length(ids, costs)
        return item

    def _costs_of_loaded(self, sample: dict, item: dict) -> list[int]:
        from llava.data.visuals import VisualInfo

        fixed = self.sample_format.fixed_visual_tokens(sample)
        if fixed is not None:
            return fixed
        infos = [
            VisualInfo(m, tuple(size), frames=x.shape[0] if m == "video" else None)
            for x, size, m in zip(item["images"], item["image_sizes"], item["modalities"])
        ]
        if infos and infos[0].kind == "video":  # the frames are already taken: count them as they are
            from dataclasses import replace

            return replace(self.sample_format, frames_upbound=0, video_fps=1).visual_tokens(
                [replace(infos[0], fps=None)]
            )
        return self.sample_format.visual_tokens(infos)

    @property
    def skipped(self) -> int:
        """Samples replaced while loading, in this process and in every DataLoader worker."""
        return self._skipped.value

    def _modality(self, i: int) -> bool:
        if self._has_visuals is not None:
            return bool(self._has_visuals[i])
        return has_visuals(self.list_data_dict[i])

    def _substitute(self, i: int) -> int:
        visual = self._modality(i)
        n = len(self.list_data_dict)
        for step in range(1, n):
            j = (i + step) % n
            if j not in self._failed and self._modality(j) == visual:
                return j
        raise ValueError(f"no usable sample left in {self.data_path} to replace index {i}")

    def __getitem__(self, i: int) -> dict:
        while True:
            try:
                return self._load(i)
            except BadSampleError as e:
                if not self.skip_bad_samples:
                    raise
                self._failed.add(i)
                total = self._skipped.add(1)
                logger.warning("--skip_bad_samples: skipped %s (%d skipped so far)", e, total)
                i = self._substitute(i)


def make_supervised_data_module(
    tokenizer, data_args, sample_format: SampleFormat, training_args=None
) -> dict:
    """Dataset and collator for `LLaVATrainer(**module)`, both given `sample_format`.

    With `training_args`, the local main process counts tokens first (filling the cache) while
    the other ranks wait, then read the cache.
    """
    from llava.data.collator import DataCollatorForSupervisedDataset

    seed = getattr(training_args, "data_seed", None)
    seed = seed if seed is not None else getattr(training_args, "seed", 0)
    if getattr(data_args, "streaming", False):
        from llava.data.streaming_dataset import StreamingSupervisedDataset

        dataset = StreamingSupervisedDataset(
            data_args.data_path, tokenizer, data_args, sample_format, seed, data_args.streaming_window_rows
        )
    else:
        dataset = LazySupervisedDataset(data_args.data_path, tokenizer, data_args, sample_format, seed=seed)
    if training_args is not None:
        with training_args.main_process_first(local=True, desc="counting tokens"):
            dataset.prepare()
    else:
        dataset.prepare()
    return dict(
        train_dataset=dataset,
        eval_dataset=None,
        data_collator=DataCollatorForSupervisedDataset(
            tokenizer=tokenizer,
            sample_format=sample_format,
            packing=bool(getattr(training_args, "packing", False)),
        ),
    )
