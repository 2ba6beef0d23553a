"""Continuous batching for a model worker: concurrent requests are generated together, token by token.

One engine thread owns the model. At every token step it

1. admits the requests waiting for a row (up to ``max_batch`` rows in all): their prompts are
   left-padded and prefilled together, through the model's own left-padding splice of image features
   (``prepare_inputs_labels_for_multimodal(..., padding_side="left")``, the path of ``generate`` that
   the eval runner's batches take), and their key/value caches are joined to the running batch's,
   left-padded to a common width;
2. runs one decoding forward for all rows (each with its own position, from its own real length);
3. chooses each row's next token with its own parameters (greedy, or repetition penalty, temperature,
   top-k and top-p by transformers' logits processors, then sampling), decodes the row's new text
   (`Detokenizer`), cuts it at the row's stop strings (never sending part of one) and streams it:
   at most every ``STREAM_INTERVAL`` (0.05 s) per row, since each chunk holds all the text so far (the
   last chunk goes at once). Waking every client at every token would cost the engine thread about a
   third of its throughput over HTTP (measured with bench/bench_serving.py);
4. frees the rows that finished (a stop string, EOS, their ``max_new_tokens``) or whose client went
   away (``prepared.cancel`` set), dropping their cache rows and the padding no row needs any more.

A request therefore never waits for another to finish: it joins at the next step. With
``join="batch"`` requests join only when the running batch is empty (static batching; kept to measure
against). Greedy answers equal the answers generated one at a time (in float32; float16 kernels may
differ with the batch shape, as the eval runner's docstring says). A failed prefill fails only the
requests it admitted; a failed step fails every running request; the engine serves the next ones.
"""

from __future__ import annotations

import functools
import inspect
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator

import torch
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llava.serve import protocol

logger = logging.getLogger(__name__)

JOIN_MODES = ("step", "batch")
STREAM_INTERVAL = 0.05  # seconds: a row's text is sent at most this often (the last chunk at once)
_END = None  # put on a request's chunk queue after its last chunk


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that could be the start of a stop string."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), keep, -1):
            if s.startswith(text[-n:]):
                keep = n
                break
    return keep


def failure_chunk(e: BaseException) -> dict:
    return {"text": f"Generation failed: {type(e).__name__}: {e}", "error_code": protocol.WORKER_ERROR}


