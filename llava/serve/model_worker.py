"""A model worker: loads one model, registers with the controller, and streams answers.

    python -m llava.serve.model_worker --controller-address http://localhost:10000 \\
        --port 40000 --worker-address http://localhost:40000 --model-path liuhaotian/llava-v1.5-7b

Endpoints (POST, as the original): /worker_generate_stream (request fields: prompt, images
[one entry per <image> in the prompt: a base64 image, or a list of base64 frames for a video],
temperature, top_p, top_k, max_new_tokens, repetition_penalty, stop; answer: a NUL-delimited JSON
stream, see llava.serve.protocol) and /worker_get_status. A bad request gets an
error chunk (HTTP 400) and the worker serves the next one. At most --limit-model-concurrency
requests generate at once; up to --max-queue more wait in line (running + waiting is the reported
queue length), and past that a request is refused at once: HTTP 429, Retry-After, an OVERLOADED chunk
naming the cause. Checked before any work: the secret (401, llava.serve.trust), the body size while it
is read (413, --max-body-bytes), the prompt's characters before tokenising (400, --max-prompt-chars).
The status also reports `conv_template`, the template this worker serves (--conv-mode, else the one
saved in the checkpoint's config.json, else the name-based guess); the web server and the OpenAI API
render prompts in it, and a request without `stop` stops where its assistant turns end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
import uuid
import weakref

import requests
from fastapi import Request

from llava.constants import WORKER_HEART_BEAT_INTERVAL
from llava.serve import protocol, trust
from llava.serve.limit_flags import DEFAULT_MAX_PROMPT_CHARS, add_input_limit_flags, visual_limits
from llava.serve.logs import build_logger
from llava.serve.processes import IdleTrim
from llava.serve.request_visuals import MAX_FRAMES_PER_VIDEO

INTERVAL_ENV = "LLAVA_WORKER_HEART_BEAT_INTERVAL"
DEVICE_LOGGER = "model_worker.device"  # load_runner's line: where the model runs, in which dtype
DEFAULT_MAX_QUEUE = 16  # requests waiting beyond --limit-model-concurrency before 429


class ModelWorker:
    """Registration, heartbeats and queue accounting around a `ModelRunner`."""

    def __init__(
        self,
        controller_addr: str,
        worker_addr: str,
        runner,
        limit_model_concurrency: int | None = None,
        no_register: bool = False,
        heart_beat_interval: float | None = None,
        worker_id: str | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        secret: str | None = None,
        max_body_bytes: int = trust.DEFAULT_MAX_BODY_BYTES,
        max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
    ):
        if limit_model_concurrency is None:  # the runner's batch capacity (its --limit-model-concurrency)
            limit_model_concurrency = getattr(runner, "max_batch", 1)
        if limit_model_concurrency < 1:
            raise ValueError(f"--limit-model-concurrency must be >= 1, got {limit_model_concurrency}")
        if max_queue < 0:
            raise ValueError(f"--max-queue must be >= 0, got {max_queue}")
        self.controller_addr = controller_addr.rstrip("/")
        self.worker_addr = trust.check_worker_url(worker_addr)
        self.runner = runner
        self.model_name = runner.model_name
        self.limit = limit_model_concurrency
        self.max_queue = max_queue
        self.secret = secret
        self.max_body_bytes = max_body_bytes
        self.max_prompt_chars = max_prompt_chars
        self.no_register = no_register
        self.interval = float(
            heart_beat_interval or protocol.env_float(INTERVAL_ENV, WORKER_HEART_BEAT_INTERVAL)
        )
        self.worker_id = worker_id or uuid.uuid4().hex[:6]
        self.logger = build_logger("model_worker", f"model_worker_{self.worker_id}.log")
        self._active = 0  # requests admitted and not finished (running or waiting)
        self._count_lock = threading.Lock()
        self._idle_trim = IdleTrim(lambda: self._active == 0)  # a burst's memory back to the OS
        self._stop = threading.Event()

    # --- queue accounting -----------------------------------------------------------------------
    def try_enter(self) -> str | None:
        """Admit a request (None), or say why not: the bounded queue is full (the OVERLOADED text)."""
        with self._count_lock:
            if self._active >= self.limit + self.max_queue:
                return self.overload_message(self._active)
            self._active += 1
            return None

    def leave(self) -> None:
        with self._count_lock:
            self._active -= 1
            idle = self._active == 0
        if idle:
            self._idle_trim.went_idle()

    def overload_message(self, active: int) -> str:
        generating = min(active, self.limit)
        return (
            f"worker {self.worker_addr}: {generating} requests generating, {active - generating} waiting "
            f"(limit {self.max_queue}, --max-queue); retry shortly"
        )

    def retry_after(self) -> int:
        return protocol.retry_after_seconds(max(self._active - self.limit, 0), self.limit)

    def check_prompt(self, params) -> None:
        """RequestError for a prompt over --max-prompt-chars, before anything tokenises it."""
        from llava.serve.inference import RequestError

        prompt = params.get("prompt") if isinstance(params, dict) else None
        if isinstance(prompt, str) and len(prompt) > self.max_prompt_chars:
            raise RequestError(
                f"the prompt has {len(prompt)} characters; this worker takes at most {self.max_prompt_chars} "
                "(--max-prompt-chars): shorten it or start a new conversation"
            )

    def get_queue_length(self) -> int:
        return self._active

    def get_status(self) -> dict:
        status = {"model_names": [self.model_name], "speed": 1, "queue_length": self.get_queue_length()}
        template = getattr(self.runner, "conv_template", None)
        if template:  # added to the original's status: the template the worker serves
            status["conv_template"] = template
        return status

    # --- controller -----------------------------------------------------------------------------
    def register_to_controller(self) -> bool:
        data = {"worker_name": self.worker_addr, "check_heart_beat": True, "worker_status": self.get_status()}
        try:
            r = requests.post(
                self.controller_addr + "/register_worker",
                json=data,
                headers=trust.secret_headers(self.secret),
                timeout=5,
            )
        except requests.exceptions.RequestException as e:
            self.logger.error(f"cannot register at {self.controller_addr}: {e}")
            return False
        if r.status_code == 401:
            self.logger.error(f"controller refused registration: it needs the stack's secret (${trust.ENV})")
            return False
        if r.status_code != 200:
            self.logger.error(f"controller refused registration: HTTP {r.status_code} {r.text[:200]}")
            return False
        self.logger.info(f"registered {self.model_name!r} at {self.controller_addr} as {self.worker_addr}")
        return True

    def send_heart_beat(self) -> None:
        try:
            r = requests.post(
                self.controller_addr + "/receive_heart_beat",
                json={"worker_name": self.worker_addr, "queue_length": self.get_queue_length()},
                headers=trust.secret_headers(self.secret),
                timeout=5,
            )
            exist = bool(r.json().get("exist"))
        except (requests.exceptions.RequestException, ValueError, AttributeError) as e:
            self.logger.error(f"heart beat error: {e}")
            return
        if not exist:  # the controller restarted or dropped us: register again
            self.register_to_controller()

    def start_heart_beat(self) -> threading.Thread:
        def loop():
            while not self._stop.wait(self.interval):
                self.send_heart_beat()

        t = threading.Thread(target=loop, name="worker-heartbeat", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()

    # --- generation -----------------------------------------------------------------------------
    def generate_stream_gate(self, prepared):
        """Protocol chunks (bytes) for a prepared request; never raises."""
        try:
            for chunk in self.runner.stream(prepared):
                yield protocol.encode_chunk(**chunk)
        except Exception as e:  # noqa: BLE001 - any failure becomes an error chunk, the worker lives on
            self.logger.exception("generation failed")
            yield protocol.encode_chunk(f"Generation failed: {type(e).__name__}: {e}", protocol.WORKER_ERROR)


class _Slot:
    """A request's place at the worker: its queue place from admission, its generation slot once
    acquired; `release` gives back both, once, from any thread (it hops onto the event loop)."""

    def __init__(self, worker: ModelWorker, semaphore: asyncio.Semaphore):
        self.worker, self.semaphore = worker, semaphore
        self.loop = asyncio.get_running_loop()
        self.held = self.released = False
        self.prepared = None

    async def acquire(self) -> None:
        await self.semaphore.acquire()
        self.held = True

    def release(self) -> None:
        if self.prepared is not None:
            self.prepared.cancel.set()  # stops a generation whose client went away
        try:
            here = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            here = False
        if here:
            self._give_back()
        else:  # a garbage-collected stream, finalised on another thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone anyway
                self.loop.call_soon_threadsafe(self._give_back)

    def _give_back(self) -> None:
        if self.released:
            return
        self.released = True
        if self.held:
            self.semaphore.release()
        self.worker.leave()


class _Refusal(Exception):
    """A request answered with one error chunk before generation (`status`, message)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


