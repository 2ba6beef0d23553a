"""OpenAI chat-completion requests -> a LLaVA prompt + images, and the errors OpenAI clients expect.

A user message's content parts, in order: `text`, `image_url` (one image each, any number), and a
video as `video_url` (a data:video/... URL, or a local path under --video-dir) or as
`{"type": "video", "video": [frame image URLs...]}`. Each image or video puts one `<image>` where
it stands; the worker request's `images` holds a base64 string per image and a list of base64
frames per video (llava.serve.request_visuals). Kept apart from the HTTP process so it can be
tested on its own.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.serve.images import ImageInputError, decode_image_bytes, fetch_image_url, parse_data_url
from llava.serve.video_inputs import VideoPolicy, keep_frame_indices, video_url_frames


class APIError(Exception):
    """An error answered in OpenAI's format: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

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


def _image_bytes(url: str, where: str, allow_remote: bool, max_pixels: int | None) -> bytes:
    try:
        if url.startswith("data:"):
            data = parse_data_url(url, where)
        elif url.lower().startswith(("http://", "https://")):
            if not allow_remote:
                raise APIError(
                    400,
                    f"{where}: image URLs over http(s) are disabled on this server; send the image inline as a "
                    "data:image/...;base64,... URL (or start the server with --allow-image-urls)",
                    param=where,
                    code="image_url_not_allowed",
                )
            data = fetch_image_url(url, where)
        else:
            raise ImageInputError(f"{where}: unsupported image URL {url[:40]!r}; use a data: URL")
        decode_image_bytes(data, where, max_pixels)  # validate here: the client gets a 400 at once
        return data
    except ImageInputError as e:
        raise APIError(400, str(e), param=where, code="invalid_image") from None


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


def _video_part(
    part: ContentPart, where: str, allow_remote: bool, max_pixels, video: VideoPolicy
) -> list[str]:
    """The base64 frames of a `video_url` or `video` part."""
    if part.type == "video_url":
        if part.video_url is None:
            raise APIError(400, f"{where}.video_url is missing", param=where)
        try:
            return video_url_frames(_url(part.video_url), where, video)
        except ImageInputError as e:
            raise APIError(400, str(e), param=where, code="invalid_video") from None
    frames = part.video or []
    if not frames:
        raise APIError(
            400, f"{where}: a 'video' part needs a non-empty list of frame image URLs", param=where
        )
    kept = keep_frame_indices(len(frames), None, video)
    return [
        base64.b64encode(
            _image_bytes(_url(frames[k]), f"{where}.video[{k}]", allow_remote, max_pixels)
        ).decode("ascii")
        for k in kept
    ]


def _user_text(
    msg: ChatMessage, i: int, allow_remote: bool, max_pixels: int | None, video: VideoPolicy
) -> tuple[str, list]:
    if msg.content is None:
        raise APIError(400, f"messages[{i}].content is missing", param=f"messages[{i}].content")
    if isinstance(msg.content, str):
        return _no_image_token(msg.content, f"messages[{i}].content"), []
    pieces, images = [], []
    for j, part in enumerate(msg.content):
        where = f"messages[{i}].content[{j}]"
        if part.type == "text":
            pieces.append(_no_image_token(part.text or "", where))
        elif part.type == "image_url":
            if part.image_url is None:
                raise APIError(400, f"{where}.image_url is missing", param=where)
            data = _image_bytes(_url(part.image_url), where, allow_remote, max_pixels)
            images.append(base64.b64encode(data).decode("ascii"))
            pieces.append(DEFAULT_IMAGE_TOKEN)
        elif part.type in ("video_url", "video"):
            images.append(_video_part(part, where, allow_remote, max_pixels, video))
            pieces.append(DEFAULT_IMAGE_TOKEN)
        else:
            raise APIError(
                400,
                f"{where}: content part type {part.type!r} is not supported (text, image_url, video_url, video)",
                param=where,
            )
    return "\n".join(pieces), images


def build_prompt(
    req: ChatCompletionRequest,
    conv,
    allow_remote: bool = False,
    max_pixels: int | None = None,
    video: VideoPolicy | None = None,
):
    """(prompt, images) for a request, rendered with the template `conv` (a fresh copy): `images` holds
    a base64 string per image and a list of base64 frames per video, in the order of their `<image>`."""
    video = video or VideoPolicy(max_pixels=max_pixels)
    turns: list[tuple[str, str]] = []
    images: list[str] = []
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
            text, imgs = _user_text(msg, i, allow_remote, max_pixels, video)
            images += imgs
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
    return conv.get_prompt(), images


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
