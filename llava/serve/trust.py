"""The serving stack's shared secret: who may register a worker, call a worker or the controller.

When a secret is set (`--secret`, else the environment variable LLAVA_SERVE_SECRET), every endpoint of
the controller and of a worker answers 401 unless the request carries it in the `X-LLaVA-Secret`
header; workers present it to register and heartbeat, and the controller, the OpenAI API server and
the web server send it on every call they make to the controller and the workers. Compared in
constant time. Without a secret the stack behaves as before, which is safe only on 127.0.0.1 (the
default bind of every server): docs/Serving.md, "Exposing the stack".

    secret = resolve_secret(args.secret)            # the flag, else the environment, else None
    headers = secret_headers(secret)                # for httpx / requests calls
    if not secret_ok(secret, request.headers.get(HEADER)): -> 401
    app.add_middleware(SecretGuard, secret=secret)  # the same check on every endpoint of an app

Also here, the other bound a server applies before it does any work for an untrusted caller: the
request body is read piece by piece and refused (413) as soon as it passes `--max-body-bytes`
(`read_body`), before any JSON is parsed.
"""

from __future__ import annotations

import hmac
import json
import os
from urllib.parse import urlparse

from llava.serve import protocol

HEADER = "X-LLaVA-Secret"
ENV = "LLAVA_SERVE_SECRET"
DEFAULT_HOST = "127.0.0.1"
MIN_SECRET_CHARS = 16
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
PARSE_IN_THREAD_BYTES = 1 << 20  # bodies this large are parsed off the event loop
STREAM_PATHS = ("/worker_generate_stream",)  # endpoints that answer protocol chunks, errors included


def add_host_flag(parser) -> None:
    """`--host` on a server's parser: loopback unless the user says otherwise (docs/Serving.md, 'Exposing the stack')."""
    parser.add_argument(
        "--host",
        type=str,
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}: loopback only)",
    )


def add_secret_flag(parser) -> None:
    """`--secret` on a server's argparse parser (the environment variable is the safer way to pass it:
    a flag shows in `ps`)."""
    parser.add_argument(
        "--secret",
        default=None,
        help=f"shared secret of the serving stack (default: ${ENV}); when set, the controller and workers "
        f"answer 401 to any call without it in the {HEADER} header, and workers need it to register",
    )


def redacted(args):
    """A copy of an argparse Namespace with its secret masked, for logging the arguments."""
    import argparse

    shown = dict(vars(args))
    if shown.get("secret"):
        shown["secret"] = "***"
    return argparse.Namespace(**shown)


def resolve_secret(flag: str | None) -> str | None:
    """The secret from the flag, else from LLAVA_SERVE_SECRET, else None; a short one is an error."""
    secret = flag if flag else os.environ.get(ENV) or None
    if secret is not None and len(secret) < MIN_SECRET_CHARS:
        raise ValueError(
            f"the serving secret (--secret or ${ENV}) has {len(secret)} characters; use at least "
            f"{MIN_SECRET_CHARS}, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return secret


def secret_headers(secret: str | None) -> dict[str, str]:
    """The header that carries `secret` on an outgoing call ({} without one)."""
    return {HEADER: secret} if secret else {}


def secret_ok(secret: str | None, presented: str | None) -> bool:
    """Whether a request that presented `presented` may pass (always, when no secret is set)."""
    if not secret:
        return True
    return presented is not None and hmac.compare_digest(secret.encode(), presented.encode())


UNAUTHORIZED = (
    f"missing or wrong {HEADER} header: this server requires the stack's shared secret (--secret / ${ENV})"
)


def check_worker_url(url) -> str:
    """A worker address to register: an http(s) URL with a host (ValueError otherwise), without a
    trailing slash."""
    if not isinstance(url, str):
        raise ValueError(f"worker_name must be an http(s) URL string, got {type(url).__name__}")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(
            f"worker_name {url[:200]!r} is not an http(s) URL with a host (e.g. http://10.0.0.5:40000)"
        )
    if parsed.username or parsed.password or parsed.query or parsed.fragment:
        raise ValueError(f"worker_name {url[:200]!r} may not carry credentials, a query or a fragment")
    return url.rstrip("/")


def exposure_warning(host: str, secret: str | None, what: str) -> str | None:
    """A warning for a server bound beyond loopback without a secret (None when it is fine)."""
    if secret or host in ("127.0.0.1", "localhost", "::1"):
        return None
    return (
        f"{what} listens on {host} without a shared secret: anyone who reaches it can use it (and, for the "
        f"controller, register a worker that receives other users' requests). Set ${ENV} on every part of "
        "the stack (docs/Serving.md, 'Exposing the stack')"
    )


class SecretGuard:
    """ASGI middleware: 401 with `UNAUTHORIZED` for every HTTP request without the secret (a no-op
    without one). The streaming endpoints answer one protocol chunk, the others `{"error": ...}`,
    so each client reads the refusal as it reads that endpoint's other errors."""

    def __init__(self, app, secret: str | None, stream_paths: tuple[str, ...] = STREAM_PATHS):
        self.app, self.secret, self.stream_paths = app, secret, stream_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.secret:
            return await self.app(scope, receive, send)
        wanted = HEADER.lower().encode()
        presented = next((v for k, v in scope.get("headers", []) if k == wanted), None)
        if secret_ok(self.secret, presented.decode("latin-1") if presented is not None else None):
            return await self.app(scope, receive, send)
        if scope.get("path") in self.stream_paths:
            body, kind = (
                protocol.encode_chunk(UNAUTHORIZED, protocol.WORKER_ERROR),
                b"application/octet-stream",
            )
        else:
            body, kind = json.dumps({"error": UNAUTHORIZED}).encode(), b"application/json"
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class BodyError(ValueError):
    """A request body a server will not parse; `status` is the HTTP answer, the message says why."""

    status = 400


class BodyTooLarge(BodyError):
    """A request body over the server's `--max-body-bytes` (HTTP 413); the message names both."""

    status = 413


def add_body_limit_flag(parser, default: int = DEFAULT_MAX_BODY_BYTES) -> None:
    """`--max-body-bytes` on a server's parser."""
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=default,
        help=f"refuse (HTTP 413) request bodies over this many bytes, before parsing them (default {default})",
    )


def body_too_large(max_bytes: int) -> BodyTooLarge:
    return BodyTooLarge(
        f"the request body is over {max_bytes} bytes, this server's limit (--max-body-bytes); send smaller or fewer "
        "images, or raise the limit"
    )


async def read_body(request, max_bytes: int) -> bytes:
    """The body of a Starlette `request`, read piece by piece: `BodyTooLarge` as soon as it passes
    `max_bytes` (at once when its Content-Length says so), so an oversized body is never held whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise body_too_large(max_bytes)
    buffer = bytearray()
    async for piece in request.stream():
        buffer += piece
        if len(buffer) > max_bytes:
            raise body_too_large(max_bytes)
    return bytes(buffer)


async def read_json(request, max_bytes: int) -> tuple[bytes, object]:
    """(raw body, parsed JSON) of a request, the body bounded by `read_body`; `BodyError` (400) when it
    is not JSON. A large body is parsed in a thread, so the event loop keeps serving meanwhile."""
    raw = await read_body(request, max_bytes)
    try:
        if len(raw) < PARSE_IN_THREAD_BYTES:
            return raw, json.loads(raw)
        from starlette.concurrency import run_in_threadpool

        return raw, await run_in_threadpool(json.loads, raw)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise BodyError(f"the request body is not valid JSON ({e})") from None
