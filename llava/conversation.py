"""Conversation templates, keyed by the `--version` name (haotian-liu/LLaVA's and LLaVA-NeXT's names and
strings; the templates themselves, as data, are in llava/conversation_templates.py).

A `Conversation` renders its messages into one prompt string. Rendering goes through
`get_prompt_with_target_spans()`, which also returns the character spans the assistant produces
(each reply plus its end-of-turn text); `get_prompt()` is the same string without the spans, so
the text used for training labels and the text served at inference come from one renderer.

The target span of an assistant turn starts right where the generation prompt ends (the prompt
rendered with that turn left empty) and ends after the turn's end-of-turn text, e.g.
`" A cat.</s>"` for `v1`, `" A cat. </s>"` for `llama_2`, `"A cat.<|im_end|>"` for `mpt`.

    conv = get_conv_template("vicuna_v1")
    conv.append_message(conv.roles[0], "<image>\\nWhat is shown?")
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()      # "... USER: <image>\\nWhat is shown? ASSISTANT:"
    conv.stop_str                   # "</s>": where generation stops (eval, CLI, worker, API)

Which template a checkpoint is served or evaluated with: `choose_conv_mode(requested, config,
model_name)`: an explicit `--conv-mode`, else the `conv_template` training saved in config.json,
else (checkpoints without one) the original's name-based `guess_conv_mode`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from enum import Enum, auto
from typing import Any

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation_templates import DEFAULT_TEMPLATE, TEMPLATES, TemplateSpec


class SeparatorStyle(Enum):
    """How a template joins system prompt, roles and messages."""

    SINGLE = auto()
    TWO = auto()
    MPT = auto()
    PLAIN = auto()
    LLAMA_2 = auto()
    # New styles: user turns end with `sep`, assistant turns with `sep2` (both the end-of-turn
    # token, so either serving rule for the stop string finds it).
    CHATML = auto()  # Qwen2-style: <|im_start|>role\n...<|im_end|>\n
    LLAMA_3 = auto()  # <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> (messages trimmed)
    GEMMA = auto()  # <start_of_turn>role\n...<end_of_turn>\n (roles hold the prefix; no system turn)
    CHAT_TEMPLATE = auto()  # the tokenizer's own chat template (tokenizer.apply_chat_template)


Segment = tuple[str, bool]  # (text, produced by the assistant)


@dataclasses.dataclass
class Conversation:
    """A conversation: template fields plus the messages appended so far."""

    system: str
    roles: tuple[str, str] | list[str]
    messages: list[list[Any]]
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"
    skip_next: bool = False
    # Only for SeparatorStyle.CHAT_TEMPLATE: the tokenizer whose chat template renders the prompt.
    tokenizer: Any = dataclasses.field(default=None, repr=False, compare=False)

    # ----------------------------------------------------------------------------------- rendering
    def get_prompt(self) -> str:
        return self.get_prompt_with_target_spans()[0]

    def get_prompt_with_target_spans(self) -> tuple[str, list[tuple[int, int]]]:
        """The rendered prompt and the [start, end) character spans of every assistant turn."""
        prompt, spans, pos = "", [], 0
        for text, is_target in self._segments():
            if is_target and text:
                spans.append((pos, pos + len(text)))
            prompt += text
            pos += len(text)
        return prompt, spans

    def _prepared_messages(self) -> list[tuple[str, Any]]:
        """Messages with a serving-style `(text, image, mode)` first turn turned into text."""
        messages = [(role, msg) for role, msg in self.messages]
        if messages and isinstance(messages[0][1], tuple):
            init_role, init_msg = messages[0]
            text = init_msg[0].replace(DEFAULT_IMAGE_TOKEN, "").strip()
            if "mmtag" in self.version:
                messages[0] = (init_role, text)
                messages.insert(0, (self.roles[0], "<Image><image></Image>"))
                messages.insert(1, (self.roles[1], "Received."))
            else:
                messages[0] = (init_role, DEFAULT_IMAGE_TOKEN + "\n" + text)
        return [(role, msg[0] if isinstance(msg, tuple) else msg) for role, msg in messages]

    def _segments(self) -> list[Segment]:
        messages = self._prepared_messages()
        style = self.sep_style
        if style == SeparatorStyle.CHAT_TEMPLATE:
            return self._chat_template_segments(messages)
        if style == SeparatorStyle.LLAMA_2:
            return self._llama_2_segments(messages)
        out: list[Segment] = []
        if style in (SeparatorStyle.SINGLE, SeparatorStyle.TWO, SeparatorStyle.MPT):
            out.append((self.system + self.sep, False))
        elif style == SeparatorStyle.PLAIN:
            out.append((self.system, False))
        elif style == SeparatorStyle.CHATML and self.system:
            out.append((f"<|im_start|>system\n{self.system}{self.sep}\n", False))
        elif style == SeparatorStyle.LLAMA_3 and self.system:
            out.append(
                (f"<|start_header_id|>system<|end_header_id|>\n\n{self.system.strip()}{self.sep}", False)
            )
        elif style == SeparatorStyle.GEMMA and self.system:
            raise ValueError(
                f"template {self.version!r} (Gemma) has no system turn; drop the system prompt "
                f"({self.system[:40]!r}...) or use another template"
            )
        elif style not in (SeparatorStyle.CHATML, SeparatorStyle.LLAMA_3, SeparatorStyle.GEMMA):
            raise ValueError(f"Invalid style: {style}")
        for i, (role, msg) in enumerate(messages):
            out.extend(self._turn_segments(i % 2 == 1, role, msg))
        return out

    def _turn_segments(self, is_assistant: bool, role: str, msg: str | None) -> list[Segment]:
        """One turn as (prefix the prompt ends with, text the speaker produces) segments."""
        style = self.sep_style
        if style == SeparatorStyle.SINGLE:
            prefix, body = role + ":", (" " + msg + self.sep if msg else "")
        elif style == SeparatorStyle.TWO:
            prefix, body = role + ":", (" " + msg + (self.sep2 if is_assistant else self.sep) if msg else "")
        elif style == SeparatorStyle.MPT:
            prefix, body = role, (msg + self.sep if msg else "")
        elif style == SeparatorStyle.PLAIN:
            # The original trained on "<image>" + caption + sep (preprocess_plain), so a human turn
            # adds no separator and the assistant turn ends with `sep`.
            prefix, body = "", ((msg + self.sep) if is_assistant else msg) if msg else ""
        elif style in (SeparatorStyle.CHATML, SeparatorStyle.GEMMA):
            # The end-of-turn token is the target; the newline after it is not.
            end = self.sep2 if is_assistant else self.sep
            prefix = f"<|im_start|>{role}\n" if style == SeparatorStyle.CHATML else role
            body = msg + end if msg else ""
            if msg:
                return [(prefix, False), (body, is_assistant), ("\n", False)]
        else:  # LLAMA_3: as LLaMA-3-Instruct's chat template, which trims every message
            end = self.sep2 if is_assistant else self.sep
            prefix, body = (
                f"<|start_header_id|>{role}<|end_header_id|>\n\n",
                (msg.strip() + end if msg else ""),
            )
        return [(prefix, False), (body, is_assistant and bool(msg))]

    def _llama_2_segments(self, messages) -> list[Segment]:
        out: list[Segment] = []
        for i, (role, msg) in enumerate(messages):
            if i == 0 and (not msg or role != self.roles[0]):
                raise ValueError("LLAMA_2-style conversations must start with a non-empty user message")
            if not msg:
                continue
            if i % 2 == 0:
                if i == 0 and self.system:
                    msg = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{msg}"
                text = f"{self.sep}[INST] {msg} [/INST]"
                out.append((text.lstrip(self.sep) if i == 0 else text, False))
            else:
                out.append((f" {msg} {self.sep2}", True))
        return out

    def _chat_template_segments(self, messages) -> list[Segment]:
        tok = self.tokenizer
        if tok is None or not getattr(tok, "chat_template", None):
            raise ValueError(
                "template 'chat_template' renders with the tokenizer's own chat template: set "
                "conv.tokenizer to a tokenizer that has one (get_conv_template('chat_template', tokenizer=tok))"
            )
        chat = [{"role": "system", "content": self.system}] if self.system else []
        for i, (_, msg) in enumerate(messages):
            if msg is None and i == len(messages) - 1 and i % 2 == 1:
                break
            if not msg:
                raise ValueError(f"message {i} is empty; only a final assistant turn may be None")
            chat.append({"role": "assistant" if i % 2 else "user", "content": msg})
        n_sys = 1 if self.system else 0

        def render(upto: int, gen: bool) -> str:
            text = tok.apply_chat_template(chat[:upto], tokenize=False, add_generation_prompt=gen)
            bos = getattr(tok, "bos_token", None)
            if bos and text.startswith(bos) and tok("").input_ids[:1] == [tok.bos_token_id]:
                text = text[len(bos) :]  # tokenizer_image_token adds BOS itself
            return text

        generating = bool(messages) and messages[-1][1] is None
        full = render(len(chat), generating)
        out: list[Segment] = []
        pos = 0
        for k in range(n_sys, len(chat)):
            if chat[k]["role"] != "assistant":
                continue
            before, after = render(k, True), render(k + 1, False)
            reply = after[len(before) :].rstrip()
            if not (after.startswith(before) and full.startswith(after) and len(before) >= pos):
                raise ValueError(
                    "this tokenizer's chat template does not render conversations prefix by prefix "
                    "(an earlier turn changes when a later one is added), so assistant spans cannot "
                    "be located; use a named template instead (see conv_templates)"
                )
            out += [(full[pos : len(before)], False), (reply, True)]
            pos = len(before) + len(reply)
        out.append((full[pos:], False))
        return out

    # ----------------------------------------------------------------------------------- stopping
    @property
    def stop_str(self) -> str | None:
        """The text that ends an assistant turn of this template (where generation stops), or None.

        `</s>` for v1 and LLaMA-2 styles (sep2), `###` for v0 (SINGLE: sep), `<|im_end|>` for MPT
        (sep), `\\n` for plain (the caption ends with sep), sep2 for ChatML, LLaMA-3 and Gemma, and the
        tokenizer's EOS for chat_template once a tokenizer is bound. Eval, CLI, worker and API all
        stop on this one string.
        """
        style = self.sep_style
        if style in (SeparatorStyle.SINGLE, SeparatorStyle.MPT, SeparatorStyle.PLAIN):
            stop = self.sep
        elif style == SeparatorStyle.CHAT_TEMPLATE:
            stop = self.sep2 if self.tokenizer is not None else None
        else:  # TWO, LLAMA_2, CHATML, LLAMA_3, GEMMA: the assistant's own end-of-turn text
            stop = self.sep2
        return stop if isinstance(stop, str) and stop.strip(" ") else None

    # ----------------------------------------------------------------------------------- editing
    def bind_tokenizer(self, tokenizer: Any) -> None:
        """Use `tokenizer` for CHAT_TEMPLATE rendering; its EOS becomes the stop string (sep/sep2)."""
        self.tokenizer = tokenizer
        if self.sep_style == SeparatorStyle.CHAT_TEMPLATE and getattr(tokenizer, "eos_token", None):
            self.sep = self.sep2 = tokenizer.eos_token

    def append_message(self, role: str, message: Any) -> None:
        self.messages.append([role, message])

    def copy(self) -> Conversation:
        return dataclasses.replace(self, messages=[[x, y] for x, y in self.messages], skip_next=False)

    def dict(self):
        has_images = any(isinstance(m, tuple) for _, m in self.messages)
        messages = [[x, y[0] if isinstance(y, tuple) else y] for x, y in self.messages]
        return {
            "system": self.system,
            "roles": self.roles,
            "messages": messages if has_images else self.messages,
            "offset": self.offset,
            "sep": self.sep,
            "sep2": self.sep2,
        }


def _build(spec: TemplateSpec) -> Conversation:
    return Conversation(
        spec.system,
        spec.roles,
        [list(m) for m in spec.messages],
        spec.offset,
        SeparatorStyle[spec.style],
        spec.sep,
        spec.sep2,
        spec.version,
    )


def _registry(specs: dict[str, TemplateSpec]) -> dict[str, Conversation]:
    """One Conversation per distinct spec: names of equal specs (aliases) share the object."""
    built: dict[TemplateSpec, Conversation] = {}
    return {name: built.setdefault(spec, _build(spec)) for name, spec in specs.items()}


conv_templates: dict[str, Conversation] = _registry(TEMPLATES)
default_conversation = conv_templates[DEFAULT_TEMPLATE]


def get_conv_template(name: str, tokenizer: Any = None) -> Conversation:
    """A fresh copy of the template registered as `name` (the `--version` flag).

    `tokenizer` is needed only for "chat_template", which renders with `tokenizer.apply_chat_template`.
    """
    if name not in conv_templates:
        raise ValueError(
            f"unknown conversation template {name!r} (--version); valid names: {', '.join(sorted(conv_templates))}"
        )
    conv = conv_templates[name].copy()
    if tokenizer is not None:
        conv.bind_tokenizer(tokenizer)
    return conv


# --------------------------------------------------------------------------- which template to serve
def guess_conv_mode(model_name: str, multimodal: bool | None = None) -> str:
    """The original's guess of a template from words in the model name (`llava-v1.5-7b` -> `llava_v1`),
    with LLaVA-NeXT's names added (`llava-onevision-qwen2-7b-ov` -> `qwen_1_5`, `llama3-llava-next-8b`
    -> `llava_llama_3`, `llava-v1.6-34b` -> `chatml_direct`, `llava-v1.6-mistral-7b` -> `mistral_instruct`).

    Only for checkpoints that do not say which template they were trained with (no `conv_template`
    in config.json: the original's and LLaVA-NeXT's). `multimodal` (when known) says whether it is a
    LLaVA model; otherwise "llava" in the name decides. May name a template this registry lacks
    (`mpt_text`); `choose_conv_mode` turns that into a clear error.
    """
    name = model_name.lower()
    if multimodal if multimodal is not None else "llava" in name:
        if "llama-2" in name:
            return "llava_llama_2"
        if any(w in name for w in ("llama3", "llama-3", "llama_3")):
            return "llava_llama_3"
        if "qwen" in name or "onevision" in name:
            return "qwen_1_5"
        if "zephyr" in name:
            return "mistral_zephyr"
        if "mistral" in name or "mixtral" in name:
            if "orca" in name:
                return "mistral_orca"
            if "hermes" in name:
                return "chatml_direct"
            return "mistral_instruct"
        if "34b" in name:
            return "chatml_direct"
        if "gemma" in name:
            return "gemma_instruct"
        plain_tag = "mmtag" in name or ("plain" in name and "finetune" not in name)
        if "v1" in name:
            return "v1_mmtag" if plain_tag else "llava_v1"
        if "mpt" in name:
            return "mpt"
        return "v0_mmtag" if plain_tag else "llava_v0"
    if "mpt" in name:
        return "mpt_text"
    if "llama-2" in name:
        return "llama_2"
    return "vicuna_v1"


def saved_conv_template(config: Any) -> str | None:
    """The `conv_template` a checkpoint's config carries (a PretrainedConfig, a dict or None)."""
    if config is None:
        return None
    if isinstance(config, dict):
        return config.get("conv_template") or None
    return getattr(config, "conv_template", None) or None


