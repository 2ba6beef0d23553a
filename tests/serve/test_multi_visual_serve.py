"""Several images and videos through the model worker's runner, the worker protocol, the CLI and the API.

The worker takes `images` entries that are a base64 image or a list of base64 frames (a video),
checks counts, frames and pixels before any work, samples a video's frames to the model's
`frames_upbound`, counts each visual's tokens exactly (the context check agrees with the rows the
model splices in) and passes `modalities` to generate.
"""

from __future__ import annotations

import ast
import base64
import io

import pytest
import requests
import torch
from PIL import Image

from llava.conversation import get_conv_template
from llava.images.inputs import prepare_visual_list
from llava.serve import protocol
from llava.serve.images import encode_image_base64
from llava.serve.inference import ModelRunner, RequestError
from llava.serve.request_visuals import VisualLimits
from tests.serve.stack import MODEL_A, WATERVIEW


def picture(w, h, colour):
    img = Image.new("RGB", (w, h), colour)
    img.paste((255, 255, 255), (0, 0, w // 2, h // 3))
    return img


IMAGES = [picture(48, 20, (200, 30, 30)), picture(20, 44, (30, 200, 30))]
FRAMES = [picture(40, 24, (25 * k, 90, 250 - 25 * k)) for k in range(10)]


def b64(img) -> str:
    return encode_image_base64(img)


def prompt_for(markers: int, question="What differs?") -> str:
    conv = get_conv_template("llava_v1")
    conv.append_message(conv.roles[0], "<image>\n" * markers + question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


@pytest.fixture(scope="module")
def loaded(tiny_llava):
    from llava.model.builder import load_pretrained_model

    return load_pretrained_model(str(tiny_llava), None, device="cpu")


@pytest.fixture
def runner(loaded):
    tok, model, proc, ctx = loaded
    return ModelRunner(tok, model, proc, ctx, MODEL_A, conv_template="llava_v1")


def request(prompt, images, **kw):
    return {"prompt": prompt, "images": images, "temperature": 0, "max_new_tokens": 6, **kw}


def answer(runner, prepared) -> str:
    final = list(runner.stream(prepared))[-1]
    assert final["error_code"] == 0, final
    return final["text"][len(prepared.prompt) :].strip()


def direct_answer(runner, prepared, visuals, max_new_tokens=6) -> str:
    """Plain greedy model.generate on the same ids and visuals (llava.images.inputs' pixels)."""
    model, tok = runner.model, runner.tokenizer
    pixels, sizes, modalities = prepare_visual_list(visuals, runner.image_processor, model.config)
    extra = {"modalities": modalities} if "video" in modalities else {}
    with torch.inference_mode():
        out = model.generate(prepared.input_ids, images=pixels, image_sizes=sizes, do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=tok.eos_token_id, **extra)  # fmt: skip
    return tok.decode(out[0], skip_special_tokens=False).split("</s>")[0].strip()


def spliced_length(runner, prepared) -> int:
    """Rows the model actually feeds the LLM for the prepared request."""
    model, args = runner.model, prepared.image_args
    with torch.inference_mode():
        out = model.prepare_inputs_labels_for_multimodal(
            prepared.input_ids, None, None, None, None, args["images"], args["image_sizes"],
            modalities=args.get("modalities"),
        )  # fmt: skip
    return out[4].shape[1]


# ----------------------------------------------------------------------------------- the runner in-process
def test_two_images_are_padded_each_counted_and_answered(runner):
    prepared = runner.prepare(request(prompt_for(2), [b64(im) for im in IMAGES]))
    args = prepared.image_args
    assert args["images"].shape == (2, 3, 32, 32) and args["image_sizes"] == [(48, 20), (20, 44)]
    assert "modalities" not in args  # images only: as LLaVA-1.5 calls generate
    assert prepared.prompt_tokens == spliced_length(runner, prepared)
    assert prepared.prompt_tokens == prepared.input_ids.shape[1] - 2 + 2 * 16
    assert answer(runner, prepared) == direct_answer(runner, prepared, IMAGES)


def test_a_video_of_frames_is_sampled_to_frames_upbound(runner, monkeypatch):
    monkeypatch.setattr(runner.model.config, "frames_upbound", 4, raising=False)
    entries = [b64(f) for f in FRAMES]
    entries[1] = "@@@ never decoded: frame 2 is not one of the kept frames @@@"
    prepared = runner.prepare(request(prompt_for(1, "Which way?"), [entries]))
    args = prepared.image_args
    assert args["modalities"] == ["video"] and args["image_sizes"] == [(40, 24)]
    assert [tuple(p.shape) for p in args["images"]] == [(4, 3, 32, 32)]  # frames 0, 3, 6, 9
    assert (
        prepared.prompt_tokens == spliced_length(runner, prepared) == prepared.input_ids.shape[1] - 1 + 4 * 4
    )
    kept = [FRAMES[k] for k in (0, 3, 6, 9)]
    assert answer(runner, prepared) == direct_answer(runner, prepared, [kept])


def test_images_and_a_video_in_one_request_keep_their_order(runner):
    prepared = runner.prepare(
        request(prompt_for(3), [b64(IMAGES[0]), [b64(f) for f in FRAMES[:3]], b64(IMAGES[1])])
    )
    args = prepared.image_args
    assert args["modalities"] == ["image", "video", "image"]
    assert [tuple(p.shape) for p in args["images"]] == [(3, 32, 32), (3, 3, 32, 32), (3, 32, 32)]
    assert prepared.prompt_tokens == spliced_length(runner, prepared)
    assert answer(runner, prepared) == direct_answer(runner, prepared, [IMAGES[0], FRAMES[:3], IMAGES[1]])


BAD = {
    "video frames vs markers": (
        prompt_for(1),
        [b64(IMAGES[0]), [b64(FRAMES[0])]],
        "1 <image> token(s) but 2 image(s)",
    ),
    "too many visuals": (prompt_for(17), [b64(IMAGES[0])] * 17, "17 images/videos sent; at most 16"),
    "too many frames": (prompt_for(1), [[b64(FRAMES[0])] * 9], "video of 9 frames; at most 8 per video"),
    "empty video": (prompt_for(1), [[]], "a video without frames"),
    "not an image entry": (prompt_for(1), [{"url": "x"}], "must be a base64 string (an image) or a list"),
    "bad frame": (
        prompt_for(1),
        [[b64(FRAMES[0]), "%%%", b64(FRAMES[1])]],
        "video frame 2 of 3) is not valid base64",
    ),
    "request pixels": (prompt_for(2), [b64(IMAGES[0])] * 2, "1920 pixels together, over the limit of 1500"),
    "frame over pixel limit": (
        prompt_for(1),
        [[b64(Image.new("L", (1100, 1000)))]],
        "1100x1000 = 1100000 pixels",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_visuals_are_refused_before_any_work(loaded, case, monkeypatch):
    tok, model, proc, ctx = loaded
    limits = VisualLimits(max_frames=8, max_image_pixels=1_000_000, max_request_pixels=1500)
    r = ModelRunner(tok, model, proc, ctx, MODEL_A, limits=limits)
    monkeypatch.setattr(r, "pixel_args", lambda visuals: pytest.fail("pixels computed for a bad request"))
    prompt, images, message = BAD[case]
    with pytest.raises(RequestError) as e:
        r.prepare(request(prompt, images))
    assert message in str(e.value)


def test_a_video_over_the_context_is_refused_with_its_token_count(loaded, monkeypatch):
    tok, model, proc, _ = loaded
    monkeypatch.setattr(model.config, "frames_upbound", 32, raising=False)
    r = ModelRunner(tok, model, proc, 120, MODEL_A)
    monkeypatch.setattr(
        r, "pixel_args", lambda visuals: pytest.fail("pixels computed for a too-long request")
    )
    with pytest.raises(
        RequestError, match=r"\+ 128 for 1 image\(s\)/video\(s\)\) but the model's context is 120"
    ):
        r.prepare(request(prompt_for(1), [[b64(FRAMES[0])] * 32]))


# ----------------------------------------------------------------------------------- the CLI's loop
def test_cli_puts_one_marker_per_image_in_the_first_turn(runner):
    from llava.serve.cli import chat

    out = io.StringIO()
    conv = get_conv_template("llava_v1")
    conv = chat(
        runner,
        conv,
        list(IMAGES),
        0.0,
        4,
        debug=True,
        stdin=io.StringIO("Compare them.\nAnd now?\n"),
        stdout=out,
    )
    first, second = conv.messages[0][1], conv.messages[2][1]
    assert first == "<image>\n<image>\nCompare them." and second == "And now?"
    assert "[error]" not in out.getvalue() and conv.messages[1][1] is not None


def test_cli_flags(tmp_path, capsys):
    from llava.serve.cli import build_parser, main

    args = build_parser().parse_args(["--image-file", "a.jpg", "--image-file", "b.jpg"])
    assert args.image_file == ["a.jpg", "b.jpg"] and args.video_file is None
    for argv in ([], ["--image-file", "a.jpg", "--video-file", "v.mp4"]):
        with pytest.raises(SystemExit):
            main(["--model-path", str(tmp_path), *argv])
        assert "give --image-file (one or more times) or --video-file" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--video-file .*nope.mp4"):
        main(["--model-path", str(tmp_path), "--video-file", str(tmp_path / "nope.mp4")])


def test_cli_main_chats_about_a_video(tiny_llava, clip, monkeypatch, capsys):
    from llava.serve.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("Which way does it go?\n"))
    main(["--model-path", str(tiny_llava), "--video-file", str(clip), "--device", "cpu", "--temperature", "0",
          "--max-new-tokens", "3", "--debug"])  # fmt: skip
    out = capsys.readouterr().out
    (record,) = [ast.literal_eval(line) for line in out.splitlines() if line.startswith("{'prompt'")]
    assert "[error]" not in out and record["prompt"].endswith(
        "USER: <image>\nWhich way does it go? ASSISTANT:"
    )


# ----------------------------------------------------------------------------------- real processes
@pytest.mark.slow
def test_worker_protocol_through_the_controller(stack, runner):
    frames = [b64(f) for f in FRAMES[:5]]
    for prompt, images in ((prompt_for(2), [b64(im) for im in IMAGES]), (prompt_for(1), [frames])):
        body = {"model": MODEL_A, **request(prompt, images), "stop": "</s>"}
        with requests.post(
            stack.controller.url + "/worker_generate_stream", json=body, stream=True, timeout=60
        ) as r:
            chunks = list(protocol.iter_chunks(r.iter_content(chunk_size=None)))
        assert r.status_code == 200 and chunks[-1]["error_code"] == 0, chunks[-1]
        expected = runner.prepare(body)
        assert chunks[-1]["usage"]["prompt_tokens"] == expected.prompt_tokens
        assert chunks[-1]["text"][len(prompt) :].strip() == answer(runner, expected)


@pytest.mark.slow
def test_openai_api_with_two_images_and_a_video(stack, tmp_path):
    from llava.images.video import write_video
    from tests.serve.stack import API_KEY

    video = write_video([f.resize((32, 24)) for f in FRAMES[:4]], tmp_path / "clip.mp4", fps=1)
    image_url = "data:image/jpeg;base64," + base64.b64encode(WATERVIEW.read_bytes()).decode()
    video_url = "data:video/mp4;base64," + base64.b64encode(video.read_bytes()).decode()
    content = [
        {"type": "image_url", "image_url": {"url": image_url}},
        {"type": "image_url", "image_url": {"url": image_url}},
        {"type": "text", "text": "Which is the odd one?"},
        {"type": "video_url", "video_url": {"url": video_url}},
    ]
    body = {
        "model": MODEL_A,
        "max_tokens": 4,
        "temperature": 0,
        "messages": [{"role": "user", "content": content}],
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    r = requests.post(stack.api.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] > 3 * 16
    content[3] = {"type": "video_url", "video_url": {"url": str(video)}}  # local files: not on this server
    r = requests.post(stack.api.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 400 and "local video paths are disabled" in r.json()["error"]["message"]


# ----------------------------------------------------------------------------------- OpenAI messages
def _png_url(img) -> str:
    return "data:image/png;base64," + b64(img)


@pytest.fixture
def clip(tmp_path):
    from llava.images.video import write_video

    folder = tmp_path / "videos"
    return write_video([f.resize((32, 24)) for f in FRAMES[:6]], folder / "clip.mp4", fps=1)


def _ask(content, **policy):
    from llava.serve.openai_messages import ChatCompletionRequest, build_prompt
    from llava.serve.video_inputs import VideoPolicy

    req = ChatCompletionRequest.model_validate(
        {"model": MODEL_A, "messages": [{"role": "user", "content": content}]}
    )
    return build_prompt(req, get_conv_template("llava_v1"), video=VideoPolicy(**policy))


def test_openai_parts_become_visuals_in_order(clip):
    from llava.serve.images import load_image_from_base64

    video_url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    content = [
        {"type": "image_url", "image_url": {"url": _png_url(IMAGES[0])}},
        {"type": "text", "text": "Compare"},
        {"type": "video_url", "video_url": {"url": video_url}},
        {"type": "video", "video": [_png_url(f) for f in FRAMES[:5]]},
        {"type": "image_url", "image_url": _png_url(IMAGES[1])},
    ]
    prompt, images = _ask(content, max_frames=3)
    assert "USER: <image>\nCompare\n<image>\n<image>\n<image> ASSISTANT:" in prompt
    assert [type(x).__name__ for x in images] == ["str", "list", "list", "str"]
    assert len(images[1]) == 3 and load_image_from_base64(images[1][0]).size == (32, 24)  # frames 0, 2, 5
    sent = [load_image_from_base64(f) for f in images[2]]  # frames 0, 2, 4 of the five, exactly
    assert [im.tobytes() for im in sent] == [FRAMES[k].tobytes() for k in (0, 2, 4)]


def test_openai_video_sources_and_their_safety_rules(clip, tmp_path):
    from llava.serve.openai_api_server import build_parser
    from llava.serve.openai_messages import APIError

    def part(url):
        return [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "Which way?"}]

    with pytest.raises(APIError, match="local video paths are disabled"):
        _ask(part(str(clip)))
    root = str(clip.parent)
    assert len(_ask(part("clip.mp4"), video_dir=root)[1][0]) == 6
    assert len(_ask(part(f"file://{clip}"), video_dir=root, max_frames=2)[1][0]) == 2
    (tmp_path / "secret.mp4").write_bytes(clip.read_bytes())
    (clip.parent / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    for escape in ("../secret.mp4", str(tmp_path / "secret.mp4"), "link.mp4"):
        with pytest.raises(APIError, match="outside the server's --video-dir"):
            _ask(part(escape), video_dir=root)
    bad = {
        "https://example.com/v.mp4": "not fetched",
        _png_url(IMAGES[0]): "expected video/\\*",
        "data:video/mp4;base64," + base64.b64encode(b"no video here").decode(): "llava-video-",
    }
    for url, match in bad.items():
        with pytest.raises(APIError, match=match) as e:
            _ask(part(url), video_dir=root)
        assert e.value.status == 400
    with pytest.raises(APIError, match="non-empty list of frame image URLs"):
        _ask([{"type": "video", "video": []}])
    args = build_parser().parse_args(["--video-dir", root, "--max-video-frames", "8"])
    assert args.video_dir == root and args.max_video_frames == 8


# ----------------------------------------------------------------------------------- web UI turns
def test_web_ui_turns_with_several_images_or_a_video(clip, tmp_path):
    """The page's upload box -> the user turn -> the worker request (chat_display; the page itself
    is driven in headless Chromium by test_serve_web_ui.py)."""
    from llava.serve.chat_display import (
        VideoClip,
        chatbot_messages,
        gallery_visuals,
        get_images,
        prompt_text,
        user_turn,
    )

    def state_for(text, gallery, mode="Default"):
        conv = get_conv_template("llava_v1")
        conv.append_message(
            conv.roles[0], user_turn(text, gallery_visuals(gallery, max_video_frames=4), mode)
        )
        conv.append_message(conv.roles[1], None)
        return conv

    state = state_for("What differs?", [(im, None) for im in IMAGES])
    assert "USER: <image>\n<image>\nWhat differs? ASSISTANT:" in prompt_text(state)
    images = get_images(state)
    assert len(images) == 2 and all(isinstance(x, str) for x in images)

    state = state_for("Which way?", [(str(clip), None)])
    assert "USER: <image>\nWhich way? ASSISTANT:" in prompt_text(state)
    (video,) = get_images(state)
    assert isinstance(video, list) and len(video) == 4  # 6 frames sampled evenly to --max-video-frames
    shown = chatbot_messages(state, str(tmp_path))
    assert (
        shown[0] == {"role": "user", "content": {"path": str(clip)}} and shown[1]["content"] == "Which way?"
    )
    assert isinstance(get_images(state, return_pil=True)[0][0], Image.Image)

    state = state_for("One?", [(IMAGES[0], None)], "Pad")  # one image: the original's turn
    assert state.messages[0][1][0] == "One?\n<image>" and state.messages[0][1][1] is IMAGES[0]
    assert prompt_text(state) == state.get_prompt() and "USER: <image>\nOne? ASSISTANT:" in prompt_text(state)
    assert user_turn("Hi", [], "Default") == "Hi"
    with pytest.raises(ValueError, match="several images, or one video on its own"):
        gallery_visuals([(IMAGES[0], None), (str(clip), None)])
    assert isinstance(gallery_visuals([(str(clip), None)])[0], VideoClip)
