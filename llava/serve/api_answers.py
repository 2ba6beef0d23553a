"""The OpenAI API server's answers: one `chat.completion` object, or server-sent
`chat.completion.chunk` events, built from a worker's protocol chunks."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from llava.serve import protocol
from llava.serve.api_upstream import Upstream
from llava.serve.openai_messages import APIError


def with_total(usage: dict | None) -> dict:
    """The worker's usage plus OpenAI's `total_tokens` (the one place it is computed)."""
    usage = dict(usage or {})
    usage["total_tokens"] = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
    return usage


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


def midstream_error(chunk: dict) -> APIError:
    """The error for a stream that failed after it started (502 when the worker went away)."""
    status = 502 if chunk["error_code"] == protocol.WORKER_UNREACHABLE else 500
    return APIError(status, chunk["text"], "server_error")


async def complete(upstream: Upstream, first: dict, reply: Reply) -> dict:
    """The whole answer as one `chat.completion` object."""
    last = first
    try:
        while (c := await upstream.next()) is not None:
            if c["error_code"] != protocol.OK:
                raise midstream_error(c)
            last = c
    finally:
        await upstream.aclose()
    return reply.completion(last)


async def stream_events(upstream: Upstream, first: dict, reply: Reply, include_usage: bool, on_close=None):
    """Server-sent `chat.completion.chunk` events: the role, content deltas, the finish, `[DONE]`;
    `on_close()` runs when the stream ends, however it ends."""
    sent = ""
    try:
        role = {"role": "assistant", "content": ""}
        yield reply.event([{"index": 0, "delta": role, "finish_reason": None}])
        c = first
        while c is not None:
            if c["error_code"] != protocol.OK:
                yield f"data: {json.dumps(midstream_error(c).body())}\n\n"
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
        try:
            await upstream.aclose()
        finally:
            if on_close is not None:
                on_close()
