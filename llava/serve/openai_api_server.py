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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field

from fastapi import Request

from llava.conversation import get_conv_template
from llava.serve import protocol
from llava.serve.conv_mode import remote_conversation
from llava.serve.images import DEFAULT_MAX_IMAGE_PIXELS
from llava.serve.logs import build_logger
from llava.serve.openai_messages import (
    APIError,
    ChatCompletionRequest,
    build_prompt,
    check_supported,
    user_stops,
)
from llava.serve.video_inputs import DEFAULT_MAX_VIDEO_FRAMES, VideoPolicy

API_KEYS_ENV = "LLAVA_API_KEYS"
DEFAULT_MAX_TOKENS = 512


@dataclass
class APISettings:
    controller_address: str = "http://localhost:21001"
    api_keys: list[str] = field(default_factory=list)
    allow_image_urls: bool = False
    conv_mode: str | None = None
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    video_dir: str | None = None  # local videos are read only inside it (None: none are)
    max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES

    def video_policy(self) -> VideoPolicy:
        return VideoPolicy(self.video_dir, self.max_video_frames, max_pixels=self.max_image_pixels)


def _error_status(worker_status: int, error_code: int) -> int:
    if error_code == protocol.NO_WORKER or worker_status == 404:
        return 404
    if worker_status == 400:
        return 400
    return 502 if error_code == protocol.WORKER_UNREACHABLE else 500


def with_total(usage: dict | None) -> dict:
    """The worker's usage plus OpenAI's `total_tokens` (the one place it is computed)."""
    usage = dict(usage or {})
    usage["total_tokens"] = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
    return usage


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


class ControllerClient:
    """The API's view of the controller: its models, their templates, and answer streams."""

    def __init__(self, http, address: str):
        self.http, self.address = http, address.rstrip("/")

    async def listing(self) -> dict:
        import httpx

        try:
            r = await self.http.post(self.address + "/list_models")
            r.raise_for_status()
            data = r.json()
            return {"models": list(data["models"]), "conv_templates": dict(data.get("conv_templates") or {})}
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            raise APIError(
                503, f"the controller at {self.address} is unreachable ({e})", "server_error"
            ) from None

    async def open_stream(self, pload: dict) -> tuple[Upstream, dict]:
        """The worker's stream for `pload` and its first chunk; an APIError when it fails at once."""
        import httpx

        try:
            response = await self.http.send(
                self.http.build_request("POST", self.address + "/worker_generate_stream", json=pload),
                stream=True,
            )
        except httpx.HTTPError as e:
            raise APIError(
                503, f"the controller at {self.address} is unreachable ({e})", "server_error"
            ) from None
        upstream = Upstream(response)
        first = await upstream.next()
        if first is None or first["error_code"] != protocol.OK:
            await upstream.aclose()
            msg = first["text"] if first else "the worker closed the stream without an answer"
            code = first["error_code"] if first else protocol.WORKER_ERROR
            status = _error_status(response.status_code, code)
            kind = "invalid_request_error" if status in (400, 404) else "server_error"
            raise APIError(status, msg, kind, code="model_not_found" if status == 404 else None)
        return upstream, first


class Upstream:
    """One answer stream from a worker: protocol chunks, then None; a broken stream is an error chunk."""

    def __init__(self, response):
        self.response = response
        self._chunks = protocol.aiter_chunks(response.aiter_raw())

    async def next(self) -> dict | None:
        import httpx

        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return None
        except (httpx.HTTPError, ValueError) as e:
            return {"text": f"the worker stream broke ({e})", "error_code": protocol.WORKER_UNREACHABLE}

    async def aclose(self) -> None:
        await self.response.aclose()


@dataclass
class Reply:
    """What every answer object of one completion shares, and how to build them."""

    model: str
    prompt: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def answer(self, chunk: dict) -> str:
        return chunk["text"][len(self.prompt) :].lstrip()

    def completion(self, last: dict) -> dict:
        message = {"role": "assistant", "content": self.answer(last)}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": last.get("finish_reason", "stop")}],
            "usage": with_total(last.get("usage")),
        }

    def event(self, choices: list, usage: dict | None = None) -> str:
        obj = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        obj["choices"] = choices
        if usage is not None:
            obj["usage"] = usage
        return f"data: {json.dumps(obj)}\n\n"


