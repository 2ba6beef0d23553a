"""The controller's `/worker_generate_stream` relay: choose a worker, pass back-pressure on, fail over.

A request goes to the least busy worker serving its model (`Controller.get_worker_address`) and the
worker's answer is streamed back unchanged, with these rules before the first chunk arrives:

- the worker is full (HTTP 429): the next worker of the model is tried; when every one is full, the
  client gets 429 with the soonest `Retry-After` and an OVERLOADED chunk quoting each worker's cause;
- the worker cannot be reached or breaks off before its first chunk (refused, reset, killed): it is
  dropped from the registry at once (its next heartbeat registers it again if it is alive) and the
  request is retried once on another worker; a 5xx answer is retried once too (the worker stays);
- any other answer (200, 4xx) is relayed as it is.

A worker that breaks off mid-answer is dropped as well, and the client gets a closing
WORKER_UNREACHABLE chunk. The controller holds at most `max_in_flight` relays (its HTTP client's pool
is sized to match, so the pool never runs dry); past that it answers 429 itself.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import httpx
from fastapi.responses import Response, StreamingResponse

from llava.serve import protocol, trust
from llava.serve.processes import IdleTrim

PATH = "/worker_generate_stream"
DEFAULT_MAX_IN_FLIGHT = 1024
MAX_ERROR_BODY = 64 * 1024  # bytes read of a worker's non-streaming (error) answer
CONNECT_TIMEOUT = 10.0
KEEPALIVE_EXPIRY = 2.0  # below uvicorn's 5 s keep-alive, so a pooled connection is not closed under us
MEDIA_TYPE = "application/octet-stream"
_PLACE_LOCK = threading.Lock()


def make_client(max_in_flight: int) -> httpx.AsyncClient:
    """The controller's client to the workers: a connection for every relay it admits, no read timeout
    (a queued request waits for its turn at the worker)."""
    limits = httpx.Limits(
        max_connections=max_in_flight + 8,
        max_keepalive_connections=min(max_in_flight, 256),
        keepalive_expiry=KEEPALIVE_EXPIRY,
    )
    return httpx.AsyncClient(timeout=httpx.Timeout(CONNECT_TIMEOUT, read=None, pool=60.0), limits=limits)


@dataclass
class _Busy:
    """A worker answered 429."""

    addr: str
    retry_after: int
    text: str


@dataclass
class _Failed:
    """A worker failed before its first chunk; `dead` when it could not be reached or broke off."""

    addr: str
    reason: str
    dead: bool
    response: Response | None = None  # a 5xx answer, relayed when there is no other worker to try


def _chunk_text(body: bytes) -> str:
    try:
        return next(protocol.iter_chunks([body]))["text"]
    except (ValueError, StopIteration):
        return body[:300].decode("utf-8", "replace")


class Relay:
    """Relays generation requests for a `Controller` (one per app; runs on its event loop)."""

    def __init__(self, controller, client: httpx.AsyncClient, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT):
        self.controller, self.client, self.max_in_flight = controller, client, max_in_flight
        self.in_flight = 0
        self._lock = threading.Lock()  # a dropped stream may give its place back from another thread
        self._idle_trim = IdleTrim(lambda: self.in_flight == 0)  # relayed bodies' memory back to the OS
        self.headers = {"content-type": "application/json", **trust.secret_headers(controller.secret)}

    def _admit(self) -> bool:
        with self._lock:
            if self.in_flight >= self.max_in_flight:
                return False
            self.in_flight += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
            idle = self.in_flight == 0
        if idle:
            self._idle_trim.went_idle()

    async def __call__(self, model, raw: bytes) -> Response:
        if not self._admit():
            text = f"controller: {self.in_flight} requests in flight (limit {self.max_in_flight}, --max-in-flight)"
            self.controller.logger.info(f"refused: {text}")
            return Response(*protocol.overloaded(text, 1))
        place = _Place(self._leave)
        response: Response | None = None
        try:
            response = await self._dispatch(model, raw, place)
            return response
        finally:
            if not isinstance(response, StreamingResponse):  # a stream gives its place back when it ends
                place.give_back()

    async def _dispatch(self, model, raw: bytes, place: _Place) -> Response:
        """Try the model's workers in dispatch order: each full one once, at most two failing ones."""
        tried: set[str] = set()
        busy: list[_Busy] = []
        failed: list[_Failed] = []
        while len(failed) < 2:
            addr = self.controller.get_worker_address(str(model), exclude=tried) if model is not None else ""
            if not addr:
                break
            tried.add(addr)
            outcome = await self._attempt(addr, raw, place)
            if isinstance(outcome, _Busy):
                busy.append(outcome)
            elif isinstance(outcome, _Failed):
                failed.append(outcome)
                if outcome.dead:
                    self.controller.drop_worker(addr, outcome.reason)
            else:
                return outcome
        return self._give_up(model, busy, failed)

    def _give_up(self, model, busy: list[_Busy], failed: list[_Failed]) -> Response:
        """The answer when no worker took the request: full (429), failed (5xx / 502) or none (404)."""
        if busy:
            causes = "; ".join(b.text for b in busy)
            text = f"every worker serving {model!r} is full: {causes}"
            return Response(*protocol.overloaded(text, min(b.retry_after for b in busy)))
        if failed:
            last = failed[-1]
            if last.response is not None:
                return last.response
            tried = ", ".join(f.addr for f in failed)
            text = (
                f"Worker {tried} for model {model!r} failed before answering ({last.reason}) and no other "
                "worker serves it; retry shortly."
            )
            return Response(protocol.encode_chunk(text, protocol.WORKER_UNREACHABLE), status_code=502)
        msg = _no_worker_message(model, self.controller.list_models())
        self.controller.logger.info(f"no worker: {model!r}")
        return Response(protocol.encode_chunk(msg, protocol.NO_WORKER), status_code=404)

    async def _attempt(self, addr: str, raw: bytes, place: _Place):
        """One dispatch: a Response to return, or `_Busy` / `_Failed` to try another worker."""
        request = self.client.build_request("POST", addr + PATH, content=raw, headers=self.headers)
        try:
            upstream = await self.client.send(request, stream=True)
        except httpx.PoolTimeout:
            text = "controller: no free connection to the workers within 60 s (raise --max-in-flight?)"
            return Response(protocol.encode_chunk(text, protocol.WORKER_UNREACHABLE), status_code=503)
        except httpx.HTTPError as e:
            return _Failed(addr, f"{type(e).__name__}: {e}".rstrip(": "), dead=True)
        if upstream.status_code != 200:
            return await self._refusal(addr, upstream)
        pieces = upstream.aiter_raw()
        try:
            first = await anext(pieces, b"")
        except httpx.HTTPError as e:
            await upstream.aclose()
            return _Failed(addr, f"broke off before its first chunk ({type(e).__name__})", dead=True)
        except BaseException:  # cancelled while waiting: hang up, so the worker stops generating
            await upstream.aclose()
            raise
        stream = _relay_pieces(self.controller, addr, upstream, first, pieces, place)
        weakref.finalize(stream, place.give_back)  # also when the response is dropped unread
        return StreamingResponse(stream, status_code=200, media_type=MEDIA_TYPE)

    async def _refusal(self, addr: str, upstream: httpx.Response):
        """A worker's non-200 answer (its body is one error chunk): busy, failed (5xx) or relayed."""
        body = b""
        try:
            async for piece in upstream.aiter_raw():
                body += piece
                if len(body) > MAX_ERROR_BODY:
                    break
        except httpx.HTTPError:
            pass
        finally:
            await upstream.aclose()
        status = upstream.status_code
        if status == 429:
            return _Busy(
                addr,
                protocol.parse_retry_after(upstream.headers.get(protocol.RETRY_AFTER)),
                _chunk_text(body),
            )
        response = Response(body, status_code=status, media_type=MEDIA_TYPE)
        if status >= 500:
            return _Failed(addr, f"HTTP {status}: {_chunk_text(body)[:200]}", dead=False, response=response)
        return response


class _Place:
    """A relay's place among the `max_in_flight`, given back exactly once (holds no reference to the
    stream, so a finaliser on the stream can hold it)."""

    def __init__(self, leave):
        self._leave, self._given_back = leave, False

    def give_back(self) -> None:
        with _PLACE_LOCK:
            if self._given_back:
                return
            self._given_back = True
        self._leave()


async def _relay_pieces(controller, addr: str, upstream: httpx.Response, first: bytes, pieces, place: _Place):
    """A worker's streamed answer passed on piece by piece; a break mid-answer drops the worker."""
    try:
        if first:
            yield first
        async for piece in pieces:
            yield piece
    except httpx.HTTPError as e:
        controller.drop_worker(addr, f"broke off mid-answer ({type(e).__name__})")
        msg = f"Worker {addr} stopped mid-answer ({type(e).__name__}); please regenerate."
        yield protocol.encode_chunk(msg, protocol.WORKER_UNREACHABLE)
    finally:
        await upstream.aclose()
        place.give_back()


def _no_worker_message(model, models: list[str]) -> str:
    return (
        f"No worker serves model {model!r}. Models available: {models or 'none'}. "
        "Start a model worker for it (python -m llava.serve.model_worker --model-path ...) or pick another model."
    )
