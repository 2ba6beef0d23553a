"""Model-side work of a model worker: validate a request, then stream the generated answer.

`ModelRunner.prepare(params)` checks everything that can be wrong with a `/worker_generate_stream`
request (types, images and videos: their number, frames and pixels (llava.serve.request_visuals),
`<image>` count, context length with each visual's exact token count) and raises `RequestError` with
a message for the user; no pixel is processed and nothing is computed on the model before that.
Visuals become pixels by llava.images.inputs (one image by the model's image_aspect_ratio, several
padded, a video's frames sampled to the model's `frames_upbound`); `modalities` go to generate when
a video is among them. `ModelRunner.stream(prepared)` hands the request to the runner's batching
engine (llava.serve.batching: concurrent requests are generated together, joining and leaving the batch
at token steps, up to `max_batch` rows) and yields protocol dicts
`{"text": prompt + answer so far, "error_code": 0}`. Stop strings are cut without ever sending a
partial stop string, and a request's row is freed as soon as one appears or the consumer goes away. A
request without `stop` stops on the end of an assistant turn of the template the worker serves
(`conv_template`: its `Conversation.stop_str`); the tokenizer's EOS always stops.
`default_device()` / `describe_device()`: where a worker runs without `--device`, and the line it logs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IMAGE_TOKEN_INDEX,
)
from llava.data.length_budget import LengthBudget
from llava.images.inputs import prepare_visual_list, sample_frames, tower_geometry, visual_token_counts
from llava.serve.batching import BatchEngine, held_back  # noqa: F401 - held_back: public here too
from llava.serve.images import DEFAULT_MAX_IMAGE_PIXELS, ImageInputError
from llava.serve.request_visuals import (
    MAX_VISUALS_PER_REQUEST,
    VisualLimits,
    count_visuals,
    decode_request_visuals,
)

MAX_NEW_TOKENS_CAP = 1024  # the original worker's cap
MAX_IMAGES_PER_REQUEST = MAX_VISUALS_PER_REQUEST  # images + videos (a video counts as one)


class RequestError(ValueError):
    """A request the worker cannot serve; the message is shown to the user."""


@dataclass
class Prepared:
    prompt: str
    input_ids: torch.Tensor
    image_args: dict
    gen_kwargs: dict
    stop: list[str]
    max_new_tokens: int
    prompt_tokens: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)


def _number(params: dict, key: str, default, kind, lo=None, hi=None):
    value = params.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"'{key}' must be a number, got {value!r}")
    if kind is int and float(value) != int(value):
        raise RequestError(f"'{key}' must be an integer, got {value!r}")
    value = kind(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise RequestError(f"'{key}'={value} is out of range [{lo}, {hi}]")
    return value


def _stop_list(raw) -> list[str]:
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        return [s for s in raw if s]
    raise RequestError(f"'stop' must be a string or a list of strings, got {raw!r}")


DEFAULT_MAX_BATCH = 8  # rows generated together: the worker's --limit-model-concurrency default


def default_device() -> str:
    """Where to run without --device: cuda if available, else mps (Apple), else cpu."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def describe_device(model, requested: str | None) -> str:
    """The line a worker logs about where its model runs and in which dtype (and why, without --device)."""
    param = next(model.parameters(), None)
    dtype = str(param.dtype).replace("torch.", "") if param is not None else "unknown dtype"
    where = f"model on {model.device} in {dtype}"
    if requested:
        return f"{where} (--device {requested})"
    if model.device.type == "cpu":
        return (
            f"{where}: no --device given and no CUDA or MPS device found (pass --device cuda on a GPU host)"
        )
    return f"{where}: no --device given, {model.device.type} found"


