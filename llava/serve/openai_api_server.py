"""An OpenAI-compatible API in front of the controller: /v1/models and /v1/chat/completions.

    python -m llava.serve.openai_api_server --controller-address http://localhost:21001 --port 8000 \\
        [--api-keys KEY1,KEY2] [--allow-image-urls] [--conv-mode llava_v1]

    from openai import OpenAI
    client = OpenAI(base_url="http://localhost:8000/v1", api_key="KEY1")
    client.chat.completions.create(model="llava-v1.5-7b", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}},
        {"type": "text", "text": "What is in the picture?"}]}], stream=True)

Images come as image_url parts holding data: URLs; http(s) URLs are fetched only with
--allow-image-urls. Streaming answers are server-sent events ending with `data: [DONE]`.
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

from llava.serve import protocol
from llava.serve.conv_mode import get_template, infer_conv_mode, stop_string
from llava.serve.images import DEFAULT_MAX_IMAGE_PIXELS
from llava.serve.openai_messages import (
    APIError,
    ChatCompletionRequest,
    build_prompt,
    check_supported,
    user_stops,
)
from llava.serve.utils import build_logger

API_KEYS_ENV = "LLAVA_API_KEYS"
DEFAULT_MAX_TOKENS = 512


@dataclass
class APISettings:
    controller_address: str = "http://localhost:21001"
    api_keys: list[str] = field(default_factory=list)
    allow_image_urls: bool = False
    conv_mode: str | None = None
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS


def _error_status(worker_status: int, error_code: int) -> int:
    if error_code == protocol.NO_WORKER or worker_status == 404:
        return 404
    if worker_status == 400:
        return 400
    return 502 if error_code == protocol.WORKER_UNREACHABLE else 500


def create_app(settings: APISettings):
    import httpx
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import ValidationError
    from starlette.concurrency import run_in_threadpool

    logger = build_logger("openai_api_server", "openai_api_server.log")
    controller = settings.controller_address.rstrip("/")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
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
            auth = request.headers.get("authorization", "")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if not any(secrets.compare_digest(token, k) for k in settings.api_keys):
                err = APIError(
                    401,
                    "invalid or missing API key (send 'Authorization: Bearer <key>')",
                    code="invalid_api_key",
                )
                return JSONResponse(err.body(), status_code=401)
        return await call_next(request)

    async def list_models(http) -> list[str]:
        try:
            r = await http.post(controller + "/list_models")
            r.raise_for_status()
            return list(r.json()["models"])
        except (httpx.HTTPError, ValueError, KeyError) as e:
            raise APIError(
                503, f"the controller at {controller} is unreachable ({e})", "server_error"
            ) from None

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request):
        names = await list_models(request.app.state.http)
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": 0, "owned_by": "llava"} for n in names],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            raw = await request.json()
        except ValueError:
            raise APIError(400, "the request body is not valid JSON") from None
        try:
            req = ChatCompletionRequest.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            param = ".".join(str(x) for x in first.get("loc", ()))
            raise APIError(
                400, f"invalid request: {param}: {first.get('msg')}", param=param or None
            ) from None
        check_supported(req)
        stops = user_stops(req)
        try:
            conv = get_template(settings.conv_mode or infer_conv_mode(req.model))
        except ValueError as e:
            raise APIError(500, f"{e} (start the API with --conv-mode)", "server_error") from None
        prompt, images = await run_in_threadpool(
            build_prompt, req, conv, settings.allow_image_urls, settings.max_image_pixels
        )
        pload = {
            "model": req.model,
            "prompt": prompt,
            "images": images,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "max_new_tokens": req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS,
            "stop": [s for s in [stop_string(conv)] if s] + stops,
        }
        http: httpx.AsyncClient = request.app.state.http
        try:
            upstream = await http.send(
                http.build_request("POST", controller + "/worker_generate_stream", json=pload), stream=True
            )
        except httpx.HTTPError as e:
            raise APIError(
                503, f"the controller at {controller} is unreachable ({e})", "server_error"
            ) from None
        chunks = protocol.aiter_chunks(upstream.aiter_raw())

        async def next_chunk():
            try:
                return await anext(chunks)
            except StopAsyncIteration:
                return None
            except (httpx.HTTPError, ValueError) as e:
                return {"text": f"the worker stream broke ({e})", "error_code": protocol.WORKER_UNREACHABLE}

        first = await next_chunk()
        if first is None or first["error_code"] != protocol.OK:
            await upstream.aclose()
            msg = first["text"] if first else "the worker closed the stream without an answer"
            code = first["error_code"] if first else protocol.WORKER_ERROR
            status = _error_status(upstream.status_code, code)
            kind = "invalid_request_error" if status in (400, 404) else "server_error"
            raise APIError(status, msg, kind, code="model_not_found" if status == 404 else None)

        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        logger.info(f"{cid}: model={req.model} images={len(images)} stream={req.stream}")

        def answer_of(chunk) -> str:
            return chunk["text"][len(prompt) :].lstrip()

        if not req.stream:
            last = first
            try:
                while (c := await next_chunk()) is not None:
                    if c["error_code"] != protocol.OK:
                        raise APIError(500, c["text"], "server_error")
                    last = c
            finally:
                await upstream.aclose()
            usage = last.get("usage") or {}
            usage = {
                **usage,
                "total_tokens": usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0),
            }
            return {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": req.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer_of(last)},
                        "finish_reason": last.get("finish_reason", "stop"),
                    }
                ],
                "usage": usage,
            }

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def sse(choices, usage=None) -> str:
            obj = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": req.model,
                "choices": choices,
            }
            if usage is not None:
                obj["usage"] = usage
            return f"data: {json.dumps(obj)}\n\n"

        async def events():
            sent = ""
            try:
                yield sse(
                    [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
                )
                c = first
                while c is not None:
                    if c["error_code"] != protocol.OK:
                        yield f"data: {json.dumps(APIError(500, c['text'], 'server_error').body())}\n\n"
                        return
                    answer = answer_of(c)
                    if len(answer) > len(sent):
                        delta, sent = answer[len(sent) :], answer
                        yield sse([{"index": 0, "delta": {"content": delta}, "finish_reason": None}])
                    if "finish_reason" in c:
                        yield sse([{"index": 0, "delta": {}, "finish_reason": c["finish_reason"]}])
                        if include_usage:
                            u = c.get("usage") or {}
                            u = {
                                **u,
                                "total_tokens": u.get("prompt_tokens", 0) + u.get("completion_tokens", 0),
                            }
                            yield sse([], u)
                    c = await next_chunk()
                yield "data: [DONE]\n\n"
            finally:
                await upstream.aclose()

        return StreamingResponse(events(), media_type="text/event-stream")

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
        "--conv-mode", type=str, default=None, help="template for all models (default: from the model name)"
    )
    p.add_argument("--max-image-pixels", type=int, default=None)
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
    )
    if args.conv_mode:
        get_template(args.conv_mode)  # fail at start, with the valid names, not at the first request
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
