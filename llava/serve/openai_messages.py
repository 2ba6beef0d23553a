"""OpenAI chat-completion requests -> a LLaVA prompt + images, and the errors OpenAI clients expect.

A user message's content parts, in order: `text`, `image_url` (one image each, any number), and a
video as `video_url` (a data:video/... URL, or a local path under --video-dir) or as
`{"type": "video", "video": [frame image URLs...]}`. Each image or video puts one `<image>` where
it stands; the worker request's `images` holds a base64 string per image and a list of base64
frames per video (llava.serve.request_visuals). `InputPolicy` holds what the server accepts; every
limit (images per request, pixels per image and together, the prompt's characters) is checked from
the parts and the images' headers, before any pixel is decoded: the worker decodes them, once.
Kept apart from the HTTP process so it can be tested on its own.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.serve.images import (
    ImageInputError,
    ImageTooLarge,
    base64_image_bytes,
    fetch_image_url,
    open_image_header,
    parse_data_url,
)
from llava.serve.request_visuals import VisualLimits, check_request_pixels, check_visual_count
from llava.serve.video_inputs import VideoPolicy, keep_frame_indices, video_url_frames


class APIError(Exception):
    """An error answered in OpenAI's format: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param=None,
        code=None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers  # e.g. Retry-After on a 429

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ImageURL(BaseModel):
    url: str
    detail: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None
    video_url: ImageURL | str | None = None
    video: list[ImageURL | str] | None = None  # a video's frames, as image URLs


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    seed: int | None = None
    response_format: Any = None
    tools: Any = None


@dataclass(frozen=True)
class InputPolicy:
    """What the API accepts in a request (its flags): http(s) image URLs or only data: URLs, the limits
    on images (count, pixels per image and per request), videos, and the rendered prompt's characters
    (None: unbounded). All are checked before any pixel is decoded or any token counted."""

    allow_remote: bool = False
    limits: VisualLimits = field(default_factory=VisualLimits)
    video: VideoPolicy = field(default_factory=VideoPolicy)
    max_prompt_chars: int | None = None


def _no_image_token(text: str, where: str) -> str:
    if DEFAULT_IMAGE_TOKEN in text:
        raise APIError(
            400,
            f"{where}: the text may not contain {DEFAULT_IMAGE_TOKEN!r}; send images as image_url parts",
            param=where,
        )
    return text


def _url(value) -> str:
    return value if isinstance(value, str) else value.url


def _limit_error(e: ImageInputError, flag: str, param=None) -> APIError:
    return APIError(400, f"{e} (this server's {flag})", param=param, code="request_too_large")


VISUAL_PARTS = ("image_url", "video_url", "video")


def _count_visuals(req: ChatCompletionRequest, limits: VisualLimits) -> None:
    """Refuse a request with more images and videos than `limits.max_visuals` before reading any."""
    n = sum(
        1
        for msg in req.messages
        if msg.role == "user" and isinstance(msg.content, list)
        for part in msg.content
        if part.type in VISUAL_PARTS
    )
    try:
        check_visual_count(n, limits)
    except ImageInputError as e:
        raise _limit_error(e, "--max-images", "messages") from None


class _Visuals:
    """A request's images and videos as its parts are read: the worker's `images` entries in order
    (base64; a list of base64 frames per video) and the pixels they hold together. Each image is
    checked from its header only (an image, within --max-image-pixels); the worker decodes it."""

    def __init__(self, policy: InputPolicy):
        self.policy, self.entries, self.pixels = policy, [], 0

    def image(self, url: str, where: str) -> str:
        """The base64 of one image URL (its pixels counted)."""
        try:
            data = self._image_bytes(url, where)
            head = open_image_header(data, where, self.policy.limits.max_image_pixels)
        except ImageTooLarge as e:
            raise _limit_error(e, "--max-image-pixels", where) from None
        except ImageInputError as e:
            raise APIError(400, str(e), param=where, code="invalid_image") from None
        self.pixels += head.size[0] * head.size[1]
        return base64.b64encode(data).decode("ascii")

    def _image_bytes(self, url: str, where: str) -> bytes:
        if url.startswith("data:"):
            return parse_data_url(url, where)
        if not url.lower().startswith(("http://", "https://")):
            raise ImageInputError(f"{where}: unsupported image URL {url[:40]!r}; use a data: URL")
        if not self.policy.allow_remote:
            raise APIError(
                400,
                f"{where}: image URLs over http(s) are disabled on this server; send the image inline as a "
                "data:image/...;base64,... URL (or start the server with --allow-image-urls)",
                param=where,
                code="image_url_not_allowed",
            )
        return fetch_image_url(url, where)

    def video(self, part: ContentPart, where: str) -> list[str]:
        """The base64 frames of a `video_url` or `video` part (the kept frames' pixels counted)."""
        if part.type == "video_url":
            if part.video_url is None:
                raise APIError(400, f"{where}.video_url is missing", param=where)
            try:
                frames = video_url_frames(_url(part.video_url), where, self.policy.video)
            except ImageInputError as e:
                raise APIError(400, str(e), param=where, code="invalid_video") from None
            if frames:  # frames of one video share their size
                first = open_image_header(base64_image_bytes(frames[0], where), where, None)
                self.pixels += first.size[0] * first.size[1] * len(frames)
            return frames
        urls = part.video or []
        if not urls:
            raise APIError(
                400, f"{where}: a 'video' part needs a non-empty list of frame image URLs", param=where
            )
        kept = keep_frame_indices(len(urls), None, self.policy.video)
        return [self.image(_url(urls[k]), f"{where}.video[{k}]") for k in kept]

    def check_total(self) -> None:
        try:
            check_request_pixels(self.pixels, self.policy.limits)
        except ImageInputError as e:
            raise _limit_error(e, "--max-request-pixels", "messages") from None