async def complete(upstream: Upstream, first: dict, reply: Reply) -> dict:
    """The whole answer as one `chat.completion` object."""
    last = first
    try:
        while (c := await upstream.next()) is not None:
            if c["error_code"] != protocol.OK:
                raise APIError(500, c["text"], "server_error")
            last = c
    finally:
        await upstream.aclose()
    return reply.completion(last)


async def stream_events(upstream: Upstream, first: dict, reply: Reply, include_usage: bool):
    """Server-sent `chat.completion.chunk` events: the role, content deltas, the finish, `[DONE]`."""
    sent = ""
    try:
        role = {"role": "assistant", "content": ""}
        yield reply.event([{"index": 0, "delta": role, "finish_reason": None}])
        c = first
        while c is not None:
            if c["error_code"] != protocol.OK:
                yield f"data: {json.dumps(APIError(500, c['text'], 'server_error').body())}\n\n"
                return
            answer = reply.answer(c)
            if len(answer) > len(sent):
                delta, sent = answer[len(sent) :], answer
                yield reply.event([{"index": 0, "delta": {"content": delta}, "finish_reason": None}])
            if "finish_reason" in c:
                yield reply.event([{"index": 0, "delta": {}, "finish_reason": c["finish_reason"]}])
                if include_usage:
                    yield reply.event([], with_total(c.get("usage")))
            c = await upstream.next()
        yield "data: [DONE]\n\n"
    finally:
        await upstream.aclose()


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

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
        app.state.controller = ControllerClient(app.state.http, settings.controller_address)
        try:
            yield
        finally:
            await app.state.http.aclose()

    app = FastAPI(title="LLaVA OpenAI-compatible API", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

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
        names = (await request.app.state.controller.listing())["models"]
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "llava"} for n in names]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            raw = await request.json()
        except ValueError:
            raise APIError(400, "the request body is not valid JSON") from None
        req = parse_request(raw)
        stops = user_stops(req)
        controller: ControllerClient = request.app.state.controller
        templates = (await controller.listing())["conv_templates"]  # what each model's worker serves
        conv = conversation_for(req.model, settings.conv_mode, templates, warn_once)
        prompt, images = await run_in_threadpool(
            build_prompt,
            req,
            conv,
            settings.allow_image_urls,
            settings.max_image_pixels,
            settings.video_policy(),
        )
        upstream, first = await controller.open_stream(generation_payload(req, conv, prompt, images, stops))
        reply = Reply(req.model, prompt)
        videos = sum(1 for x in images if isinstance(x, list))
        logger.info(
            f"{reply.id}: model={req.model} images={len(images) - videos} videos={videos} stream={req.stream}"
        )
        if not req.stream:
            return await complete(upstream, first, reply)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = stream_events(upstream, first, reply, include_usage)
        return StreamingResponse(events, media_type="text/event-stream")

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="OpenAI-compatible API for LLaVA model workers")
    p.add_argument("--host", type=str, default="localhost")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--controller-address", type=str, default="http://localhost:21001")
    p.add_argument(
        "--api-keys",
        type=str,
        default=None,
        help=f"comma-separated keys clients must send as 'Authorization: Bearer KEY' (default ${API_KEYS_ENV}; none: open)",
    )
    p.add_argument(
        "--allow-image-urls", action="store_true", help="fetch http(s) image URLs (off: data: URLs only)"
    )
    p.add_argument(
        "--conv-mode",
        type=str,
        default=None,
        help="template for all models (default: the one each model's worker serves)",
    )
    p.add_argument("--max-image-pixels", type=int, default=None)
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


def main(argv=None) -> None:
    import uvicorn

    args = build_parser().parse_args(argv)
    keys_raw = args.api_keys if args.api_keys is not None else os.environ.get(API_KEYS_ENV, "")
    settings = APISettings(
        controller_address=args.controller_address,
        api_keys=[k.strip() for k in keys_raw.split(",") if k.strip()],
        allow_image_urls=args.allow_image_urls,
        conv_mode=args.conv_mode,
        max_image_pixels=args.max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS,
        video_dir=args.video_dir,
        max_video_frames=args.max_video_frames,
    )
    if args.conv_mode:
        get_conv_template(args.conv_mode)  # fail at start, with the valid names, not at the first request
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
