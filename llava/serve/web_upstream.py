"""The web server's calls to the controller and the model workers, every failure told by its cause.

Each call carries the stack's shared secret (llava.serve.trust) when one is set. A failure raises
`UpstreamError` whose message is what the chat shows: the controller cannot be reached (start it,
check --controller-url), refuses the secret, knows no worker for the model; the worker cannot be
reached, or its queue is full (HTTP 429, with the wait it asks for). Kept apart from the Gradio page
(llava.serve.gradio_web_server) so it can be tested without a browser.

    link = ControllerLink("http://localhost:21001", secret)
    models = link.models()                      # [] when the controller cannot be reached (logged)
    for chunk in link.answer(model, payload):   # protocol chunks; UpstreamError naming the cause
        ...                                     # (an unreachable worker: once more on another one)
"""

from __future__ import annotations

from collections.abc import Iterator

import requests

from llava.serve import protocol, trust

HEADERS = {"User-Agent": "LLaVA Client"}
TIMEOUT = 10  # seconds to connect and for each read of a non-streaming call


class UpstreamError(Exception):
    """A call to the controller or a worker failed; the message says why, for the user."""


class WorkerUnreachable(UpstreamError):
    """The worker could not be reached at all: nothing was sent to it, another one may serve the request."""


def _cause(e: Exception) -> str:
    """A short name for a `requests` failure (the exception's class, not its multi-line repr)."""
    if isinstance(e, requests.exceptions.ConnectionError):
        return "connection refused or host unreachable"
    if isinstance(e, requests.exceptions.Timeout):
        return f"no answer within {TIMEOUT} s"
    return type(e).__name__


class ControllerLink:
    """The controller at `url` (and the workers it names), called with the shared `secret`."""

    def __init__(self, url: str, secret: str | None = None, logger=None):
        self.url, self.logger = url.rstrip("/"), logger
        self.headers = {**HEADERS, **trust.secret_headers(secret)}

    def _post(self, path: str, payload: dict | None = None) -> dict:
        try:
            r = requests.post(self.url + path, json=payload, headers=self.headers, timeout=TIMEOUT)
        except requests.exceptions.RequestException as e:
            raise UpstreamError(
                f"The controller at {self.url} cannot be reached ({_cause(e)}). Start it "
                "(python -m llava.serve.controller) or check the web server's --controller-url."
            ) from None
        if r.status_code == 401:
            raise UpstreamError(
                f"The controller at {self.url} refused this web server: it needs the stack's shared secret "
                f"(start the web server with ${trust.ENV} or --secret set as on the controller)."
            )
        try:
            r.raise_for_status()
            data = r.json()
        except (requests.exceptions.RequestException, ValueError) as e:
            raise UpstreamError(
                f"The controller at {self.url} gave no usable answer to {path} ({e})."
            ) from None
        if not isinstance(data, dict):
            raise UpstreamError(f"The controller at {self.url} gave no usable answer to {path}.")
        return data

    def _log_error(self, message: str) -> None:
        if self.logger:
            self.logger.error(message)

    def models(self) -> list[str]:
        """Models the controller knows, after asking it to re-check its workers ([] on failure, logged)."""
        try:
            self._post("/refresh_all_workers")
            models = sorted(self._post("/list_models")["models"])
        except (UpstreamError, KeyError, TypeError) as e:
            self._log_error(f"cannot list models at {self.url}: {e}")
            return []
        if self.logger:
            self.logger.info(f"Models: {models}")
        return models

    def templates(self) -> dict[str, str]:
        """`{model: template}` as the workers report them through the controller ({} on failure, logged)."""
        try:
            templates = self._post("/list_models").get("conv_templates") or {}
        except UpstreamError as e:
            self._log_error(f"cannot ask {self.url} for the models' templates: {e}")
            return {}
        return templates if isinstance(templates, dict) else {}

    def worker_address(self, model: str | None) -> str:
        """The address of a worker serving `model`; UpstreamError when there is none or no controller."""
        if not model:
            self._post("/list_models")  # an unreachable controller is the cause, if it is one
            raise UpstreamError(
                f"No model to chat with: the controller at {self.url} knew no model workers when this page "
                "loaded. Start a model worker, then reload the page."
            )
        address = self._post("/get_worker_address", {"model": model}).get("address")
        if not address:
            raise UpstreamError(
                f"No worker serves {model!r} right now (the controller at {self.url} has none for it). Start "
                "a model worker for it, or reload the page and pick another model."
            )
        return str(address)

    def stream(self, worker: str, payload: dict) -> Iterator[dict]:
        """The worker's answer chunks for `payload`. A refusal before the first chunk (the worker cannot
        be reached, its queue is full, it wants the secret) raises UpstreamError; a later failure is
        an error chunk (as the protocol sends it) or an UpstreamError saying the worker went away."""
        try:
            response = requests.post(
                worker + "/worker_generate_stream",
                headers=self.headers,
                json=payload,
                stream=True,
                timeout=TIMEOUT,
            )
        except requests.exceptions.RequestException as e:
            raise WorkerUnreachable(
                f"The worker {worker} for {payload.get('model')!r} cannot be reached ({_cause(e)}); "
                "please regenerate."
            ) from None
        with response:
            if response.status_code == 401:
                raise UpstreamError(
                    f"The worker {worker} refused this web server: it needs the stack's shared secret "
                    f"(start the web server with ${trust.ENV} or --secret)."
                )
            try:
                for chunk in protocol.iter_chunks(response.iter_content(chunk_size=None)):
                    if chunk["error_code"] == protocol.OVERLOADED:
                        wait = protocol.parse_retry_after(response.headers.get(protocol.RETRY_AFTER))
                        raise UpstreamError(f"{chunk['text']} (try again in {wait} s)")
                    yield chunk
            except (requests.exceptions.RequestException, ValueError) as e:
                raise UpstreamError(
                    f"The worker {worker} stopped mid-answer ({_cause(e)}); please regenerate."
                ) from None

    def answer(self, model: str | None, payload: dict) -> Iterator[dict]:
        """The answer chunks of a worker serving `model`. When the worker the controller names cannot be
        reached, the controller is asked to re-check its workers (it drops the dead one at once) and
        the request goes once to the worker it names then, as the controller's own relay does for the
        API; any other failure raises UpstreamError as `stream` does."""
        address = self.worker_address(model)
        for attempt in (1, 2):
            chunks = self.stream(address, payload)
            try:
                first = next(chunks)
            except StopIteration:
                return
            except WorkerUnreachable as e:
                if attempt == 2:
                    raise
                self._log_error(f"{e} Asking the controller for another worker.")
                self._post("/refresh_all_workers")
                retry = self.worker_address(model)
                if retry == address:
                    raise
                address = retry
                continue
            if self.logger:
                self.logger.info(f"model {model}: answered by {address}")
            yield first
            yield from chunks
            return


def violates_moderation(text: str) -> bool:
    """OpenAI moderation check (only with --moderate; needs OPENAI_API_KEY). Fails open on errors."""
    try:
        import openai

        return bool(openai.OpenAI(timeout=5).moderations.create(input=text).results[0].flagged)
    except Exception:  # noqa: BLE001 - like the original: a failing check does not block the chat
        return False
