"""Where `--data_path` samples come from: one indexable sequence of sample dicts, whatever the storage.

    source = open_source(data_path, seed=0)      # JSON / JSONL, parquet / arrow, save_to_disk, YAML mixture
    len(source); source[i]                       # {"id", "conversations", "image"?, "video"?, ...}
    source.fingerprint                           # changes when the data changes (cache keys)
    source.image_folder(i), source.video_folder(i)  # a mixture entry's folders; None: the run's flags

What `data_path` may be:
- a `.json` (a list of samples) or `.jsonl` file: read whole (its bytes, with each sample's offsets;
  a sample is parsed when it is read), with the errors LLaVA's json.load gives;
- a `.yaml` / `.yml` mixture (LLaVA-NeXT's `datasets:` list; llava.data.mixture);
- a `.parquet` or `.arrow` file, a folder of them (searched recursively) or a glob of them;
- a `datasets` `save_to_disk` folder (`dataset_info.json` + `state.json`, or a `dataset_dict.json`
  with a `train` split).

Parquet and arrow are read through `datasets`, memory-mapped: rows are read when they are asked for,
so DataLoader workers share the Arrow memory map and nothing is turned into Python lists up front.
Parquet is prepared once into `datasets`' Arrow cache (`cache_dir`, else its default); arrow files
and `save_to_disk` folders are mapped where they are. Rows are taken raw (no decoding): an image
column's `{bytes, path}` struct becomes an `Embedded` (its bytes, its original path as the name), a
struct without bytes or a plain string column is a file name relative to the image folder; an empty
list or null is no image. Null values are left out of the sample dict, so a text-only row has no
`image` key. The layout is the contract's (docs/ARCHITECTURE.md; what llava.data.convert writes).
"""

from __future__ import annotations

import collections.abc
import glob
import hashlib
import io
import json
import os
import re
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

TABLE_SUFFIXES = (".parquet", ".arrow")
JSON_SUFFIXES = (".json", ".jsonl")
YAML_SUFFIXES = (".yaml", ".yml")
ACCEPTED = (
    "a .json or .jsonl file, a .yaml/.yml mixture, a .parquet or .arrow file, a folder or glob of "
    ".parquet or .arrow shards, or a datasets save_to_disk folder"
)
VISUAL_COLUMNS = ("image", "video")


@dataclass(frozen=True, repr=False)
class Embedded:
    """The bytes of an image or video stored in the data itself; `name`: its original path, if known."""

    data: bytes
    name: str | None = None

    def __repr__(self) -> str:
        return f"Embedded({len(self.data)} bytes, name={self.name!r})"


