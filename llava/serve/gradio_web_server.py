"""The Gradio chat page: pick a model, upload images or a video, chat with streamed answers.

    python -m llava.serve.gradio_web_server --controller-url http://localhost:10000 --model-list-mode reload

Flags as the original (--host --port --controller-url --concurrency-count --model-list-mode
once|reload --share --moderate), plus --conv-mode. Talks to the controller and workers with the
original protocol. Each conversation is rendered in the template the chosen model's worker serves
(it reports it; the controller's /list_models passes it on) unless --conv-mode names one for all.
Gradio analytics and update checks are off and the page loads no outside resources.
The upload box takes one image (processed as the model's image_aspect_ratio says), several images
(one `<image>` each, in upload order) or one video (frames sampled evenly, at most --max-video-frames);
a file that is no image (or over --max-image-pixels) is refused at upload with the reason shown.
Binds 127.0.0.1 unless --host says otherwise; calls to the controller and the workers carry the
stack's shared secret (--secret / $LLAVA_SERVE_SECRET); failures are shown by their cause
(llava.serve.web_upstream). The chatbot's own clear icon starts a new conversation, as Clear does.
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

from llava.constants import LOGDIR
from llava.conversation import get_conv_template
from llava.serve import protocol, trust
from llava.serve.chat_display import (
    IMAGE_PROCESS_MODES,
    chatbot_messages,
    check_gallery,
    gallery_visuals,
    get_images,
    saved_image_path,
    user_turn,
    worker_payload,
)
from llava.serve.conv_mode import remote_conversation
from llava.serve.images import DEFAULT_MAX_IMAGE_PIXELS
from llava.serve.logs import build_logger
from llava.serve.web_upstream import ControllerLink, UpstreamError, violates_moderation

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# Gradio 6 gives every image or video message in a chatbot a "Share" button (to Hugging Face Spaces
# discussions, failing elsewhere: "Must be on Spaces to share") whatever `buttons` says; it is the
# button right after the message's download link, whatever the page's language.
BLOCK_CSS = (
    "#buttons button { min-width: min(120px,100%); }\n"
    "#chatbot a.download-link + button { display: none !important; }"
)
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
    secret: str | None = None  # the stack's shared secret, sent to the controller and the workers
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS  # --max-image-pixels: larger uploads are refused

    def link(self, logger=None) -> ControllerLink:
        return ControllerLink(self.controller_url, self.secret, logger)


def offline_gradio_env() -> None:
    """Turn off Gradio/HF telemetry and update checks for this process (main() calls it)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_SSR_MODE", "False")


