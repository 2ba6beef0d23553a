"""An OpenAI-compatible API in front of the controller: /v1/models and /v1/chat/completions.

    python -m llava.serve.openai_api_server --controller-address http://localhost:21001 --port 8000 \\
        [--api-keys KEY1,KEY2] [--allow-image-urls] [--conv-mode llava_v1] [--video-dir DIR]

    from openai import OpenAI
    client = OpenAI(base_url="http://localhost:8000/v1", api_key="KEY1")
    client.chat.completions.create(model="llava-v1.5-7b", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}},
        {"type": "text", "text": "What is in the picture?"}]}], stream=True)

Images come as image_url parts holding data: URLs (several per message if you like); http(s) URLs
are fetched only with --allow-image-urls. A video comes as a video_url part (a data:video/... URL,
or a path inside --video-dir when the server allows local videos) or as a `video` part listing its
frames as image URLs; at most --max-video-frames frames of it reach the worker. Streaming answers
are server-sent events ending with `data: [DONE]`. Prompts
are rendered in the template the model's worker serves (the controller's /list_models reports it),
unless --conv-mode names one for all models; the worker's answer stops where that template's
assistant turn ends (`Conversation.stop_str`) and on the request's `stop`.

Bounded before any work: the body is read piece by piece up to --max-body-bytes (413), then the
images per request, pixels per image and per request, and the prompt's characters (400); at most
--max-concurrent-requests are in flight (429 beyond). A full worker queue upstream (HTTP 429, an
OVERLOADED chunk) is answered 429 with its Retry-After and the cause. Calls to the controller carry
the stack's shared secret (--secret / $LLAVA_SERVE_SECRET); the API's own keys (--api-keys) are separate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import threading
import weakref
from dataclasses import dataclass, field

from fastapi import Request

from llava.conversation import get_conv_template
from llava.serve import protocol, trust
from llava.serve.api_answers import Reply, complete, stream_events
from llava.serve.api_upstream import ControllerClient
from llava.serve.conv_mode import remote_conversation
from llava.serve.images import DEFAULT_MAX_IMAGE_PIXELS
from llava.serve.limit_flags import DEFAULT_MAX_PROMPT_CHARS, add_input_limit_flags
from llava.serve.logs import build_logger
from llava.serve.openai_messages import (
    APIError,
    ChatCompletionRequest,
    InputPolicy,
    build_prompt,
    check_supported,
    user_stops,
)
from llava.serve.processes import release_freed_memory
from llava.serve.request_visuals import DEFAULT_MAX_REQUEST_PIXELS, MAX_VISUALS_PER_REQUEST, VisualLimits
from llava.serve.video_inputs import DEFAULT_MAX_VIDEO_FRAMES, VideoPolicy

API_KEYS_ENV = "LLAVA_API_KEYS"
DEFAULT_MAX_TOKENS = 512
DEFAULT_MAX_CONCURRENT_REQUESTS = 256
SPARE_CONNECTIONS = 16  # the controller connection pool's room beyond one per admitted request
IDLE_TRIM_DELAY = 0.5  # seconds without a request before freed memory goes back to the OS


@dataclass
class APISettings:
    controller_address: str = "http://localhost:21001"
    api_keys: list[str] = field(default_factory=list)
    allow_image_urls: bool = False
    conv_mode: str | None = None
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    video_dir: str | None = None  # local videos are read only inside it (None: none are)
    max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES
    secret: str | None = None  # the stack's shared secret, sent to the controller
    max_body_bytes: int = trust.DEFAULT_MAX_BODY_BYTES
    max_images: int = MAX_VISUALS_PER_REQUEST
    max_request_pixels: int | None = DEFAULT_MAX_REQUEST_PIXELS
    max_prompt_chars: int | None = DEFAULT_MAX_PROMPT_CHARS
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS

    def video_policy(self) -> VideoPolicy:
        return VideoPolicy(self.video_dir, self.max_video_frames, max_pixels=self.max_image_pixels)

    def input_policy(self) -> InputPolicy:
        limits = VisualLimits(
            max_visuals=self.max_images,
            max_image_pixels=self.max_image_pixels,
            max_request_pixels=self.max_request_pixels,
        )
        return InputPolicy(self.allow_image_urls, limits, self.video_policy(), self.max_prompt_chars)


class Admission:
    """Requests in flight at the API, at most `limit` (an APIError 429 beyond it); when the last one
    leaves, freed memory is given back to the OS a moment later (a burst of large images leaves
    hundreds of MB in the C allocator otherwise)."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"--max-concurrent-requests must be >= 1, got {limit}")
        self.limit, self.active = limit, 0
        self._lock = threading.Lock()
        self._loop = None

    def enter(self):
        """A release callable (idempotent, safe from any thread) for an admitted request."""
        with self._lock:
            if self.active >= self.limit:
                raise APIError(
                    429,
                    f"this API server has {self.active} requests in flight (limit {self.limit}, "
                    "--max-concurrent-requests); retry shortly",
                    "rate_limit_error",
                    headers={protocol.RETRY_AFTER: "1"},
                )
            self.active += 1
        self._loop = asyncio.get_running_loop()
        done = threading.Event()

        def release() -> None:
            with self._lock:
                if done.is_set():
                    return
                done.set()
                self.active -= 1
                idle = self.active == 0
            if idle:
                with contextlib.suppress(RuntimeError):  # the loop closed: the server is stopping
                    self._loop.call_soon_threadsafe(self._loop.call_later, IDLE_TRIM_DELAY, self._trim)

        return release

    def _trim(self) -> None:
        if self.active == 0:
            release_freed_memory()