def files_fingerprint(files) -> str:
    """A hash of each file's resolved path, size and modification time (what the token cache keys by)."""
    stats = []
    for f in files:
        st = os.stat(f)
        stats.append([str(Path(f).resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


class SampleSource(collections.abc.Sequence):
    """An indexable, sized sequence of sample dicts. Subclasses give `__len__`, `_get(i)` (0 <= i < len),
    `name` and `fingerprint`; the rest has defaults."""

    name: str = "?"  # for messages: the file, folder, glob or YAML
    path: str = ""  # data_path as given

    @property
    def fingerprint(self) -> str:
        raise NotImplementedError

    def _get(self, i: int) -> dict:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._get(j) for j in range(*i.indices(len(self)))]
        n = len(self)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(f"sample index {i} out of range for {self.name} ({n} samples)")
        return self._get(j)

    def image_folder(self, i: int) -> str | None:
        """The folder sample `i`'s image names are relative to; None: the run's --image_folder."""
        return None

    def video_folder(self, i: int) -> str | None:
        """The folder sample `i`'s video name is relative to; None: the run's --video_folder."""
        return None

    def ids(self) -> list:
        """Every sample's `id` (None where it has none), in order."""
        return [s.get("id") for s in self]

    def locate(self, i: int) -> tuple[SampleSource, int]:
        """(the source that stores sample `i`, its index there): a mixture's entry, else this source."""
        if not 0 <= i < len(self):
            raise IndexError(f"sample index {i} out of range for {self.name} ({len(self)} samples)")
        return self, i

    def describe(self, i: int) -> str:
        """Where sample `i` is, for messages: 'row 7 of train.parquet'."""
        source, j = self.locate(i)
        return f"row {j} of {source.name}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} samples)"


class JsonSource(SampleSource):
    """A JSON list or JSON-lines file (`load_samples`' rules and errors), held compactly: the file's bytes
    once and each sample's (start, end) byte offsets in a numpy array; a sample is parsed when asked for.

    Nothing per sample is a Python object, so forked DataLoader workers share these pages instead of
    copying them as they touch a list of dicts' reference counts (copy-on-access). Opening checks every
    sample (valid JSON, an object) without keeping it; a file `load_samples` rejects raises its error."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.name = self.path
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"--data_path {file} does not exist")
        self._data = file.read_bytes()
        scan = _jsonl_offsets if file.suffix == ".jsonl" else _json_list_offsets
        offsets = scan(self._data)
        if offsets is None or not len(offsets):
            _raise_as_load_samples(file)
        self._offsets = offsets
        self._fingerprint = files_fingerprint([path])

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def __len__(self) -> int:
        return len(self._offsets)

    def _get(self, i: int) -> dict:
        start, end = self._offsets[i]
        return json.loads(self._data[start:end])


JSON_WINDOW = 1 << 22  # bytes of a JSON list decoded to text at a time while indexing it
_JSON_SPACE = re.compile(r"[ \t\n\r]*")  # what JSON counts as white space


def _raise_as_load_samples(path: Path) -> NoReturn:
    """Raise the error `load_samples` gives for a file the compact index refused (an invalid file)."""
    from llava.data.dataset import load_samples

    load_samples(path)
    raise ValueError(f"--data_path {path}: its samples could not be indexed, though json.load reads them")


class _TextWindow:
    """The text of UTF-8 `data`, decoded `JSON_WINDOW` bytes at a time as a scan moves through it, with the
    byte offset of each character position the scan reports (positions only move forward)."""

    def __init__(self, data: bytes):
        self.data, self.view = data, memoryview(data)
        self.top = 0  # bytes decoded so far
        self.text, self.pos = "", 0
        self.mark = (0, 0)  # (a position in text, its byte offset in data)
        self.more()

    def more(self) -> bool:
        """Decode the next window of bytes onto the text (dropping what the scan has passed); False at
        the end of the data. Raises UnicodeDecodeError for bytes that are not UTF-8."""
        if self.top >= len(self.data):
            return False
        top = min(self.top + JSON_WINDOW, len(self.data))
        while top < len(self.data) and self.data[top] & 0xC0 == 0x80:  # not inside a character
            top -= 1
        start = self.byte(self.pos)
        self.text = self.text[self.pos :] + str(self.view[self.top : top], "utf-8")
        self.pos, self.mark, self.top = 0, (0, start), top
        return True

    def byte(self, pos: int) -> int:
        """The byte offset in data of text position `pos` (not before the last one asked for)."""
        at, offset = self.mark
        piece = self.text[at:pos]
        offset += len(piece) if piece.isascii() else len(piece.encode("utf-8"))
        self.mark = (pos, offset)
        return offset

    def peek(self) -> str:
        """The next character that is not JSON white space ('' at the end), moving past the white space."""
        while True:
            self.pos = _JSON_SPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text) or not self.more():
                return self.text[self.pos : self.pos + 1]

    def value(self, decoder: json.JSONDecoder):
        """(the JSON value at the position, its start and end byte offsets), or None if it is not valid."""
        while True:
            try:
                value, end = decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError:
                if self.more():
                    continue  # perhaps only cut by the window's end
                return None
            start = self.byte(self.pos)
            self.pos = end
            return value, start, self.byte(end)


def _json_list_offsets(data: bytes) -> np.ndarray | None:
    """(start, end) byte offsets of each object of the JSON list in `data` (an int64 array of shape
    (n, 2)), or None where `load_samples` would not give a list of objects: invalid JSON, another
    value, an element that is not an object. Each object is decoded and dropped, so the memory used is
    the window's text, not the whole file's objects as json.load's."""
    try:
        window = _TextWindow(data)
        if window.peek() != "[":
            return None
        window.pos += 1
        found, decoder = array("q"), json.JSONDecoder()
        if window.peek() == "]":
            return None  # empty: load_samples says so
        while True:
            got = window.value(decoder)
            if got is None or not isinstance(got[0], dict):
                return None
            found.extend(got[1:])
            after = window.peek()
            window.pos += 1
            if after == "]":
                break
            if after != "," or window.peek() in ("]", ""):
                return None
        if window.peek() != "":
            return None
    except UnicodeDecodeError:
        return None
    return np.frombuffer(found, dtype=np.int64).reshape(-1, 2).copy()


def _jsonl_offsets(data: bytes) -> np.ndarray | None:
    """(start, end) byte offsets of each non-blank line of the JSON-lines `data` (an int64 array of shape
    (n, 2)), or None where a line is not a JSON object or the bytes are not UTF-8. Lines split as
    `read_jsonl` reads them (text mode: \\n, \\r\\n or \\r); each line is decoded and dropped."""
    found, offset = array("q"), 0
    try:
        for line in io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline=""):
            size = len(line) if line.isascii() else len(line.encode("utf-8"))
            if line.strip():
                try:
                    if not isinstance(json.loads(line), dict):
                        return None
                except json.JSONDecodeError:
                    return None
                found.extend((offset, offset + size))
            offset += size
    except UnicodeDecodeError:
        return None
    return np.frombuffer(found, dtype=np.int64).reshape(-1, 2).copy()


def _visual(value, where: str, column: str):
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return Embedded(bytes(value["bytes"]), value.get("path"))
        if value.get("path"):
            return value["path"]
    raise ValueError(
        f"{where}: column {column!r} holds {value!r}; expected a file name or a {{bytes, path}} struct "
        "with bytes or a path"
    )


def row_to_sample(row: dict, where: str) -> dict:
    """A raw Arrow row (as `to_pylist` gives it) as a sample dict of the contract's form."""
    sample = {}
    for key, value in row.items():
        if value is None:
            continue
        if key == "image" and isinstance(value, list):
            if not value:
                continue
            value = [_visual(v, where, key) for v in value]
        elif key in VISUAL_COLUMNS:
            value = _visual(value, where, key)
        sample[key] = value
    return sample


class TableSource(SampleSource):
    """Parquet / arrow shards or a save_to_disk dataset through `datasets`; rows read on access."""

    def __init__(self, dataset, path: str, files: list[str]):
        columns = dataset.column_names
        if "conversations" not in columns:
            raise ValueError(
                f"--data_path {path} has no 'conversations' column (columns: {', '.join(columns)}); "
                "samples need {'id', 'conversations': [{'from', 'value'}], 'image'?, 'video'?}"
            )
        self.path = str(path)
        self.name = self.path
        self.files = files
        self.dataset = dataset
        self._rows = dataset.with_format("arrow")  # raw Arrow rows: images stay {bytes, path}
        self._fingerprint = files_fingerprint(files)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def __len__(self) -> int:
        return self.dataset.num_rows

    def _get(self, i: int) -> dict:
        row = self._rows[i].to_pylist()[0]
        return row_to_sample(row, f"row {i} of {self.name}")

    def ids(self) -> list:
        if "id" not in self.dataset.column_names:
            return [None] * len(self)
        return self._rows["id"].to_pylist()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_rows"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._rows = self.dataset.with_format("arrow")


def _schema_of(path: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.endswith(".parquet"):
        return pq.read_schema(path).remove_metadata()
    with pa.memory_map(path) as f:
        try:
            return pa.ipc.open_stream(f).schema.remove_metadata()
        except pa.ArrowInvalid:
            f.seek(0)
            return pa.ipc.open_file(f).schema.remove_metadata()


def _check_same_columns(files: list[str], path: str) -> None:
    first = _schema_of(files[0])
    for f in files[1:]:
        schema = _schema_of(f)
        if schema.equals(first):
            continue
        a, b = set(first.names), set(schema.names)
        if a != b:
            what = f"columns {sorted(a)} vs {sorted(b)}"
        else:
            diff = [n for n in first.names if first.field(n).type != schema.field(n).type]
            what = "; ".join(f"{n}: {first.field(n).type} vs {schema.field(n).type}" for n in diff)
        raise ValueError(
            f"--data_path {path}: shards {files[0]} and {f} differ ({what}); every shard of a dataset "
            "needs the same columns and types (re-convert them together)"
        )


def _open_tables(files: list[str], path: str, cache_dir: str | None) -> TableSource:
    import datasets

    kinds = {Path(f).suffix for f in files}
    if len(kinds) > 1:
        raise ValueError(f"--data_path {path} mixes .parquet and .arrow files; use one kind")
    _check_same_columns(files, path)
    if kinds == {".arrow"}:  # mapped in place, no copy
        parts = [datasets.Dataset.from_file(f) for f in files]
        ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    else:
        ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=cache_dir)
    return TableSource(ds, path, files)


def _open_saved(folder: Path, path: str) -> TableSource:
    import datasets

    ds = datasets.load_from_disk(str(folder))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise ValueError(
                f"--data_path {path} is a DatasetDict without a 'train' split (splits: {', '.join(ds)}); "
                f"pass the split's folder, e.g. {folder / next(iter(ds))}"
            )
        ds = ds["train"]
    files = [c["filename"] for c in ds.cache_files]
    return TableSource(ds, path, files)


def _table_files(folder: Path) -> list[str]:
    """The .parquet / .arrow files under `folder`, sorted; hidden ones (a converter's temporary files) left out."""
    found = (p for p in folder.rglob("*") if p.suffix in TABLE_SUFFIXES and p.is_file())
    return sorted(str(p) for p in found if not any(x.startswith(".") for x in p.relative_to(folder).parts))


def open_source(data_path: str | os.PathLike, *, seed: int = 0, cache_dir: str | None = None,
                _stack: tuple[str, ...] = ()) -> SampleSource:  # fmt: skip
    """The samples at `data_path` (see the module doc for the forms). `seed`: a mixture's `random:`
    sampling; `cache_dir`: where `datasets` prepares parquet (None: its default cache)."""
    path = str(data_path)
    if glob.has_magic(path):
        files = sorted(f for f in glob.glob(os.path.expanduser(path), recursive=True) if os.path.isfile(f))
        if not files:
            raise FileNotFoundError(f"--data_path {path}: no files match the pattern")
        bad = [f for f in files if Path(f).suffix not in TABLE_SUFFIXES]
        if bad:
            raise ValueError(
                f"--data_path {path} matches {bad[0]}: a glob may only match .parquet or .arrow shards"
            )
        return _open_tables(files, path, cache_dir)
    p = Path(os.path.expanduser(path))
    if not p.exists():
        raise FileNotFoundError(f"--data_path {path} does not exist (accepted: {ACCEPTED})")
    if p.is_dir():
        saved = (p / "dataset_info.json").is_file() and (p / "state.json").is_file()
        if saved or (p / "dataset_dict.json").is_file():
            return _open_saved(p, path)
        files = _table_files(p)
        if not files:
            raise ValueError(
                f"--data_path {path} is a folder with no .parquet or .arrow files (accepted: {ACCEPTED})"
            )
        return _open_tables(files, path, cache_dir)
    suffix = p.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return JsonSource(p)
    if suffix in YAML_SUFFIXES:
        from llava.data.mixture import open_mixture

        return open_mixture(p, seed=seed, cache_dir=cache_dir, _stack=_stack)
    if suffix in TABLE_SUFFIXES:
        return _open_tables([str(p)], path, cache_dir)
    raise ValueError(
        f"--data_path {path}: unknown kind of file {suffix or '(no extension)'!r}; accepted: {ACCEPTED}"
    )