class WebUI:
    """Event handlers of the page; one instance per server."""

    def __init__(self, settings: WebSettings, logger):
        self.s, self.logger = settings, logger
        self.link = settings.link(logger)

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
        models = self.s.models if self.s.model_list_mode == "once" else self.link.models()
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

    def check_upload(self, gallery):
        """On upload: keep the files that are usable, and say why each other one is refused."""
        kept, problems = check_gallery(gallery, self.s.max_image_pixels)
        for problem in problems:
            gr.Warning(problem)
        return kept if problems else gr.update()

    def add_text(self, state, text, image, image_process_mode):
        state = state if state is not None else self._new_state()
        text = text or ""
        try:
            visuals = gallery_visuals(image, self.s.max_video_frames, self.s.max_image_pixels)
        except ValueError as e:  # a file that is no image, a broken video, a video among other uploads
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
                templates = self.link.templates()
                warn = self.logger.warning
                new_state = remote_conversation(model_name or "", self.s.conv_mode, templates, warn)
            except ValueError as e:
                yield self._failed(state, f"Cannot chat with {model_name!r}: {e}")
                return
            new_state.append_message(new_state.roles[0], state.messages[-2][1])
            new_state.append_message(new_state.roles[1], None)
            state = new_state

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
            for data in self.link.answer(model_name, pload):
                if data["error_code"] != protocol.OK:
                    yield self._failed(state, f"{data['text']} (error_code: {data['error_code']})")
                    return
                output = data["text"][len(prompt) :].strip()
                state.messages[-1][-1] = output
                yield (state, chatbot_messages(state, self.s.logdir)) + self._buttons(False)
        except UpstreamError as e:
            self.logger.error(f"model {model_name}: {e}")
            yield self._failed(state, str(e))
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

    def _failed(self, state, message: str) -> tuple:
        """The outputs of a turn that failed: `message` shown as the answer, Regenerate and Clear on."""
        state.messages[-1][-1] = message
        return (state, chatbot_messages(state, self.s.logdir)) + self._buttons_error()


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
                    type="filepath",  # opened by chat_display, so a file that is no image gets a reason
                    file_types=["image", "video"],
                    interactive=True,
                    label="Images or a video",
                    columns=3,
                    height=260,
                    elem_id="imagebox",
                    buttons=["download", "fullscreen"],  # no "share": it works only on HF Spaces
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
                chatbot = gr.Chatbot(
                    elem_id="chatbot", label="LLaVA Chatbot", height=550, buttons=["copy", "copy_all"]
                )
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
        clear_outputs = [state, chatbot, textbox, imagebox] + btn_list
        clear_btn.click(ui.clear_history, None, clear_outputs, queue=False)
        chatbot.clear(ui.clear_history, None, clear_outputs, queue=False)  # the chatbot's own trash icon
        imagebox.upload(ui.check_upload, [imagebox], [imagebox])  # (queued: gr.Warning needs the queue)
        add_args = dict(
            fn=ui.add_text,
            inputs=[state, textbox, imagebox, image_process_mode],
            outputs=[state, chatbot, textbox, imagebox] + btn_list,
        )  # queued, so that its gr.Warning (a refused upload) is shown
        textbox.submit(**add_args).then(**bot_args)
        submit_btn.click(**add_args).then(**bot_args)
        if settings.model_list_mode not in ("once", "reload"):
            raise ValueError(f"unknown --model-list-mode {settings.model_list_mode!r}; valid: once, reload")
        demo.load(ui.load_demo, None, [state, model_selector], queue=False)
    return demo


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="LLaVA Gradio web server")
    trust.add_host_flag(p)
    p.add_argument("--port", type=int)
    p.add_argument("--controller-url", type=str, default="http://localhost:21001")
    trust.add_secret_flag(p)
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
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="refuse uploaded images with more pixels (from their headers)",
    )
    return p


def settings_from_args(args, logger) -> WebSettings:
    """The page's settings from its flags (the model list asked of the controller once, here)."""
    settings = WebSettings(
        controller_url=args.controller_url.rstrip("/"),
        model_list_mode=args.model_list_mode,
        moderate=args.moderate,
        logdir=os.environ.get("LLAVA_LOGDIR", LOGDIR),
        conv_mode=args.conv_mode,
        max_video_frames=args.max_video_frames,
        secret=trust.resolve_secret(args.secret),
        max_image_pixels=args.max_image_pixels,
    )
    settings.models = settings.link(logger).models()
    return settings


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.conv_mode:
        get_conv_template(args.conv_mode)  # fail at start, with the valid names, not at the first chat
    offline_gradio_env()
    logger = build_logger("gradio_web_server", "gradio_web_server.log")
    logger.info(f"args: {dict(vars(args), secret='***' if args.secret else None)}")
    try:
        settings = settings_from_args(args, logger)
    except ValueError as e:  # a too-short secret
        parser.error(str(e))
    warning = trust.exposure_warning(args.host, settings.secret, "the web server")
    if warning:
        logger.warning(warning)
    demo = build_demo(settings, logger)
    demo.queue(default_concurrency_limit=args.concurrency_count, api_open=False).launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        ssr_mode=False,
        theme=gr.themes.Default(),
        css=BLOCK_CSS,
        allowed_paths=[str(Path(settings.logdir) / "serve_images"), str(EXAMPLES_DIR)],
        footer_links=[],
    )


if __name__ == "__main__":
    main()