def parse_request(raw) -> ChatCompletionRequest:
    """The validated request, or an APIError 400 naming the first bad parameter."""
    from pydantic import ValidationError

    try:
        req = ChatCompletionRequest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(x) for x in first.get("loc", ()))
        raise APIError(400, f"invalid request: {param}: {first.get('msg')}", param=param or None) from None
    check_supported(req)
    return req


def conversation_for(model: str, conv_mode: str | None, templates: dict, warn):
    """A fresh template for `model`: `conv_mode` (--conv-mode), else its worker's, else the name guess."""
    try:
        return remote_conversation(model, conv_mode, templates, warn)
    except ValueError as e:
        raise APIError(500, f"{e} (start the API with --conv-mode)", "server_error") from None


def generation_payload(req: ChatCompletionRequest, conv, prompt: str, images: list[str], stops: list[str]):
    """The /worker_generate_stream request; it stops where `conv`'s assistant turn ends and on `stops`."""
    return {
        "model": req.model,
        "prompt": prompt,
        "images": images,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "max_new_tokens": req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS,
        "stop": [s for s in [conv.stop_str] if s] + stops,
    }


def _key_ok(settings: APISettings, authorization: str) -> bool:
    token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
    return any(secrets.compare_digest(token, k) for k in settings.api_keys)


