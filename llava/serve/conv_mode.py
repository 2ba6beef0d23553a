"""The template of a model served by a worker, for processes that do not hold the model.

The web server and the OpenAI API render prompts for models that live in model workers. Each
worker reports the template it serves (`conv_template` in its status; the controller's
/list_models passes them on as `conv_templates`); `remote_conversation` picks it through the one
rule, `llava.conversation.choose_conv_mode`: the server's --conv-mode, else the worker's
template, else the name-based guess (workers that do not report one).
"""

from __future__ import annotations

from collections.abc import Callable

from llava.conversation import SeparatorStyle, choose_conv_mode, get_conv_template


def remote_conversation(
    model_name: str, conv_mode: str | None, templates: dict, warn: Callable[[str], None]
):
    """A fresh conversation for `model_name`: `conv_mode`, else `templates[model_name]`, else the guess.

    ValueError for an unknown name, and for `chat_template`, which renders with the model's own
    tokenizer that only the worker holds.
    """
    reported = {"conv_template": templates.get(model_name)}
    name = choose_conv_mode(conv_mode, reported, model_name, warn=warn)
    conv = get_conv_template(name)
    if conv.sep_style == SeparatorStyle.CHAT_TEMPLATE:
        raise ValueError(
            f"template {name!r} for {model_name!r} renders with the model's own tokenizer, which only its "
            "worker holds; start this server with --conv-mode naming a registered template, or chat "
            "through python -m llava.serve.cli"
        )
    return conv