class Detokenizer:
    """The text of a growing list of token ids, piece by piece, as `tokenizer.decode` reads the whole list.

    Each new token decodes a short window (from the token before the last emitted piece) instead of the
    whole answer: decoding the window with and without the new token and keeping the difference gives
    the right spaces at word starts (which a lone token decodes without), and a piece that ends in an
    incomplete UTF-8 character (byte-fallback tokens) waits for the tokens that complete it. About 7 us
    a token, where `TextStreamer`'s re-decoding of the text since the last newline costs 100 us and more
    as answers grow; the pieces joined equal `tokenizer.decode(ids)` (tested on the LLaMA-2 and Mistral
    tokenizers with random ids, special tokens, newlines and multi-byte characters)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = self.read = 0  # window start; end of the ids already emitted

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def add(self, token: int) -> str:
        """The new text `token` completes ("" while a character is incomplete)."""
        self.ids.append(token)
        done = self._text(self.ids[self.prefix : self.read])
        text = self._text(self.ids[self.prefix :])
        if len(text) > len(done) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(done) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        done = self._text(self.ids[self.prefix : self.read])
        text = self._text(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return text[len(done) :]


def greedy_tokens(logits: torch.Tensor) -> list[int]:
    """The index of each row's maximum, the first one on a tie (as `torch.argmax` and `generate`).

    On the CPU by numpy's argmax, which has the same rule and is faster there: 0.02 ms for 8 rows of a
    32000-token vocabulary, against 0.14-0.4 ms for torch's (a tenth of the tiny test model's step)."""
    if logits.device.type == "cpu":
        return logits.numpy().argmax(-1).tolist()
    return logits.argmax(-1).tolist()


def row_processors(gen_kwargs: dict) -> LogitsProcessorList | None:
    """The logits processors of one request, in the order `generate` applies them (None: plain greedy)."""
    procs = LogitsProcessorList()
    penalty = gen_kwargs.get("repetition_penalty", 1.0)
    if penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(penalty))
    if gen_kwargs.get("do_sample"):
        if gen_kwargs.get("temperature", 1.0) != 1.0:
            procs.append(TemperatureLogitsWarper(gen_kwargs["temperature"]))
        if gen_kwargs.get("top_k"):
            procs.append(TopKLogitsWarper(gen_kwargs["top_k"]))
        if gen_kwargs.get("top_p", 1.0) < 1.0:
            procs.append(TopPLogitsWarper(gen_kwargs["top_p"]))
    return procs if procs or gen_kwargs.get("do_sample") else None


class _Row:
    """One request in the batch: its tokens, its text so far, and the chunks for its client."""

    def __init__(self, prep, tokenizer, interval: float):
        self.prep = prep
        self.interval, self.next_send = interval, 0.0
        self.chunks: queue.SimpleQueue = queue.SimpleQueue()
        self.tokens: list[int] = []
        self.answer = ""
        self.sent = -1
        self.text = Detokenizer(tokenizer)
        self.sample = bool(prep.gen_kwargs.get("do_sample"))
        self.processors = row_processors(prep.gen_kwargs)

    def choose(self, logits: torch.Tensor) -> int:
        """This row's next token from its logits ``[1, vocab]`` (float32)."""
        scores = self.processors(torch.tensor([self.tokens], dtype=torch.long, device=logits.device), logits)
        if self.sample:
            return int(torch.multinomial(torch.softmax(scores, dim=-1), 1))
        return greedy_tokens(scores)[0]

    def push(self, token: int, eos: bool) -> bool:
        """Take the row's next token; stream what became visible. Returns whether the row is done."""
        self.tokens.append(token)
        last = eos or len(self.tokens) >= self.prep.max_new_tokens
        piece = "" if eos else self.text.add(token)
        if last:
            piece += self.text.flush()
        self.answer += piece
        stops = self.prep.stop
        hit = [self.answer.find(s) for s in stops if s in self.answer]
        if hit:
            self.answer = self.answer[: min(hit)]
            return self.finish("stop")
        if last:
            return self.finish("stop" if eos else "length")
        visible = len(self.answer) - held_back(self.answer, stops)
        if visible > self.sent and time.monotonic() >= self.next_send:
            self.sent, self.next_send = visible, time.monotonic() + self.interval
            self.chunks.put({"text": self.prep.prompt + self.answer[:visible], "error_code": protocol.OK})
        return False

    def finish(self, reason: str) -> bool:
        usage = {"prompt_tokens": self.prep.prompt_tokens, "completion_tokens": len(self.tokens)}
        final = {"text": self.prep.prompt + self.answer, "error_code": protocol.OK}
        self.chunks.put({**final, "finish_reason": reason, "usage": usage})
        self.chunks.put(_END)
        return True

    def fail(self, e: BaseException) -> None:
        self.chunks.put(failure_chunk(e))
        self.chunks.put(_END)


@functools.cache
def _cache_kwarg(cls: type) -> str:
    """The name `forward` of model class `cls` takes its key/value cache by (transformers renamed it)."""
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`t` with zeros added in front along `dim` up to `width`."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _cache_layers(cache) -> list:
    layers = list(getattr(cache, "layers", []))
    if not layers or any(not hasattr(layer, "keys") or layer.keys is None for layer in layers):
        raise TypeError(f"batching needs a key/value cache of tensors per layer; got {type(cache).__name__}")
    return layers


def _visual_inputs(preps) -> dict | None:
    """`images`, `image_sizes` (and `modalities` with a video) of several prepared requests, in order."""
    images, sizes, modalities = [], [], []
    for p in preps:
        args = p.image_args
        if not args:
            continue
        entries = list(args["images"])  # a [N,3,H,W] tensor or a list: one entry per visual
        images += entries
        sizes += list(args["image_sizes"])
        modalities += list(args.get("modalities") or ["image"] * len(entries))
    if not images:
        return None
    out = {"images": images, "image_sizes": sizes}
    if "video" in modalities:
        out["modalities"] = modalities
    return out


