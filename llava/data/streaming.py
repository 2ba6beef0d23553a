"""`--streaming True`: training data read shard by shard, for data larger than memory or the disk cache.

    source = StreamingSource(data_path, seed=0)    # a folder, glob or file of .parquet / .arrow shards
    len(source)                                     # rows, from the shards' footers (nothing else read)
    source[epoch * len(source) + k]                 # the k-th sample of that epoch's stream order

Nothing is read up front but each shard's footer (its row groups and their row counts); parquet is
read straight from the shards (no copy into `datasets`' Arrow cache), arrow files are memory-mapped.
Training has no token cache and no length pass: each sample is tokenised when it is loaded.

The stream order of epoch `e` is a pure function of (the shards, seed, e, `window_rows`): the row
groups of all shards ("pieces"; an arrow file is one piece) in a seeded random order, cut into windows
of consecutive pieces of at least `window_rows` rows, and the rows of each window in a seeded random
order. So

- the order is the same on every run for the same seed; the world size only splits it (each rank takes
  its batches of it, as for any map-style dataset);
- resuming mid-shard replays nothing: the trainer skips the first positions of the epoch (integers),
  and the next sample read is the one the uninterrupted run read next;
- the batches do not depend on --dataloader_num_workers;
- a process (a rank, a DataLoader worker) holds the pieces of one window at a time: about
  `window_rows` rows (with their embedded images), however large the data.

That is why it is an index over the stream order rather than a torch IterableDataset: an iterable
must be replayed to resume and its batches change with the number of workers. What it cannot offer:
a global shuffle (rows mix within a window; pieces from anywhere), the length-grouped samplers and
global packing (lengths are not known before training: --packing packs each micro-batch in order),
and checking every sample before training (a bad sample stops training when it is reached, or with
--skip_bad_samples is replaced by the next good one of its modality in the stream).
"""

from __future__ import annotations

import bisect
import glob
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llava.data.sources import (
    TABLE_SUFFIXES,
    SampleSource,
    _check_same_columns,
    _table_files,
    files_fingerprint,
    row_to_sample,
)

WINDOW_ROWS = 2048  # rows a process holds at a time (the in-window shuffle's reach)
WHAT_STREAMING_LACKS = (
    "--streaming: rows are shuffled within windows of {window} rows (pieces of the shards from anywhere), "
    "not globally; no length pass, so no --group_by_modality_length / --group_by_length (ignored) and "
    "--packing packs each micro-batch as it comes; samples are tokenised when loaded (no token cache) and "
    "checked only when reached (python -m llava.data.validate checks them all first)"
)


@dataclass(frozen=True)
class Piece:
    """A unit read at once: one row group of a parquet shard, or a whole (memory-mapped) arrow file."""

    file: str
    group: int | None  # the parquet row group; None: the whole arrow file
    rows: int


def shard_files(data_path: str) -> list[str]:
    """The .parquet / .arrow shards `data_path` names: a file, a folder (searched recursively) or a glob."""
    path = str(data_path)
    if glob.has_magic(path):
        files = sorted(f for f in glob.glob(os.path.expanduser(path), recursive=True) if os.path.isfile(f))
    else:
        p = Path(os.path.expanduser(path))
        if not p.exists():
            raise FileNotFoundError(f"--data_path {path} does not exist")
        files = _table_files(p) if p.is_dir() else [str(p)]
    bad = [f for f in files if Path(f).suffix not in TABLE_SUFFIXES]
    if not files or bad:
        raise ValueError(
            f"--streaming True reads .parquet or .arrow shards (a file, folder or glob of them); --data_path "
            f"{path} {'names ' + bad[0] if bad else 'holds none'}. Convert LLaVA JSON with python -m "
            "llava.data.convert, or train without --streaming (JSON, YAML mixtures and save_to_disk folders "
            "are read in place)"
        )
    if len({Path(f).suffix for f in files}) > 1:
        raise ValueError(f"--data_path {path} mixes .parquet and .arrow files; use one kind")
    return files


def _open_arrow(file: str):
    import pyarrow as pa

    source = pa.memory_map(file)
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source).read_all()


