"""A chat client for any OpenAI-compatible endpoint, with retries and an on-disk reply cache.

Used by the GPT-assisted reviews (``llava.eval.eval_gpt_review_*``) and the instruction-data
generator (``llava.data.generate_instruct``)::

    client = CachedChatClient(model="gpt-4o", api_base="http://127.0.0.1:8000/v1", cache_dir="judge-cache")
    text = client.chat([{"role": "user", "content": "..."}], temperature=0.2, max_tokens=1024)

* The key comes from ``api_key`` or the ``OPENAI_API_KEY`` environment variable (for a local
  server without authentication, any value; ``EMPTY`` is used when a custom ``api_base`` is given
  and no key is set).
* Rate limits, timeouts, connection errors and 5xx/408/409 answers are retried with exponential
  backoff (honouring ``Retry-After``); other errors (bad request, authentication, unknown model)
  fail at once with the endpoint's message.
* Every reply is stored under ``cache_dir`` in a file named by the SHA-256 of the request (model,
  messages, sampling parameters, optional ``cache_salt``), written atomically, so a re-run, or a
  run resumed after a crash, sends nothing for requests already answered. The endpoint URL is not
  part of the key: the same model behind another URL reuses the replies.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from llava.utils.atomic import atomic_write_text

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    initial_delay: float = 1.0
    max_delay: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.25  # +- fraction of the delay

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        base *= 1 + random.uniform(-self.jitter, self.jitter)
        if retry_after is not None:
            base = max(base, min(retry_after, self.max_delay))
        return max(0.0, base)


class ReplyCache:
    """Replies on disk, one JSON file per request under ``root/<key[:2]>/<key>.json``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(os.path.expanduser(str(root)))

    @staticmethod
    def key(request: dict) -> str:
        canonical = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self.path(key)
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # a damaged entry is a miss; it is rewritten after the request is answered
        return record if isinstance(record, dict) and "reply" in record else None

    def put(self, key: str, record: dict) -> None:
        atomic_write_text(self.path(key), json.dumps(record, ensure_ascii=False))


class ChatRequestError(RuntimeError):
    """A chat request failed for good (not retryable, or out of attempts)."""


def _retry_after(error) -> float | None:
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _is_retryable(error) -> bool:
    import openai

    if isinstance(error, (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)):
        return True  # APITimeoutError is an APIConnectionError
    return isinstance(error, openai.APIStatusError) and error.status_code in RETRYABLE_STATUS


class CachedChatClient:
    """Chat completions with retries and a reply cache; thread-safe (use from a thread pool)."""

    def __init__(
        self,
        model: str,
        api_base: str | None = None,
        api_key: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        retry: RetryPolicy = RetryPolicy(),
        timeout: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.model = model
        self.api_base = api_base
        self._api_key = api_key
        self.cache = ReplyCache(cache_dir) if cache_dir else None
        self.retry = retry
        self.timeout = timeout
        self._sleep = sleep
        self._client = None
        self._lock = threading.Lock()
        self.hits = self.misses = self.retries = 0

    def _openai(self):
        with self._lock:
            if self._client is None:
                import openai

                key = self._api_key or os.environ.get("OPENAI_API_KEY")
                if not key and self.api_base:
                    key = "EMPTY"
                if not key:
                    raise ChatRequestError(
                        "no API key: set OPENAI_API_KEY (or pass --api-base for a local OpenAI-compatible server)"
                    )
                self._client = openai.OpenAI(
                    api_key=key, base_url=self.api_base, max_retries=0, timeout=self.timeout
                )
            return self._client

    def request(self, messages: Sequence[dict], **params) -> dict:
        return {"model": self.model, "messages": [dict(m) for m in messages], **params}

    def chat(self, messages: Sequence[dict], cache_salt: str | None = None, **params) -> str:
        """The reply text for ``messages`` (``params``: temperature, max_tokens, ...).

        ``cache_salt`` only enters the cache key (e.g. ``"run-2"`` to draw an independent judge sample).
        """
        request = self.request(messages, **params)
        key = ReplyCache.key({**request, "cache_salt": cache_salt} if cache_salt is not None else request)
        if self.cache is not None:
            record = self.cache.get(key)
            if record is not None:
                with self._lock:
                    self.hits += 1
                return record["reply"]
        reply, served_by = self._send(request)
        with self._lock:
            self.misses += 1
        if self.cache is not None:
            self.cache.put(
                key, {"request": request, "cache_salt": cache_salt, "reply": reply, "served_by": served_by}
            )
        return reply

    def _send(self, request: dict) -> tuple[str, str | None]:
        client = self._openai()
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                response = client.chat.completions.create(**request)
            except Exception as error:  # noqa: BLE001 - classified below
                if not _is_retryable(error):
                    raise ChatRequestError(
                        f"chat request to {self.api_base or 'OpenAI'} failed: {error}"
                    ) from error
                if attempt == self.retry.max_attempts:
                    raise ChatRequestError(
                        f"chat request to {self.api_base or 'OpenAI'} failed after {attempt} attempts: {error}"
                    ) from error
                with self._lock:
                    self.retries += 1
                self._sleep(self.retry.delay(attempt, _retry_after(error)))
                continue
            if not response.choices or response.choices[0].message.content is None:
                raise ChatRequestError(f"the endpoint returned no message content for model {self.model!r}")
            return response.choices[0].message.content, getattr(response, "model", None)
        raise AssertionError("unreachable")