class BatchEngine:
    """Generates the requests given to `stream` together, in one engine thread (see the module docstring)."""

    def __init__(
        self, model, tokenizer, max_batch: int = 8, join: str = "step", interval: float = STREAM_INTERVAL
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch (--limit-model-concurrency) must be >= 1, got {max_batch}")
        if join not in JOIN_MODES:
            raise ValueError(f"join={join!r}; valid: {', '.join(JOIN_MODES)}")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.join, self.interval = int(max_batch), join, float(interval)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        self._cond = threading.Condition()
        self._waiting: deque[_Row] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.steps = 0  # decoding forwards run (for tests and benchmarks)
        self.max_rows_seen = 0
        self._reset()

    # --- the clients' side ----------------------------------------------------------------------
    def stream(self, prep, timeout: float | None = None) -> Iterator[dict]:
        """Protocol dicts for `prep` as its row grows (the last one with finish_reason and usage)."""
        row = self._submit(prep)
        try:
            while True:
                try:
                    chunk = row.chunks.get(timeout=timeout)
                except queue.Empty:
                    why = f"Generation timed out: no token in {timeout:g}s"
                    yield {"text": why, "error_code": protocol.WORKER_ERROR}
                    return
                if chunk is _END:
                    return
                yield chunk
        finally:
            prep.cancel.set()  # the client went away (or is done): free the row at the next step

    def _submit(self, prep) -> _Row:
        row = _Row(prep, self.tokenizer, self.interval)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batching engine is closed")
            self._waiting.append(row)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="llava-batching", daemon=True)
                self._thread.start()
            self._cond.notify()
        return row

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the engine thread; requests still waiting or running end with an error chunk."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # --- the engine thread ----------------------------------------------------------------------
    def _reset(self) -> None:
        self._rows: list[_Row] = []
        self._cache = None
        self._mask = self._pos = self._next = None  # [B, W] attention mask, [B] positions, [B] tokens

    def _run(self) -> None:
        while True:
            joining = self._take_waiting()
            if joining is None:
                break
            with torch.inference_mode():
                try:
                    if joining:
                        self._admit(joining)
                    self._drop_cancelled()
                    if self._rows:
                        self._step()
                except Exception as e:  # noqa: BLE001 - every running request fails; the engine lives on
                    logger.exception("a step of %d request(s) failed", len(self._rows))
                    for row in self._rows:
                        row.fail(e)
                    self._reset()
        closed = RuntimeError("the worker is shutting down")
        for row in self._rows + list(self._waiting):
            row.fail(closed)
        self._reset()

    def _take_waiting(self) -> list[_Row] | None:
        """The requests that join at this step (waits while there is nothing to do; None once closed)."""
        with self._cond:
            while not self._closed and not self._rows and not self._waiting:
                self._cond.wait()
            if self._closed:
                return None
            room = self.max_batch - len(self._rows)
            if self.join == "batch" and self._rows:
                room = 0
            joining = []
            while self._waiting and len(joining) < room:
                row = self._waiting.popleft()
                if row.prep.cancel.is_set():
                    row.chunks.put(_END)
                else:
                    joining.append(row)
            return joining

    def _forward(self, embeds, mask, positions, cache) -> torch.Tensor:
        """Last-position logits (float32) of one forward; `cache` grows in place."""
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{_cache_kwarg(type(self.model)): cache},
        )
        return out.logits[:, -1, :].float()

    def _prefill_inputs(self, preps) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded input embeddings and attention mask of the joining requests (images spliced in)."""
        device = self.model.device
        ids = [p.input_ids.reshape(-1).to(device) for p in preps]
        pad = torch.nn.utils.rnn.pad_sequence
        input_ids = pad(ids, batch_first=True, padding_value=self.pad_id, padding_side="left")
        mask = pad([torch.ones_like(i) for i in ids], batch_first=True, padding_value=0, padding_side="left")
        visual = _visual_inputs(preps)
        if visual is not None:
            _, _, spliced_mask, _, embeds, _ = self.model.prepare_inputs_labels_for_multimodal(
                input_ids, None, mask, None, None, padding_side="left", **visual
            )
            if spliced_mask is not None:
                mask = spliced_mask
            else:
                mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        else:
            embeds = self.model.get_input_embeddings()(input_ids)
        return embeds, mask.to(device=embeds.device, dtype=torch.long)

    def _admit(self, joining: list[_Row]) -> None:
        """Prefill the joining requests together, join them to the batch and give each its first token."""
        try:
            embeds, mask = self._prefill_inputs([r.prep for r in joining])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = DynamicCache()
            logits = self._forward(embeds, mask, positions, cache)
        except Exception as e:  # noqa: BLE001 - these requests fail; the running ones go on
            logger.exception("prefill of %d request(s) failed", len(joining))
            for row in joining:
                row.fail(e)
            return
        self._join(joining, cache, mask)
        first = len(self._rows) - len(joining)
        self._deliver(logits, first)

    def _join(self, joining: list[_Row], cache, mask: torch.Tensor) -> None:
        """Add the prefilled rows (`cache`, `mask`) to the running batch, both left-padded to one width."""
        lengths = mask.sum(-1)
        if self._cache is None:
            self._cache, self._mask, self._pos = cache, mask, lengths
            self._next = torch.zeros_like(lengths)
        else:
            width = max(self._mask.shape[1], mask.shape[1])
            for old, new in zip(_cache_layers(self._cache), _cache_layers(cache)):
                old.keys = torch.cat([_left_pad(old.keys, width, 2), _left_pad(new.keys, width, 2)])
                old.values = torch.cat([_left_pad(old.values, width, 2), _left_pad(new.values, width, 2)])
            self._mask = torch.cat([_left_pad(self._mask, width, 1), _left_pad(mask, width, 1)])
            self._pos = torch.cat([self._pos, lengths])
            self._next = torch.cat([self._next, torch.zeros_like(lengths)])
        self._rows += joining
        self.max_rows_seen = max(self.max_rows_seen, len(self._rows))

    def _step(self) -> None:
        """One decoding forward for every running row, then each row's next token."""
        rows = len(self._rows)
        self._mask = torch.cat([self._mask, self._mask.new_ones((rows, 1))], dim=1)
        embeds = self.model.get_input_embeddings()(self._next.view(rows, 1))
        logits = self._forward(embeds, self._mask, self._pos.view(rows, 1), self._cache)
        self._pos = self._pos + 1
        self.steps += 1
        self._deliver(logits, 0)

    def _deliver(self, logits: torch.Tensor, first: int) -> None:
        """Choose the next token of rows `first`... from their `logits` rows; free the rows that finished."""
        tokens = greedy_tokens(logits)
        rows = self._rows[first:]
        done = []
        for i, row in enumerate(rows):
            if row.prep.cancel.is_set():  # its client went away during the forward
                row.chunks.put(_END)
                done.append(first + i)
                continue
            if row.processors is not None:
                tokens[i] = row.choose(logits[i : i + 1])
            if row.push(tokens[i], tokens[i] in self.eos_ids):
                done.append(first + i)
        self._next[first:] = torch.tensor(tokens, dtype=self._next.dtype, device=self._next.device)
        self._drop(done)

    def _drop_cancelled(self) -> None:
        gone = [i for i, row in enumerate(self._rows) if row.prep.cancel.is_set()]
        for i in gone:
            self._rows[i].chunks.put(_END)
        self._drop(gone)

    def _drop(self, indices: list[int]) -> None:
        """Free the rows at `indices` and the leading cache columns that only padded them."""
        if not indices:
            return
        keep = [i for i in range(len(self._rows)) if i not in set(indices)]
        if not keep:
            self._reset()
            return
        mask = self._mask[keep]
        start = int(mask.any(0).nonzero()[0])
        index = torch.tensor(keep, device=mask.device)
        for layer in _cache_layers(self._cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self._mask = mask[:, start:]
        self._pos, self._next = self._pos[index], self._next[index]
        self._rows = [self._rows[i] for i in keep]
