"""The Gradio chat page: pick a model, upload images or a video, chat with streamed answers.

    python -m llava.serve.gradio_web_server --controller-url http://localhost:10000 --model-list-mode reload

Flags as the original (--host --port --controller-url --concurrency-count --model-list-mode
once|reload --share --moderate), plus --conv-mode. Talks to the controller and workers with the
original protocol. Each conversation is rendered in the template the chosen model's worker serves
(it reports it; the controller's /list_models passes it on) unless --conv-mode names one for all.
Gradio analytics and update checks are off and the page loads no outside resources.
The upload box takes one image (processed as the model's image_aspect_ratio says), several images
(one `<image>` each, in upload order) or one video (frames sampled evenly, at most --max-video-frames).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import requests

from llava.constants import LOGDIR
from llava.conversation import get_conv_template
from llava.serve import protocol
from llava.serve.chat_display import (
    IMAGE_PROCESS_MODES,
    chatbot_messages,
    gallery_visuals,
    get_images,
    prompt_text,
    saved_image_path,
    user_turn,
)
from llava.serve.conv_mode import remote_conversation
from llava.serve.logs import build_logger

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
HEADERS = {"User-Agent": "LLaVA Client"}
BLOCK_CSS = "#buttons button { min-width: min(120px,100%); }"
# Same wording as the original, so users' scripts that look for it keep working.
server_error_msg = "**NETWORK ERROR DUE TO HIGH TRAFFIC. PLEASE REGENERATE OR REFRESH THIS PAGE.**"
moderation_msg = "YOUR INPUT VIOLATES OUR CONTENT MODERATION GUIDELINES. PLEASE TRY AGAIN."


@dataclass
class WebSettings:
    controller_url: str = "http://localhost:21001"
    model_list_mode: str = "once"
    moderate: bool = False
    logdir: str = LOGDIR
    models: list[str] = field(default_factory=list)
    conv_mode: str | None = None  # --conv-mode: one template for every model
    max_video_frames: int = 32  # --max-video-frames: frames of an uploaded video sent to the worker


def offline_gradio_env() -> None:
    """Turn off Gradio/HF telemetry and update checks for this process (main() calls it)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_SSR_MODE", "False")


def get_model_list(controller_url: str, logger=None) -> list[str]:
    """Models the controller knows, after asking it to re-check its workers ([] if unreachable)."""
    try:
        requests.post(controller_url + "/refresh_all_workers", timeout=10)
        r = requests.post(controller_url + "/list_models", timeout=10)
        models = sorted(r.json()["models"])
    except (requests.exceptions.RequestException, ValueError, KeyError) as e:
        if logger:
            logger.error(f"cannot list models at {controller_url}: {e}")
        return []
    if logger:
        logger.info(f"Models: {models}")
    return models


def get_model_templates(controller_url: str, logger=None) -> dict[str, str]:
    """`{model: template}` as the workers report them through the controller ({} if unknown)."""
    try:
        r = requests.post(controller_url + "/list_models", timeout=10)
        templates = r.json().get("conv_templates") or {}
    except (requests.exceptions.RequestException, ValueError, AttributeError) as e:
        if logger:
            logger.error(f"cannot ask {controller_url} for the models' templates: {e}")
        return {}
    return templates if isinstance(templates, dict) else {}


def worker_payload(state, model_name, temperature, top_p, max_new_tokens) -> dict:
    """The /worker_generate_stream request for the conversation so far (stop: `state.stop_str`)."""
    return {
        "model": model_name,
        "prompt": prompt_text(state),
        "temperature": float(temperature),
        "top_p": float(top_p),
        "max_new_tokens": min(int(max_new_tokens), 1536),
        "stop": state.stop_str,
        "images": get_images(state),
    }


def violates_moderation(text: str) -> bool:
    """OpenAI moderation check (only with --moderate; needs OPENAI_API_KEY). Fails open on errors."""
    try:
        import openai

        return bool(openai.OpenAI(timeout=5).moderations.create(input=text).results[0].flagged)
    except Exception:  # noqa: BLE001 - like the original: a failing check does not block the chat
        return False


