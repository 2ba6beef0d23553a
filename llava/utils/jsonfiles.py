"""Reading and writing JSON and JSON-lines files (data, evaluation, reviews): nothing half-written.

Every reader names the file and line in its errors and says how to fix the problem; every writer
writes to a temporary file beside the target and renames it into place (``os.replace``), so an
interrupted run never leaves a truncated answer, review or upload file behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llava.utils.atomic import atomic_write_text


def _require_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} not found: {path} (check the path; run the step that produces it first)"
        )
    return path


def read_jsonl(path: str | os.PathLike, what: str = "JSON-lines file") -> list[dict]:
    """Read a JSONL file; blank lines are skipped, a bad line is an error naming file and line."""
    path = _require_file(path, what)
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                hint = (
                    "the file looks truncated; re-run the step that writes it"
                    if not line.endswith("\n")
                    else ""
                )
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}). {hint}".rstrip()) from None
    return rows


def read_jsonl_tolerant(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file written by a run that may have been interrupted: a bad last line is dropped."""
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not valid JSON; fix or delete the file and re-run") from None
    return rows


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = _require_file(path, what)
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg}); "
                "the file may be truncated or corrupt: download or regenerate it"
            ) from None


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs) -> Path:
    """``json.dump`` semantics (same bytes as ``json.dump(obj, f, **dump_kwargs)``), written atomically."""
    return atomic_write_text(path, json.dumps(obj, **dump_kwargs))


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