class ModelRunner:
    """Holds a loaded model and serves generation requests for it (one instance per worker)."""

    def __init__(
        self,
        tokenizer,
        model,
        image_processor,
        context_len: int,
        model_name: str,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        stream_timeout: float | None = 300.0,
        conv_template: str | None = None,
        limits: VisualLimits | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        batch_join: str = "step",
    ):
        from llava.conversation import get_conv_template

        self.tokenizer, self.model, self.image_processor = tokenizer, model, image_processor
        # The template the worker serves (reported in its status) and where its assistant turns end.
        self.conv_template = conv_template
        self.stop_str = get_conv_template(conv_template, tokenizer).stop_str if conv_template else None
        self.context_len = int(context_len)
        self.model_name = model_name
        self.max_image_pixels = max_image_pixels
        self.limits = limits or VisualLimits(max_image_pixels=max_image_pixels)
        self.stream_timeout = stream_timeout
        tower = model.get_vision_tower() if hasattr(model, "get_vision_tower") else None
        self.vision_tower = tower
        self.is_multimodal = tower is not None and image_processor is not None
        self.max_batch = int(max_batch)  # checked by the engine (and the worker's flag by ModelWorker)
        self.batch_join = batch_join  # "step" (continuous batching) or "batch" (static; to measure against)
        self._engine: BatchEngine | None = None  # started by the first request
        self._engine_lock = threading.Lock()

    # --- visuals --------------------------------------------------------------------------------
    def _keep_frames(self, n: int) -> list[int]:
        """Which of the n frames a client sent for a video are used (the model's frame sampling)."""
        return sample_frames(n, self.model.config)

    def visual_costs(self, visuals) -> list[int]:
        """Tokens each visual costs the LLM (llava.images.grid, as the model's merge splices them)."""
        if not visuals:
            return []
        return visual_token_counts(visuals, self.model.config, **tower_geometry(self.vision_tower))

    def pixel_args(self, visuals) -> dict:
        """`images`, `image_sizes` (and `modalities` when a video is among them) for model.generate."""
        pixels, sizes, modalities = prepare_visual_list(visuals, self.image_processor, self.model.config)
        dtype = next(self.model.parameters()).dtype
        if isinstance(pixels, list):
            pixels = [t.to(self.model.device, dtype=dtype) for t in pixels]
        else:
            pixels = pixels.to(self.model.device, dtype=dtype)
        args = {"images": pixels, "image_sizes": sizes}
        if "video" in modalities:
            args["modalities"] = modalities
        return args

    # --- validation -----------------------------------------------------------------------------
    def prepare(self, params) -> Prepared:
        from llava.mm_utils import tokenizer_image_token

        if not isinstance(params, dict):
            raise RequestError("the request body must be a JSON object")
        model = params.get("model")
        if model is not None and model != self.model_name:
            raise RequestError(f"this worker serves {self.model_name!r}, not {model!r}")
        prompt = params.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise RequestError("'prompt' must be a non-empty string")
        entries = params.get("images") or []
        n_tokens = prompt.count(DEFAULT_IMAGE_TOKEN)
        n_visuals = count_visuals(entries)
        if entries and not self.is_multimodal:
            raise RequestError(
                f"model {self.model_name!r} has no vision tower; send the request without images"
            )
        if isinstance(entries, list) and n_visuals != n_tokens and n_visuals <= self.limits.max_visuals:
            # (a malformed `images` or too many visuals: the decoding below says so)
            raise RequestError(
                f"the prompt has {n_tokens} {DEFAULT_IMAGE_TOKEN} token(s) but {n_visuals} image(s) were sent; "
                f"put one {DEFAULT_IMAGE_TOKEN} in the prompt per image (and one per video)"
            )

        temperature = _number(params, "temperature", 1.0, float, 0.0, 100.0)
        top_p = _number(params, "top_p", 1.0, float, 0.0, 1.0)
        top_k = _number(params, "top_k", 50, int, 0, None)
        repetition_penalty = _number(params, "repetition_penalty", 1.0, float, 1e-6, None)
        max_new_tokens = min(_number(params, "max_new_tokens", 256, int, 1, None), MAX_NEW_TOKENS_CAP)
        if params.get("stop") is None:  # none given: the end of an assistant turn of our template
            stop = [self.stop_str] if self.stop_str else []
        else:
            stop = _stop_list(params.get("stop"))
        eos = getattr(self.tokenizer, "eos_token", None)
        if isinstance(eos, str) and eos and eos not in stop:
            stop.append(eos)  # special tokens are decoded (templates stop on them); never show EOS

        image_args: dict = {}
        text = prompt
        visuals = []
        if entries:
            try:
                visuals = decode_request_visuals(entries, self.limits, self._keep_frames)
            except ImageInputError as e:
                raise RequestError(str(e)) from None
            if getattr(self.model.config, "mm_use_im_start_end", False):
                text = text.replace(
                    DEFAULT_IMAGE_TOKEN, DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
                )

        input_ids = tokenizer_image_token(text, self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
        input_ids = input_ids.unsqueeze(0).to(self.model.device)
        visual_tokens = self.visual_costs(visuals)
        prompt_tokens = LengthBudget(self.context_len).sequence_length(input_ids[0], visual_tokens)
        text_tokens = prompt_tokens - sum(visual_tokens)
        room = self.context_len - prompt_tokens
        if room < 1:
            raise RequestError(
                f"the prompt is {prompt_tokens} tokens ({text_tokens} text + {sum(visual_tokens)} for "
                f"{len(visuals)} image(s)/video(s)) but the model's context is {self.context_len}; "
                "shorten it, send fewer or smaller images or video frames, or start a new conversation"
            )
        max_new_tokens = min(max_new_tokens, room)
        if visuals:  # only now, with every check passed, are pixels computed
            image_args = self.pixel_args(visuals)

        do_sample = temperature > 0.001
        gen_kwargs = dict(do_sample=do_sample, max_new_tokens=max_new_tokens, use_cache=True)
        if do_sample:
            gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k)
        if repetition_penalty != 1.0:
            gen_kwargs["repetition_penalty"] = repetition_penalty
        return Prepared(prompt, input_ids, image_args, gen_kwargs, stop, max_new_tokens, prompt_tokens)

    # --- generation -----------------------------------------------------------------------------
    @property
    def engine(self) -> BatchEngine:
        """The batching engine that generates this runner's requests (created on first use)."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = BatchEngine(
                    self.model, self.tokenizer, max_batch=self.max_batch, join=self.batch_join
                )
            return self._engine

    def stream(self, prep: Prepared) -> Iterator[dict]:
        """Protocol dicts for a prepared request, generated in a batch with the other running ones."""
        yield from self.engine.stream(prep, timeout=self.stream_timeout)

    def close(self) -> None:
        """Stop the batching engine (requests still running end with an error chunk)."""
        with self._engine_lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()