class WebUI:
    """Event handlers of the page; one instance per server."""

    def __init__(self, settings: WebSettings, logger):
        self.s, self.logger = settings, logger

    def _buttons(self, interactive: bool | None):
        return tuple(
            gr.update() if interactive is None else gr.update(interactive=interactive) for _ in range(5)
        )

    def _log(self, record: dict) -> None:
        t = datetime.datetime.now()
        path = Path(self.s.logdir) / f"{t.year}-{t.month:02d}-{t.day:02d}-conv.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _new_state(self):
        from llava.conversation import default_conversation

        return default_conversation.copy()

    # --- page load ------------------------------------------------------------------------------
    def load_demo(self, request: gr.Request):
        models = (
            self.s.models
            if self.s.model_list_mode == "once"
            else get_model_list(self.s.controller_url, self.logger)
        )
        value = models[0] if models else None
        params = dict(request.query_params) if request is not None else {}
        if params.get("model") in models:
            value = params["model"]
        return self._new_state(), gr.update(choices=models, value=value, visible=True)

    # --- votes ----------------------------------------------------------------------------------
    def vote(self, vote_type: str):
        def handler(state, model_selector):
            self._log(
                {
                    "tstamp": round(time.time(), 4),
                    "type": vote_type,
                    "model": model_selector,
                    "state": state.dict(),
                }
            )
            return ("",) + self._buttons(False)[:3]

        return handler

    # --- chat -----------------------------------------------------------------------------------
    def regenerate(self, state, image_process_mode):
        state.messages[-1][-1] = None
        prev = state.messages[-2]
        if isinstance(prev[1], tuple):
            prev[1] = (*prev[1][:2], image_process_mode)
        state.skip_next = False
        return (state, chatbot_messages(state, self.s.logdir), "", None) + self._buttons(False)

    def clear_history(self):
        state = self._new_state()
        return (state, chatbot_messages(state, self.s.logdir), "", None) + self._buttons(False)

    def add_text(self, state, text, image, image_process_mode):
        state = state if state is not None else self._new_state()
        text = text or ""
        try:
            visuals = gallery_visuals(image, self.s.max_video_frames)
        except ValueError as e:  # a video that does not decode, or a video among other uploads
            gr.Warning(str(e))
            state.skip_next = True
            return (state, chatbot_messages(state, self.s.logdir), text, gr.update()) + self._buttons(None)
        if not text and not visuals:
            state.skip_next = True
            return (state, chatbot_messages(state, self.s.logdir), "", None) + self._buttons(None)
        if self.s.moderate and violates_moderation(text):
            state.skip_next = True
            return (state, chatbot_messages(state, self.s.logdir), moderation_msg, None) + self._buttons(None)
        if visuals:
            state = self._new_state()  # one upload per conversation, as the original
        state.append_message(state.roles[0], user_turn(text, visuals, image_process_mode))
        state.append_message(state.roles[1], None)
        state.skip_next = False
        return (state, chatbot_messages(state, self.s.logdir), "", None) + self._buttons(False)

    def http_bot(self, state, model_name, temperature, top_p, max_new_tokens):
        start = time.time()
        if state is None or state.skip_next:
            yield (state, chatbot_messages(state, self.s.logdir)) + self._buttons(None)
            return
        if len(state.messages) == state.offset + 2:  # first round: switch to the model's template
            try:
                templates = get_model_templates(self.s.controller_url, self.logger)
                warn = self.logger.warning
                new_state = remote_conversation(model_name or "", self.s.conv_mode, templates, warn)
            except ValueError as e:
                state.messages[-1][-1] = f"Cannot chat with {model_name!r}: {e}"
                yield (state, chatbot_messages(state, self.s.logdir)) + self._buttons_error()
                return
            new_state.append_message(new_state.roles[0], state.messages[-2][1])
            new_state.append_message(new_state.roles[1], None)
            state = new_state

        try:
            ret = requests.post(
                self.s.controller_url + "/get_worker_address", json={"model": model_name}, timeout=10
            )
            worker_addr = ret.json()["address"]
        except (requests.exceptions.RequestException, ValueError, KeyError):
            worker_addr = ""
        self.logger.info(f"model_name: {model_name}, worker_addr: {worker_addr}")
        if not worker_addr:
            state.messages[-1][-1] = server_error_msg
            yield (state, chatbot_messages(state, self.s.logdir)) + self._buttons_error()
            return

        pload = worker_payload(state, model_name, temperature, top_p, max_new_tokens)
        prompt = pload["prompt"]
        image_paths = [
            saved_image_path(im, self.s.logdir)
            for im in get_images(state, return_pil=True)
            if not isinstance(im, list)  # (a video's frames are not saved)
        ]
        state.messages[-1][-1] = ""
        yield (state, chatbot_messages(state, self.s.logdir)) + self._buttons(False)
        output = ""
        try:
            response = requests.post(
                worker_addr + "/worker_generate_stream", headers=HEADERS, json=pload, stream=True, timeout=10
            )
            for data in protocol.iter_chunks(response.iter_content(chunk_size=None)):
                if data["error_code"] != protocol.OK:
                    state.messages[-1][-1] = f"{data['text']} (error_code: {data['error_code']})"
                    yield (state, chatbot_messages(state, self.s.logdir)) + self._buttons_error()
                    return
                output = data["text"][len(prompt) :].strip()
                state.messages[-1][-1] = output
                yield (state, chatbot_messages(state, self.s.logdir)) + self._buttons(False)
        except (requests.exceptions.RequestException, ValueError) as e:
            self.logger.error(f"worker stream failed: {e}")
            state.messages[-1][-1] = server_error_msg
            yield (state, chatbot_messages(state, self.s.logdir)) + self._buttons_error()
            return
        yield (state, chatbot_messages(state, self.s.logdir)) + self._buttons(True)
        self.logger.info(f"{output}")
        self._log(
            {
                "tstamp": round(time.time(), 4),
                "type": "chat",
                "model": model_name,
                "start": round(start, 4),
                "finish": round(time.time(), 4),
                "state": state.dict(),
                "images": image_paths,
            }
        )

    def _buttons_error(self):
        return (gr.update(interactive=False),) * 3 + (gr.update(interactive=True),) * 2


