"""The OpenAI API server's view of the controller: its model list and templates, one answer stream per
request (protocol chunks from the worker it routes to), and the API errors for each way that fails,
naming the real cause (the controller unreachable, its secret refused, a full worker queue: 429 with
Retry-After)."""

from __future__ import annotations

from llava.serve import protocol, trust
from llava.serve.openai_messages import APIError


def _error_status(upstream_status: int, error_code: int) -> int:
    """The HTTP status for an error chunk that came with `upstream_status`."""
    if error_code == protocol.OVERLOADED or upstream_status == 429:
        return 429
    if error_code == protocol.NO_WORKER or upstream_status == 404:
        return 404
    if upstream_status in (400, 413):
        return upstream_status
    if error_code == protocol.WORKER_UNREACHABLE or upstream_status == 401:
        return 502
    return 500


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status in (400, 404, 413) else "server_error"


def upstream_error(address: str, e: Exception) -> APIError:
    """The APIError for an httpx failure talking to the controller at `address`, naming its real cause."""
    import httpx

    what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if isinstance(e, httpx.PoolTimeout):
        return APIError(
            429,
            "this API server has no free connection to the controller (all in use); retry shortly",
            "rate_limit_error",
            headers={protocol.RETRY_AFTER: "1"},
        )
    if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)):
        return APIError(503, f"the controller at {address} is unreachable ({what})", "server_error")
    if isinstance(e, httpx.TimeoutException):
        return APIError(504, f"the controller at {address} did not answer in time ({what})", "server_error")
    return APIError(502, f"the connection to the controller at {address} failed ({what})", "server_error")


def refused_secret(address: str) -> str:
    return (
        f"the controller at {address} refused this API server's calls: they lack the stack's shared secret "
        f"or carry a wrong one (start the API server with ${trust.ENV} or --secret set as on the controller)"
    )


class ControllerClient:
    """The API's view of the controller: its models, their templates, and answer streams."""

    def __init__(self, http, address: str):
        self.http, self.address = http, address.rstrip("/")

    async def listing(self) -> dict:
        import httpx

        try:
            r = await self.http.post(self.address + "/list_models")
        except httpx.HTTPError as e:
            raise upstream_error(self.address, e) from None
        if r.status_code == 401:
            raise APIError(502, refused_secret(self.address), "server_error")
        try:
            r.raise_for_status()
            data = r.json()
            return {"models": list(data["models"]), "conv_templates": dict(data.get("conv_templates") or {})}
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            msg = f"the controller at {self.address} gave no usable model list ({type(e).__name__}: {e})"
            raise APIError(502, msg, "server_error") from None

    async def open_stream(self, pload: dict) -> tuple[Upstream, dict]:
        """The worker's stream for `pload` and its first chunk; an APIError when it fails at once."""
        import httpx

        try:
            response = await self.http.send(
                self.http.build_request("POST", self.address + "/worker_generate_stream", json=pload),
                stream=True,
            )
        except httpx.HTTPError as e:
            raise upstream_error(self.address, e) from None
        upstream = Upstream(response)
        first = await upstream.next()
        if first is None or first["error_code"] != protocol.OK:
            await upstream.aclose()
            raise self._refusal(response, first)
        return upstream, first

    def _refusal(self, response, first: dict | None) -> APIError:
        """The APIError for a stream that failed before its first token (its status, its cause)."""
        msg = first["text"] if first else "the worker closed the stream without an answer"
        code = first["error_code"] if first else protocol.WORKER_ERROR
        status = _error_status(response.status_code, code)
        headers = None
        if status == 429:
            headers = {
                protocol.RETRY_AFTER: str(protocol.parse_retry_after(response.headers.get("retry-after")))
            }
        elif response.status_code == 401:
            msg = refused_secret(self.address)
        return APIError(
            status,
            msg,
            _error_type(status),
            code="model_not_found" if status == 404 else None,
            headers=headers,
        )


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
