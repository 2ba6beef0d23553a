"""How the web demo shows and sends a conversation's images (moved here from `Conversation`).

A serving conversation's first user turn may be a `(text, PIL image, image_process_mode)` tuple (the
web demo's upload). These helpers pad or resize that image as the original demo did, return the
images of a conversation for a worker request (base64) or for display (PIL), save uploads under
the log folder, and render the conversation for a Gradio chatbot (`chatbot_messages` for Gradio 6,
`to_gradio_chatbot` in the original's pairs format). The template (`llava.conversation`) only
renders text.

    images_b64 = get_images(conv)                  # what /worker_generate_stream takes
    pil_images = get_images(conv, return_pil=True)
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from io import BytesIO
from pathlib import Path

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.utils.atomic import atomic_path

IMAGE_PROCESS_MODES = ("Crop", "Resize", "Pad", "Default")


def process_image(
    image, image_process_mode, return_pil=False, image_format="PNG", max_len=1344, min_len=672
):
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
    """The images of `conv`'s user turns, processed with each turn's mode (base64 unless `return_pil`)."""
    images = []
    for i, (_, msg) in enumerate(conv.messages[conv.offset :]):
        if i % 2 == 0 and isinstance(msg, tuple):
            _, image, image_process_mode = msg
            images.append(process_image(image, image_process_mode, return_pil=return_pil))
    return images


def to_gradio_chatbot(conv) -> list[list]:
    """`[[user html, answer], ...]` with uploaded images inlined as JPEG data URLs (older Gradio chatbots)."""
    ret = []
    for i, (_, msg) in enumerate(conv.messages[conv.offset :]):
        if i % 2 == 0:
            if isinstance(msg, tuple):
                msg, image, _ = msg
                img_b64 = process_image(image, "Default", return_pil=False, image_format="JPEG")
                img_str = f'<img src="data:image/jpeg;base64,{img_b64}" alt="user upload image" />'
                msg = img_str + msg.replace(DEFAULT_IMAGE_TOKEN, "").strip()
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
    """The conversation as Gradio 6 chat messages (images shown from their saved files)."""
    out: list[dict] = []
    if state is None:
        return out
    for i, (_, msg) in enumerate(state.messages[state.offset :]):
        role = "user" if i % 2 == 0 else "assistant"
        if isinstance(msg, tuple):
            text, image, _ = msg
            out.append({"role": role, "content": {"path": saved_image_path(image, logdir)}})
            msg = text.replace("<image>", "").strip()
        if msg is not None:
            out.append({"role": role, "content": msg})
    return out