async def _drain(request: Request, max_bytes: int) -> None:
    """Read and drop a refused request's body (up to `max_bytes`), unparsed: a connection closed on
    unread data can reach the client as a reset instead of the answer."""
    seen = 0
    async for piece in request.stream():
        seen += len(piece)
        if seen > max_bytes:
            break


async def _prepare(worker: ModelWorker, request: Request, slot: _Slot):
    """Read, bound and validate a request, then wait for a generation slot and prepare it."""
    from starlette.concurrency import run_in_threadpool

    from llava.serve.inference import RequestError

    try:
        _, params = await trust.read_json(request, worker.max_body_bytes)
        worker.check_prompt(params)
    except (trust.BodyError, RequestError) as e:
        raise _Refusal(str(e), getattr(e, "status", 400)) from None
    await slot.acquire()
    try:
        return await run_in_threadpool(worker.runner.prepare, params)
    except RequestError as e:
        raise _Refusal(str(e), 400) from None
    except Exception as e:  # noqa: BLE001 - any failure is answered, the worker lives on
        worker.logger.exception("request preparation failed")
        raise _Refusal(f"Request failed: {type(e).__name__}: {e}", 500) from None


def create_app(worker: ModelWorker):
    """The worker's FastAPI app; registration and heartbeats start with the server."""
    from fastapi import FastAPI
    from fastapi.responses import Response, StreamingResponse
    from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

    import llava.serve.inference  # noqa: F401 - imports torch now, not on the event loop in the first request

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.semaphore = asyncio.Semaphore(worker.limit)
        if not worker.no_register:
            await run_in_threadpool(worker.register_to_controller)
            worker.start_heart_beat()
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title=f"LLaVA model worker ({worker.model_name})", lifespan=lifespan)
    app.add_middleware(trust.SecretGuard, secret=worker.secret)

    @app.post("/worker_generate_stream")
    async def generate_stream(request: Request):
        refusal = worker.try_enter()
        if refusal is not None:
            worker.logger.info(f"refused (queue full): {refusal}")
            await _drain(request, worker.max_body_bytes)
            return Response(*protocol.overloaded(refusal, worker.retry_after()))
        slot = _Slot(worker, request.app.state.semaphore)
        try:
            prepared = slot.prepared = await _prepare(worker, request, slot)
        except _Refusal as e:
            slot.release()
            return Response(protocol.encode_chunk(str(e), protocol.WORKER_ERROR), status_code=e.status)
        except BaseException:
            slot.release()
            raise

        async def body():
            try:
                async for chunk in iterate_in_threadpool(worker.generate_stream_gate(prepared)):
                    yield chunk
            finally:
                slot.release()

        stream = body()
        # Also release if the response is dropped before its body is ever iterated.
        weakref.finalize(stream, slot.release)
        return StreamingResponse(stream, media_type="application/octet-stream")

    @app.post("/worker_get_status")
    async def get_status():
        return worker.get_status()

    return app