def _warn_stderr(message: str) -> None:
    print(f"[WARNING] {message}", file=sys.stderr)


def _check_registered(name: str, where: str) -> str:
    if name not in conv_templates:
        raise ValueError(
            f"{where} names conversation template {name!r}, which is not registered; "
            f"valid names: {', '.join(sorted(conv_templates))}"
        )
    return name


def choose_conv_mode(
    requested: str | None,
    config: Any,
    model_name: str,
    multimodal: bool | None = None,
    warn: Callable[[str], None] = _warn_stderr,
) -> str:
    """The template to serve or evaluate a checkpoint with: one rule for every entry point.

    An explicit `requested` (`--conv-mode`) wins; when the checkpoint's saved `conv_template`
    differs, `warn` is called with a message naming both. Else the saved `conv_template` (`config`
    is the model's config, a dict such as a worker's status, or None). Else, for a checkpoint that
    carries none, `guess_conv_mode(model_name, multimodal)`. Every name returned is registered
    (an unknown one is a ValueError listing the valid names).
    """
    saved = saved_conv_template(config)
    if requested:
        _check_registered(requested, "--conv-mode")
        if saved and saved != requested:
            warn(
                f"{model_name} was trained with conversation template {saved!r} (conv_template in its "
                f"config), but --conv-mode is {requested!r}; using {requested!r}"
            )
        return requested
    if saved:
        return _check_registered(saved, f"the config of {model_name} (conv_template)")
    guess = guess_conv_mode(model_name, multimodal)
    if guess not in conv_templates:
        raise ValueError(
            f"{model_name}'s config has no conv_template and its name suggests template {guess!r}, which is "
            f"not registered; pass --conv-mode (valid names: {', '.join(sorted(conv_templates))})"
        )
    return guess


if __name__ == "__main__":
    print(default_conversation.get_prompt())
