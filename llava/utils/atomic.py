"""Nothing half-written: a file is written under a temporary name beside its target and renamed
into place (`os.replace`, atomic on one file system) only when the writing succeeded.

Every writer of the project that must survive a kill (caches, checkpoints' side files, answers,
uploads, the review cache) goes through `atomic_path`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh temporary path beside `path` (its parent folders created) to write to; on
    success it replaces `path`, on any error it is removed and `path` is left as it was. `suffix`
    ends the temporary name, for writers that choose a format by extension."""
    path = Path(os.path.expanduser(str(path)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(os.path.expanduser(str(path)))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8, newlines as given) to `path` atomically (see `atomic_path`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))