def build_parser() -> argparse.ArgumentParser:
    from llava.serve.inference import DEFAULT_MAX_BATCH

    p = argparse.ArgumentParser(description="LLaVA model worker")
    trust.add_host_flag(p)
    p.add_argument("--port", type=int, default=21002)
    p.add_argument("--worker-address", type=str, default="http://localhost:21002")
    p.add_argument("--controller-address", type=str, default="http://localhost:21001")
    p.add_argument("--model-path", type=str, default="facebook/opt-350m")
    p.add_argument("--model-base", type=str, default=None)
    p.add_argument("--model-name", type=str, default=None)
    p.add_argument(
        "--device",
        type=str,
        default=None,
        help="cuda, mps or cpu (default: cuda if available, else mps, else cpu; float16 on a GPU, "
        "float32 on the CPU; the worker logs which)",
    )
    p.add_argument(
        "--multi-modal", action="store_true", help="ignored: multimodality is read from the checkpoint"
    )
    p.add_argument(
        "--conv-mode",
        type=str,
        default=None,
        help="template this worker serves (default: the checkpoint's conv_template, else from its name)",
    )
    p.add_argument(
        "--limit-model-concurrency",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help="requests generated together in one batch (the batch capacity; each joins at the next token "
        f"step and frees its row when done) (default {DEFAULT_MAX_BATCH})",
    )
    p.add_argument(
        "--stream-interval", type=int, default=1, help="kept for compatibility; every token is streamed"
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help="requests that may wait beyond --limit-model-concurrency; more are refused with HTTP 429",
    )
    trust.add_body_limit_flag(p)
    trust.add_secret_flag(p)
    p.add_argument("--no-register", action="store_true")
    p.add_argument("--load-8bit", action="store_true")
    p.add_argument("--load-4bit", action="store_true")
    p.add_argument("--use-flash-attn", action="store_true")
    p.add_argument(
        "--heart-beat-interval",
        type=float,
        default=None,
        help=f"seconds between heartbeats (default ${INTERVAL_ENV} or {WORKER_HEART_BEAT_INTERVAL})",
    )
    add_input_limit_flags(p)
    p.add_argument(
        "--max-video-frames",
        type=int,
        default=MAX_FRAMES_PER_VIDEO,
        help="refuse videos sent with more frames (the model keeps its frames_upbound of them)",
    )
    return p