def create_app(settings: APISettings):
    import httpx
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    logger = build_logger("openai_api_server", "openai_api_server.log")
    warned: set[str] = set()

    def warn_once(message: str) -> None:  # an overridden template is logged once, not per request
        if message not in warned:
            warned.add(message)
            logger.warning(message)

    admission = Admission(settings.max_concurrent_requests)
    policy = settings.input_policy()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # One connection per admitted request (it holds one at a time) and some spare: the pool is
        # never why a request fails; a pool that is out anyway answers 429, not "unreachable".
        limits = httpx.Limits(
            max_connections=settings.max_concurrent_requests + SPARE_CONNECTIONS,
            max_keepalive_connections=min(settings.max_concurrent_requests, 64),
        )
        app.state.http = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, read=None),
            limits=limits,
            headers=trust.secret_headers(settings.secret),
        )
        app.state.controller = ControllerClient(app.state.http, settings.controller_address)
        try:
            yield
        finally:
            await app.state.http.aclose()

    app = FastAPI(title="LLaVA OpenAI-compatible API", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if settings.api_keys and request.url.path.startswith("/v1"):
            if not _key_ok(settings, request.headers.get("authorization", "")):
                msg = "invalid or missing API key (send 'Authorization: Bearer <key>')"
                return JSONResponse(APIError(401, msg, code="invalid_api_key").body(), status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request):
        release = admission.enter()
        try:
            names = (await request.app.state.controller.listing())["models"]
        finally:
            release()
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "llava"} for n in names]
        return {"object": "list", "data": data}

    async def read_request(request: Request) -> ChatCompletionRequest:
        """The request, its body bounded by --max-body-bytes while it is read (413 past it)."""
        try:
            _, raw = await trust.read_json(request, settings.max_body_bytes)
        except trust.BodyError as e:
            code = "request_too_large" if e.status == 413 else None
            raise APIError(e.status, str(e), code=code) from None
        return parse_request(raw)

    async def open_answer(request: Request, req: ChatCompletionRequest):
        """(the reply, the worker's stream, its first chunk) for a parsed request."""
        stops = user_stops(req)
        controller: ControllerClient = request.app.state.controller
        templates = (await controller.listing())["conv_templates"]  # what each model's worker serves
        conv = conversation_for(req.model, settings.conv_mode, templates, warn_once)
        prompt, images = await run_in_threadpool(build_prompt, req, conv, policy)
        pload = generation_payload(req, conv, prompt, images, stops)
        del images  # the payload holds them; nothing else should keep them alive
        videos = sum(1 for x in pload["images"] if isinstance(x, list))
        upstream, first = await controller.open_stream(pload)
        reply = Reply(req.model, prompt)
        logger.info(
            f"{reply.id}: model={req.model} images={len(pload['images']) - videos} videos={videos} "
            f"stream={req.stream}"
        )
        return reply, upstream, first

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        release = admission.enter()
        try:
            req = await read_request(request)
            reply, upstream, first = await open_answer(request, req)
            if not req.stream:
                try:
                    return await complete(upstream, first, reply)
                finally:
                    release()
        except BaseException:
            release()
            raise
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = stream_events(upstream, first, reply, include_usage, on_close=release)
        weakref.finalize(events, release)  # a response dropped before its body is sent
        return StreamingResponse(events, media_type="text/event-stream")

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="OpenAI-compatible API for LLaVA model workers")
    trust.add_host_flag(p)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--controller-address", type=str, default="http://localhost:21001")
    p.add_argument(
        "--api-keys",
        type=str,
        default=None,
        help=f"comma-separated keys clients must send as 'Authorization: Bearer KEY' (default ${API_KEYS_ENV}; none: open)",
    )
    trust.add_secret_flag(p)
    p.add_argument(
        "--allow-image-urls", action="store_true", help="fetch http(s) image URLs (off: data: URLs only)"
    )
    p.add_argument(
        "--conv-mode",
        type=str,
        default=None,
        help="template for all models (default: the one each model's worker serves)",
    )
    trust.add_body_limit_flag(p)
    add_input_limit_flags(p)
    p.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=DEFAULT_MAX_CONCURRENT_REQUESTS,
        help="requests in flight at once (streaming included); more are answered 429 with Retry-After",
    )
    p.add_argument(
        "--video-dir",
        type=str,
        default=None,
        help="allow video_url parts naming local video files or frame folders inside this folder (default: none)",
    )
    p.add_argument(
        "--max-video-frames",
        type=int,
        default=DEFAULT_MAX_VIDEO_FRAMES,
        help="frames of a video sent on to the worker, sampled evenly",
    )
    return p


def exposure_warning(host: str, api_keys: list[str]) -> str | None:
    """A warning for the API bound beyond loopback without API keys: anyone who reaches it can use it."""
    if api_keys or trust.exposure_warning(host, None, "") is None:  # (None: a loopback address)
        return None
    return (
        f"the OpenAI API server listens on {host} without API keys: anyone who reaches it can use your "
        f"models. Set --api-keys or ${API_KEYS_ENV} (docs/Serving.md, 'Exposing the stack')"
    )


def settings_from_args(args) -> APISettings:
    keys_raw = args.api_keys if args.api_keys is not None else os.environ.get(API_KEYS_ENV, "")
    return APISettings(
        controller_address=args.controller_address,
        api_keys=[k.strip() for k in keys_raw.split(",") if k.strip()],
        allow_image_urls=args.allow_image_urls,
        conv_mode=args.conv_mode,
        max_image_pixels=args.max_image_pixels,
        video_dir=args.video_dir,
        max_video_frames=args.max_video_frames,
        secret=trust.resolve_secret(args.secret),
        max_body_bytes=args.max_body_bytes,
        max_images=args.max_images,
        max_request_pixels=args.max_request_pixels,
        max_prompt_chars=args.max_prompt_chars,
        max_concurrent_requests=args.max_concurrent_requests,
    )


def main(argv=None) -> None:
    import uvicorn

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as e:  # a too-short secret
        parser.error(str(e))
    if args.conv_mode:
        get_conv_template(args.conv_mode)  # fail at start, with the valid names, not at the first request
    warning = exposure_warning(args.host, settings.api_keys)
    if warning:
        build_logger("openai_api_server", "openai_api_server.log").warning(warning)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
