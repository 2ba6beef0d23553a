"""The training dataset of `--streaming True`: LazySupervisedDataset's loading over a StreamingSource.

Index `epoch * len + k` is the k-th sample of that epoch's stream order (llava.data.streaming); the
trainer draws indices from `stream_sampler()` (one epoch's positions in order, `set_epoch` picks the
epoch), so resuming skips positions without reading them. Each sample is tokenised and cut by the
length budget when it is loaded (no token cache, no length pass before training).
"""

from __future__ import annotations

import logging

from llava.data.dataset import LazySupervisedDataset
from llava.data.streaming import WHAT_STREAMING_LACKS, WINDOW_ROWS, StreamingSource, StreamSampler

logger = logging.getLogger(__name__)


class StreamView:
    """What LazySupervisedDataset reads its samples through (as llava.data.dataset.SampleView), over the
    stream order: any position of any epoch; folders are the run's flags."""

    def __init__(self, source: StreamingSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        return self.source[i]

    def folders(self, i: int) -> tuple[None, None]:
        return None, None

    def describe(self, i: int) -> str:
        return self.source.describe(i)


class StreamingSupervisedDataset(LazySupervisedDataset):
    """LazySupervisedDataset over shards read in stream order; `seed`: the order's (--data_seed, else
    --seed); `window_rows`: rows shuffled together and held at a time (--streaming_window_rows)."""

    def __init__(
        self, data_path, tokenizer, data_args, sample_format, seed: int = 0, window_rows=WINDOW_ROWS
    ):
        source = StreamingSource(data_path, seed=seed, window_rows=window_rows)
        super().__init__(
            data_path, tokenizer, data_args, sample_format, seed=seed, samples=StreamView(source)
        )
        self._said = False

    def prepare(self) -> None:
        """Nothing is read before training; says once what streaming does not do."""
        if not self._said:
            logger.warning(WHAT_STREAMING_LACKS.format(window=self.list_data_dict.source.window_rows))
            logger.info(
                "--streaming: %d samples in %d pieces of %d shards", len(self),
                len(self.list_data_dict.source.pieces), len(self.list_data_dict.source.files),
            )  # fmt: skip
            self._said = True

    def _where(self, i: int) -> str:
        epoch, k = divmod(i, len(self))
        return f"position {k} of epoch {epoch}, {self.list_data_dict.describe(i)}"

    def stream_sampler(self) -> StreamSampler:
        return StreamSampler(len(self))

    @property
    def lengths(self):
        raise TypeError(
            "--streaming: per-sample lengths are not known before training (no length-grouped sampling or "
            "global packing); train without --streaming for them"
        )

    modality_lengths = lengths

    def _substitute(self, i: int) -> int:
        """The next position of the same epoch whose sample has the same modality and has not failed."""
        n = len(self)
        epoch, k = divmod(i, n)
        visual = self._modality(i)
        for step in range(1, n):
            j = epoch * n + (k + step) % n
            if j not in self._failed and self._modality(j) == visual:
                return j
        raise ValueError(
            f"no usable sample left in {self.data_path} to replace position {k} of epoch {epoch}"
        )