def load_runner(args):
    """Load the model named by the worker's flags into a ModelRunner (with the template it serves).

    Without --device: cuda if available, else mps, else the CPU, which runs float32 (float16 on a CPU is
    slow and imprecise); the device and dtype are logged. The runner batches up to
    --limit-model-concurrency requests (llava.serve.batching)."""
    from llava.conversation import choose_conv_mode
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model
    from llava.serve.inference import ModelRunner, default_device, describe_device

    name = args.model_name or get_model_name_from_path(args.model_path)
    device = args.device or default_device()
    tokenizer, model, image_processor, context_len = load_pretrained_model(
        args.model_path,
        args.model_base,
        name,
        args.load_8bit,
        args.load_4bit,
        device=device,
        use_flash_attn=args.use_flash_attn,
    )
    build_logger(DEVICE_LOGGER).info(describe_device(model, args.device))
    has_tower = hasattr(model, "get_vision_tower") and model.get_vision_tower() is not None
    multimodal = has_tower and image_processor is not None
    conv_template = choose_conv_mode(args.conv_mode, model.config, name, multimodal=multimodal)
    limits = visual_limits(args, max_frames=args.max_video_frames)
    return ModelRunner(
        tokenizer,
        model,
        image_processor,
        context_len,
        name,
        max_image_pixels=args.max_image_pixels,
        conv_template=conv_template,
        limits=limits,
        max_batch=args.limit_model_concurrency,
    )


def main(argv=None) -> None:
    import uvicorn

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        secret = trust.resolve_secret(args.secret)
        trust.check_worker_url(args.worker_address)
    except ValueError as e:
        parser.error(str(e))
    t0 = time.time()
    runner = load_runner(args)
    worker = ModelWorker(
        args.controller_address,
        args.worker_address,
        runner,
        limit_model_concurrency=args.limit_model_concurrency,
        no_register=args.no_register,
        heart_beat_interval=args.heart_beat_interval,
        max_queue=args.max_queue,
        secret=secret,
        max_body_bytes=args.max_body_bytes,
        max_prompt_chars=args.max_prompt_chars,
    )
    warning = trust.exposure_warning(args.host, secret, "this model worker")
    if warning:
        worker.logger.warning(warning)
    worker.logger.info(
        f"args: {trust.redacted(args)}; model {runner.model_name!r} loaded in {time.time() - t0:.1f}s, "
        f"conversation template {runner.conv_template!r}"
    )
    uvicorn.run(create_app(worker), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