def build_demo(settings: WebSettings, logger=None):
    """The Gradio Blocks page (not launched)."""
    logger = logger or build_logger("gradio_web_server", "gradio_web_server.log")
    ui = WebUI(settings, logger)
    models = settings.models
    with gr.Blocks(title="LLaVA", analytics_enabled=False) as demo:
        state = gr.State()
        with gr.Row():
            with gr.Column(scale=3):
                model_selector = gr.Dropdown(
                    choices=models,
                    value=models[0] if models else None,
                    interactive=True,
                    show_label=False,
                    container=False,
                    elem_id="model_selector",
                )
                imagebox = gr.Gallery(
                    type="pil",
                    file_types=["image", "video"],
                    interactive=True,
                    label="Images or a video",
                    columns=3,
                    height=260,
                    elem_id="imagebox",
                )
                image_process_mode = gr.Radio(
                    list(IMAGE_PROCESS_MODES),
                    value="Default",
                    label="Preprocess for non-square image",
                    visible=True,
                )
                textbox = gr.Textbox(
                    show_label=False,
                    placeholder="Enter text and press ENTER",
                    container=False,
                    render=False,
                    elem_id="textbox",
                )
                gr.Examples(
                    examples=[
                        [[str(EXAMPLES_DIR / "extreme_ironing.jpg")], "What is unusual about this image?"],
                        [
                            [str(EXAMPLES_DIR / "waterview.jpg")],
                            "What are the things I should be cautious about when I visit here?",
                        ],
                    ],
                    inputs=[imagebox, textbox],
                )
                with gr.Accordion("Parameters", open=False, elem_id="parameters"):
                    temperature = gr.Slider(
                        0.0, 1.0, value=0.2, step=0.1, interactive=True, label="Temperature"
                    )
                    top_p = gr.Slider(0.0, 1.0, value=0.7, step=0.1, interactive=True, label="Top P")
                    max_output_tokens = gr.Slider(
                        0,
                        1024,
                        value=512,
                        step=64,
                        interactive=True,
                        label="Max output tokens",
                        elem_id="max_tokens",
                    )
            with gr.Column(scale=8):
                chatbot = gr.Chatbot(elem_id="chatbot", label="LLaVA Chatbot", height=550)
                with gr.Row():
                    with gr.Column(scale=8):
                        textbox.render()
                    with gr.Column(scale=1, min_width=50):
                        submit_btn = gr.Button(value="Send", variant="primary", elem_id="send")
                with gr.Row(elem_id="buttons"):
                    upvote_btn = gr.Button(value="👍  Upvote", interactive=False)
                    downvote_btn = gr.Button(value="👎  Downvote", interactive=False)
                    flag_btn = gr.Button(value="⚠️  Flag", interactive=False)
                    regenerate_btn = gr.Button(
                        value="🔄  Regenerate", interactive=False, elem_id="regenerate"
                    )
                    clear_btn = gr.Button(value="🗑️  Clear", interactive=False, elem_id="clear")

        btn_list = [upvote_btn, downvote_btn, flag_btn, regenerate_btn, clear_btn]
        vote_outputs = [textbox, upvote_btn, downvote_btn, flag_btn]
        for btn, kind in ((upvote_btn, "upvote"), (downvote_btn, "downvote"), (flag_btn, "flag")):
            btn.click(ui.vote(kind), [state, model_selector], vote_outputs, queue=False)
        bot_args = dict(
            fn=ui.http_bot,
            inputs=[state, model_selector, temperature, top_p, max_output_tokens],
            outputs=[state, chatbot] + btn_list,
        )
        regenerate_btn.click(
            ui.regenerate,
            [state, image_process_mode],
            [state, chatbot, textbox, imagebox] + btn_list,
            queue=False,
        ).then(**bot_args)
        clear_btn.click(ui.clear_history, None, [state, chatbot, textbox, imagebox] + btn_list, queue=False)
        add_args = dict(
            fn=ui.add_text,
            inputs=[state, textbox, imagebox, image_process_mode],
            outputs=[state, chatbot, textbox, imagebox] + btn_list,
            queue=False,
        )
        textbox.submit(**add_args).then(**bot_args)
        submit_btn.click(**add_args).then(**bot_args)
        if settings.model_list_mode not in ("once", "reload"):
            raise ValueError(f"unknown --model-list-mode {settings.model_list_mode!r}; valid: once, reload")
        demo.load(ui.load_demo, None, [state, model_selector], queue=False)
    return demo


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="LLaVA Gradio web server")
    p.add_argument("--host", type=str, default="0.0.0.0")
    p.add_argument("--port", type=int)
    p.add_argument("--controller-url", type=str, default="http://localhost:21001")
    p.add_argument("--concurrency-count", type=int, default=16)
    p.add_argument("--model-list-mode", type=str, default="once", choices=["once", "reload"])
    p.add_argument("--share", action="store_true", help="public gradio.live link (contacts Gradio's servers)")
    p.add_argument(
        "--moderate", action="store_true", help="check input with OpenAI moderation (needs OPENAI_API_KEY)"
    )
    p.add_argument(
        "--conv-mode",
        type=str,
        default=None,
        help="template for all models (default: the one each model's worker serves)",
    )
    p.add_argument(
        "--max-video-frames", type=int, default=32, help="frames of an uploaded video sent on, sampled evenly"
    )
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.conv_mode:
        get_conv_template(args.conv_mode)  # fail at start, with the valid names, not at the first chat
    offline_gradio_env()
    logger = build_logger("gradio_web_server", "gradio_web_server.log")
    logger.info(f"args: {args}")
    logdir = os.environ.get("LLAVA_LOGDIR", LOGDIR)
    settings = WebSettings(
        controller_url=args.controller_url.rstrip("/"),
        model_list_mode=args.model_list_mode,
        moderate=args.moderate,
        logdir=logdir,
        models=get_model_list(args.controller_url.rstrip("/"), logger),
        conv_mode=args.conv_mode,
        max_video_frames=args.max_video_frames,
    )
    demo = build_demo(settings, logger)
    demo.queue(default_concurrency_limit=args.concurrency_count, api_open=False).launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        ssr_mode=False,
        theme=gr.themes.Default(),
        css=BLOCK_CSS,
        allowed_paths=[str(Path(logdir) / "serve_images"), str(EXAMPLES_DIR)],
        footer_links=[],
    )


if __name__ == "__main__":
    main()