def list_pieces(files: list[str]) -> list[Piece]:
    """Every shard's pieces, from the parquet footers (an arrow file's row count from its mapping)."""
    import pyarrow.parquet as pq

    pieces = []
    for f in files:
        if f.endswith(".parquet"):
            meta = pq.ParquetFile(f).metadata
            pieces += [Piece(f, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        else:
            pieces.append(Piece(f, None, _open_arrow(f).num_rows))
    return [p for p in pieces if p.rows]


class StreamingSource(SampleSource):
    """Shards read piece by piece in a seeded stream order (see the module doc). Index `e * len + k`:
    the k-th sample of epoch e's order; plain indices below `len` are epoch 0's."""

    def __init__(self, data_path, *, seed: int = 0, window_rows: int = WINDOW_ROWS):
        self.path = self.name = str(data_path)
        self.files = shard_files(self.path)
        _check_same_columns(self.files, self.path)
        self.pieces = list_pieces(self.files)
        if not self.pieces:
            raise ValueError(f"--data_path {self.path} holds no rows")
        self.seed, self.window_rows = int(seed), max(1, int(window_rows))
        self.total = sum(p.rows for p in self.pieces)
        self._fingerprint = files_fingerprint(self.files)
        self._epoch_plan = None  # (epoch, window starts, pieces per window)
        self._window = None  # (epoch, window, row order, piece starts, tables)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, i):
        if isinstance(i, slice) or i < 0:
            return super().__getitem__(i)
        return self._get(int(i))

    def __getstate__(self):  # a DataLoader worker opens its own pieces
        return {**self.__dict__, "_window": None}

    # ------------------------------------------------------------------ the order
    def _plan(self, epoch: int):
        """(window start positions, [piece indices] per window) of `epoch`."""
        if self._epoch_plan is None or self._epoch_plan[0] != epoch:
            order = np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.pieces))
            starts, windows, pos, current, rows = [], [], 0, [], 0
            for k in order.tolist():
                current.append(k)
                rows += self.pieces[k].rows
                if rows >= self.window_rows:
                    starts.append(pos)
                    windows.append(current)
                    pos, current, rows = pos + rows, [], 0
            if current:
                starts.append(pos)
                windows.append(current)
            self._epoch_plan = (epoch, starts, windows)
        return self._epoch_plan[1], self._epoch_plan[2]

    def locate_position(self, i: int) -> tuple[Piece, int]:
        """(the piece, its row) holding stream position `i` (= epoch * len + k)."""
        epoch, k = divmod(i, self.total)
        starts, windows = self._plan(epoch)
        w = bisect.bisect_right(starts, k) - 1
        window = self._open_window(epoch, w, windows[w])
        row = int(window["order"][k - starts[w]])
        p = bisect.bisect_right(window["piece_starts"], row) - 1
        return self.pieces[windows[w][p]], row - window["piece_starts"][p]

    def _open_window(self, epoch: int, w: int, piece_ids: list[int]) -> dict:
        if self._window is None or self._window["key"] != (epoch, w):
            rows = [self.pieces[k].rows for k in piece_ids]
            self._window = {
                "key": (epoch, w),
                "order": np.random.default_rng([self.seed, epoch, 1, w]).permutation(sum(rows)),
                "piece_starts": np.concatenate([[0], np.cumsum(rows)[:-1]]).tolist(),
                "tables": {},
            }
        return self._window

    def _table(self, piece: Piece):
        tables = self._window["tables"]
        if piece not in tables:
            if piece.group is None:
                tables[piece] = _open_arrow(piece.file)
            else:
                import pyarrow.parquet as pq

                tables[piece] = pq.ParquetFile(piece.file).read_row_group(piece.group)
        return tables[piece]

    # ------------------------------------------------------------------ samples
    def _get(self, i: int) -> dict:
        piece, row = self.locate_position(i)
        record = self._table(piece).slice(row, 1).to_pylist()[0]
        return row_to_sample(record, self._where(piece, row))

    @staticmethod
    def _where(piece: Piece, row: int) -> str:
        group = f", row group {piece.group}" if piece.group is not None else ""
        return f"row {row}{group} of {piece.file}"

    def describe(self, i: int) -> str:
        return self._where(*self.locate_position(i))

    def ids(self) -> list:
        raise TypeError("--streaming: the ids of every sample are not read before training")


class StreamSampler:
    """The positions of one epoch in stream order (`set_epoch`, called by the trainer, picks the epoch)."""

    def __init__(self, n: int):
        self.n, self.epoch = int(n), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(range(self.epoch * self.n, (self.epoch + 1) * self.n))
