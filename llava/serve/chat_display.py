"""How the web demo shows and sends a conversation's images and videos (moved here from `Conversation`).

A serving conversation's first user turn may be a `(text, visuals, image_process_mode)` tuple (the
web demo's upload): `visuals` is one PIL image (the original's shape), or a list of PIL images
and/or `VideoClip`s; with a list, `text` already holds one `<image>` per visual. These helpers pad
or resize images as the original demo did, return the visuals of a conversation for a worker
request (base64; a video as a list of base64 frames) or for display (PIL), render the prompt
(`prompt_text`) and the worker request (`worker_payload`), open and check the upload box's files
(`gallery_visuals`, `check_gallery`), save uploads under the log folder, and render the conversation for a Gradio
chatbot (`chatbot_messages` for Gradio 6, `to_gradio_chatbot` in the original's pairs format).
The template (`llava.conversation`) only renders text.

    images_b64 = get_images(conv)                  # what /worker_generate_stream takes
    pil_images = get_images(conv, return_pil=True)
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import mimetypes
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.serve.images import DEFAULT_MAX_IMAGE_PIXELS
from llava.utils.atomic import atomic_path

IMAGE_PROCESS_MODES = ("Crop", "Resize", "Pad", "Default")


@dataclass
class VideoClip:
    """An uploaded video: its file (shown in the chat) and its sampled frames (sent to the worker)."""

    path: str
    frames: list = field(repr=False)


def turn_visuals(msg) -> list:
    """The visuals of a `(text, visuals, mode)` user turn, as a list."""
    visuals = msg[1]
    return list(visuals) if isinstance(visuals, list) else [visuals]


def _is_video(path: str) -> bool:
    return (mimetypes.guess_type(path)[0] or "").startswith("video/")


def _read_upload(path: str) -> tuple[bytes, str]:
    """(the bytes of an uploaded file, its name in messages); ImageInputError when it cannot be read."""
    from llava.serve.images import ImageInputError

    name = f"The upload {Path(path).name}"
    try:
        return Path(path).read_bytes(), name
    except OSError as e:
        raise ImageInputError(f"{name} cannot be read ({e.strerror})") from None


def _open_upload(path: str, max_pixels: int | None):
    """An uploaded image file as an RGB PIL image; ImageInputError naming the file when it is none."""
    from llava.serve.images import decode_image_bytes

    return decode_image_bytes(*_read_upload(path), max_pixels)


def _media(item):
    """The file path or PIL image of a Gradio Gallery item (`(media, caption)` or the media itself)."""
    return item[0] if isinstance(item, (tuple, list)) else item


def check_gallery(gallery, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[list, list[str]]:
    """(the items of the upload box that are usable, a reason per refused one): an image file that
    does not open (or is over `max_pixels`) is refused from its header; videos are checked at Send."""
    from llava.serve.images import ImageInputError, open_image_header

    kept, problems = [], []
    for item in gallery or []:
        media = _media(item)
        if isinstance(media, str) and not _is_video(media):
            try:
                open_image_header(*_read_upload(media), max_pixels)
            except ImageInputError as e:
                problems.append(f"{e}; it was removed: upload an image or a video")
                continue
        kept.append(item)
    return kept, problems


def gallery_visuals(
    gallery, max_video_frames: int = 32, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> list:
    """The web page's upload box (Gradio Gallery items: file paths, or PIL images in-process) as
    visuals: RGB PIL images, or one `VideoClip` with its frames sampled evenly (at most
    `max_video_frames`). A file that is no image, or no video, is a ValueError naming it."""
    from types import SimpleNamespace

    from llava.images.inputs import load_video

    if gallery is None:
        return []
    if not isinstance(gallery, list):  # one image (the original's upload box)
        return [gallery]
    visuals = []
    for item in gallery:
        media = _media(item)
        if isinstance(media, str) and _is_video(media):
            frames = load_video(media, SimpleNamespace(frames_upbound=max_video_frames))
            visuals.append(VideoClip(media, frames))
        elif isinstance(media, str):
            visuals.append(_open_upload(media, max_pixels))
        else:
            visuals.append(media)
    videos = sum(isinstance(v, VideoClip) for v in visuals)
    if videos and len(visuals) > 1:
        raise ValueError("upload several images, or one video on its own")
    return visuals


def user_turn(text: str, visuals: list, image_process_mode: str):
    """The user message of a turn: plain text, `(text + "\n<image>", image, mode)` for one image (the
    original's), `("<image>\n" x n + text, visuals, mode)` for several images or a video."""
    text = (text or "")[:1536]  # hard cut-off, as the original
    if not visuals:
        return text
    text = text[:1200]
    if len(visuals) == 1 and not isinstance(visuals[0], VideoClip):
        return (text if "<image>" in text else text + "\n<image>", visuals[0], image_process_mode)
    text = text.replace("<image>", "").strip()
    return ("<image>\n" * len(visuals) + text, list(visuals), image_process_mode)


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


def prompt_text(conv) -> str:
    """`conv.get_prompt()`, with turns of several visuals (or a video) keeping their `<image>` markers."""
    if not any(isinstance(m, tuple) and isinstance(m[1], list) for _, m in conv.messages):
        return conv.get_prompt()
    plain = conv.copy()
    plain.messages = [[r, m[0] if isinstance(m, tuple) else m] for r, m in conv.messages]
    return plain.get_prompt()


def process_image(image, image_process_mode, return_pil=False, image_format="PNG", max_len=1344, min_len=672):
    """Pad/resize an uploaded image as the web demo does; base64 string unless `return_pil`."""
    from llava.mm_utils import expand2square

    if image_process_mode == "Pad":
        image = expand2square(image, (122, 116, 104))
    elif image_process_mode == "Resize":
        image = image.resize((336, 336))
    elif image_process_mode not in ("Default", "Crop"):
        raise ValueError(f"Invalid image_process_mode: {image_process_mode}; valid: {IMAGE_PROCESS_MODES}")
    if max(image.size) > max_len:
        max_hw, min_hw = max(image.size), min(image.size)
        aspect_ratio = max_hw / min_hw
        shortest_edge = int(min(max_len / aspect_ratio, min_len, min_hw))
        longest_edge = int(shortest_edge * aspect_ratio)
        w, h = image.size
        image = image.resize((shortest_edge, longest_edge) if h > w else (longest_edge, shortest_edge))
    if return_pil:
        return image
    if image_format.upper() in ("JPEG", "JPG") and image.mode != "RGB":
        image = image.convert("RGB")
    buffered = BytesIO()
    image.save(buffered, format=image_format)
    return base64.b64encode(buffered.getvalue()).decode()


def get_images(conv, return_pil=False) -> list:
    """The visuals of `conv`'s user turns, images processed with each turn's mode (base64 unless
    `return_pil`); a video is a list of its frames."""
    images = []
    for i, (_, msg) in enumerate(conv.messages[conv.offset :]):
        if i % 2 == 0 and isinstance(msg, tuple):
            mode = msg[2]
            for visual in turn_visuals(msg):
                if isinstance(visual, VideoClip):
                    images.append([process_image(f, "Default", return_pil=return_pil) for f in visual.frames])
                else:
                    images.append(process_image(visual, mode, return_pil=return_pil))
    return images


def to_gradio_chatbot(conv) -> list[list]:
    """`[[user html, answer], ...]` with uploaded images inlined as JPEG data URLs (older Gradio chatbots)."""
    ret = []
    for i, (_, msg) in enumerate(conv.messages[conv.offset :]):
        if i % 2 == 0:
            if isinstance(msg, tuple):
                html = ""
                for visual in turn_visuals(msg):
                    if isinstance(visual, VideoClip):
                        html += f"<p>[video {Path(visual.path).name}]</p>"
                        continue
                    img_b64 = process_image(visual, "Default", return_pil=False, image_format="JPEG")
                    html += f'<img src="data:image/jpeg;base64,{img_b64}" alt="user upload image" />'
                msg = html + msg[0].replace(DEFAULT_IMAGE_TOKEN, "").strip()
            ret.append([msg, None])
        else:
            ret[-1][-1] = msg
    return ret


def saved_image_path(image, logdir: str) -> str:
    """Save an uploaded image under LOGDIR/serve_images/<date>/<md5>.jpg (as the original) and return it."""
    digest = hashlib.md5(image.tobytes()).hexdigest()
    t = datetime.datetime.now()
    path = Path(logdir) / "serve_images" / f"{t.year}-{t.month:02d}-{t.day:02d}" / f"{digest}.jpg"
    if not path.is_file():
        with atomic_path(path, suffix=".jpg") as tmp:
            image.convert("RGB").save(tmp, format="JPEG")
    return str(path)


def chatbot_messages(state, logdir: str) -> list[dict]:
    """The conversation as Gradio 6 chat messages (images shown from their saved files, videos from theirs)."""
    out: list[dict] = []
    if state is None:
        return out
    for i, (_, msg) in enumerate(state.messages[state.offset :]):
        role = "user" if i % 2 == 0 else "assistant"
        if isinstance(msg, tuple):
            for visual in turn_visuals(msg):
                path = visual.path if isinstance(visual, VideoClip) else saved_image_path(visual, logdir)
                out.append({"role": role, "content": {"path": path}})
            msg = msg[0].replace("<image>", "").strip()
        if msg is not None:
            out.append({"role": role, "content": msg})
    return out
