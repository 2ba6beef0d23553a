"""The worker/controller wire protocol of the original LLaVA serving stack.

`/worker_generate_stream` answers with a stream of JSON objects, each followed by a NUL byte:

    {"text": <prompt + answer so far>, "error_code": 0}\\0
    {"text": <prompt + longer answer>, "error_code": 0}\\0
    ...

A failed request ends the stream with one chunk whose `error_code` is not 0 and whose `text` is a
message for the user. The last chunk of a successful stream may also carry `finish_reason`
("stop" or "length") and `usage` ({"prompt_tokens", "completion_tokens"}); older clients ignore them.

A worker whose queue is full, and the controller when every worker of the model is, answer HTTP 429
with a `Retry-After` header (whole seconds) and one chunk with `error_code` OVERLOADED whose text
names the cause (`overloaded`).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

OK = 0
WORKER_ERROR = 1  # the worker rejected the request or generation failed (original: ValueError, CUDA error)
NO_WORKER = 2  # the controller knows no worker for the requested model
WORKER_UNREACHABLE = 3  # the controller could not reach the worker it chose
OVERLOADED = 4  # every worker's queue is full: HTTP 429 with Retry-After (seconds); try again later

DELIMITER = b"\0"
RETRY_AFTER = "Retry-After"
MAX_RETRY_AFTER = 5  # seconds: the longest wait a refusal asks for


def encode_chunk(text: str, error_code: int = OK, **extra: Any) -> bytes:
    """One protocol chunk: JSON + NUL."""
    return json.dumps({"text": text, "error_code": error_code, **extra}).encode() + DELIMITER


def retry_after_seconds(waiting: int, limit: int) -> int:
    """The wait to ask of a refused client: about a second per round of `limit` requests ahead of it,
    1 to MAX_RETRY_AFTER."""
    return max(1, min(MAX_RETRY_AFTER, -(-int(waiting) // max(int(limit), 1))))


def parse_retry_after(value: str | None) -> int:
    """A `Retry-After` header's seconds (1 when absent or not a whole number), at most MAX_RETRY_AFTER."""
    try:
        return max(1, min(MAX_RETRY_AFTER, int(value)))
    except (TypeError, ValueError):
        return 1


def overloaded(text: str, retry_after: int) -> tuple[bytes, int, dict[str, str]]:
    """Body, HTTP status and headers of a refusal because the queue is full: 429, `Retry-After`, one
    OVERLOADED chunk (`Response(*overloaded(...))`)."""
    return encode_chunk(text, OVERLOADED), 429, {RETRY_AFTER: str(int(retry_after))}


def _split(buffer: bytes) -> tuple[list[bytes], bytes]:
    *parts, rest = buffer.split(DELIMITER)
    return [p for p in parts if p], rest


def _decode(raw: bytes) -> dict:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"malformed stream chunk from worker ({e}): {raw[:200]!r}") from None
    if not isinstance(obj, dict) or "text" not in obj or "error_code" not in obj:
        raise ValueError(f"stream chunk lacks 'text'/'error_code': {raw[:200]!r}")
    return obj


def iter_chunks(byte_pieces: Iterable[bytes]) -> Iterator[dict]:
    """Decode a NUL-delimited JSON stream given as arbitrary byte pieces (e.g. `response.iter_content()`)."""
    buffer = b""
    for piece in byte_pieces:
        buffer += piece
        parts, buffer = _split(buffer)
        for raw in parts:
            yield _decode(raw)
    if buffer.strip():
        yield _decode(buffer)


async def aiter_chunks(byte_pieces: AsyncIterator[bytes]) -> AsyncIterator[dict]:
    """Async twin of `iter_chunks` (for `httpx.Response.aiter_raw()`)."""
    buffer = b""
    async for piece in byte_pieces:
        buffer += piece
        parts, buffer = _split(buffer)
        for raw in parts:
            yield _decode(raw)
    if buffer.strip():
        yield _decode(buffer)


def env_float(name: str, default: float) -> float:
    """A positive float from environment variable `name`, else `default` (clear error if malformed).

    For the heartbeat timings both sides of the protocol read (worker interval, controller expiry).
    """
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={raw!r} is not a number; unset it or give seconds"
        ) from None
    if value <= 0:
        raise ValueError(f"environment variable {name}={raw!r} must be > 0")
    return value