def _user_text(msg: ChatMessage, i: int, visuals: _Visuals) -> str:
    if msg.content is None:
        raise APIError(400, f"messages[{i}].content is missing", param=f"messages[{i}].content")
    if isinstance(msg.content, str):
        return _no_image_token(msg.content, f"messages[{i}].content")
    pieces = []
    for j, part in enumerate(msg.content):
        where = f"messages[{i}].content[{j}]"
        if part.type == "text":
            pieces.append(_no_image_token(part.text or "", where))
        elif part.type == "image_url":
            if part.image_url is None:
                raise APIError(400, f"{where}.image_url is missing", param=where)
            visuals.entries.append(visuals.image(_url(part.image_url), where))
            pieces.append(DEFAULT_IMAGE_TOKEN)
        elif part.type in ("video_url", "video"):
            visuals.entries.append(visuals.video(part, where))
            pieces.append(DEFAULT_IMAGE_TOKEN)
        else:
            raise APIError(
                400,
                f"{where}: content part type {part.type!r} is not supported (text, image_url, video_url, video)",
                param=where,
            )
    return "\n".join(pieces)


def _check_prompt_chars(prompt: str, max_chars: int | None) -> None:
    if max_chars is not None and len(prompt) > max_chars:
        raise APIError(
            400,
            f"the prompt is {len(prompt)} characters, over this server's limit of {max_chars} "
            "(--max-prompt-chars); send a shorter conversation",
            param="messages",
            code="request_too_large",
        )


def build_prompt(
    req: ChatCompletionRequest,
    conv,
    policy: InputPolicy | None = None,
    video: VideoPolicy | None = None,
):
    """(prompt, images) for a request, rendered with the template `conv` (a fresh copy): `images` holds
    a base64 string per image and a list of base64 frames per video, in the order of their `<image>`.
    `policy` says what is accepted (default: data: URLs, the default limits); `video` replaces its
    video policy. Any limit is checked before an image's pixels are decoded (they are not, here)."""
    policy = policy or InputPolicy()
    if video is not None:
        policy = replace(policy, video=video)
    _count_visuals(req, policy.limits)
    visuals = _Visuals(policy)
    turns: list[tuple[str, str]] = []
    for i, msg in enumerate(req.messages):
        if msg.role in ("system", "developer"):
            if turns:
                raise APIError(
                    400, f"messages[{i}]: a system message must come first", param=f"messages[{i}]"
                )
            text = (
                msg.content
                if isinstance(msg.content, str)
                else " ".join(p.text or "" for p in msg.content or [])
            )
            conv.system = text
            continue
        if msg.role == "user":
            text = _user_text(msg, i, visuals)
            role = "user"
        elif msg.role == "assistant":
            text = (
                msg.content
                if isinstance(msg.content, str)
                else "".join(p.text or "" for p in msg.content or [])
            )
            role = "assistant"
        else:
            raise APIError(
                400, f"messages[{i}]: role {msg.role!r} is not supported (system, user, assistant)"
            )
        if turns and turns[-1][0] == role:
            turns[-1] = (role, turns[-1][1] + "\n" + text)
        else:
            turns.append((role, text))
    if not turns or turns[0][0] != "user":
        raise APIError(
            400, "the conversation must start with a user message (after an optional system message)"
        )
    if turns[-1][0] != "user":
        raise APIError(400, "the last message must come from the user")
    for role, text in turns:
        conv.append_message(conv.roles[0] if role == "user" else conv.roles[1], text)
    conv.append_message(conv.roles[1], None)
    visuals.check_total()
    prompt = conv.get_prompt()
    _check_prompt_chars(prompt, policy.max_prompt_chars)
    return prompt, visuals.entries


def check_supported(req: ChatCompletionRequest) -> None:
    if req.n != 1:
        raise APIError(400, f"n={req.n} is not supported; only n=1", param="n")
    if req.tools:
        raise APIError(400, "tools / function calling are not supported by this server", param="tools")


def user_stops(req: ChatCompletionRequest) -> list[str]:
    if req.stop is None:
        return []
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if len(stops) > 4:
        raise APIError(400, "at most 4 stop sequences are allowed", param="stop")
    return [s for s in stops if s]


FinishReason = Literal["stop", "length"]
