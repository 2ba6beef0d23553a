"""Is an image file usable for training? Three levels, each including the ones before it.

- "exists": the file is there;
- "header" (the validator's default): PIL opens it and `verify()`s it, which finds a file that is no
  image (text or an HTML error page under an image name, an empty file) and a truncated PNG (its
  chunk CRCs up to IEND); a JPEG whose end marker is missing from the file's last bytes is decoded
  to decide (a truncated JPEG), so that cheap check has no false alarms;
- "decode": every pixel decoded and converted to RGB, as the training loader does.

bench/RESULTS.md has the time per 100K images of "header" and "decode".
"""

from __future__ import annotations

import os

IMAGE_CHECKS = ("exists", "header", "decode")  # --image_check: each includes the ones before it
_JPEG_EOI, _JPEG_TAIL = b"\xff\xd9", 4096


def _decode(path: str) -> None:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        im.convert("RGB")  # decodes every pixel, as the dataset does


def _header_check(path: str) -> None:
    """Open `path` as an image and `verify()` it: catches a file that is no image (text or HTML
    under an image name, an empty file) and, for PNG (chunk CRCs up to IEND), a truncated one. A
    JPEG without its end marker near the file's end is decoded to decide (truncated JPEGs)."""
    from PIL import Image

    with Image.open(path) as im:
        fmt = im.format
        im.verify()
    if fmt == "JPEG":
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - _JPEG_TAIL))
            tail = f.read()
        if _JPEG_EOI not in tail:
            _decode(path)


def image_problem(path: str, check: str | bool = "header") -> tuple[str, str] | None:
    """('missing_image' | 'corrupt_image', message) for the image at `path`, or None.

    `check`: "exists" (the file only), "header" (opened and verified, see `_header_check`) or
    "decode" (every pixel decoded, as training does); True / False are the old "decode" / "exists".
    """
    check = {True: "decode", False: "exists"}.get(check, check)
    if check not in IMAGE_CHECKS:
        raise ValueError(f"unknown image check {check!r}; valid: {IMAGE_CHECKS}")
    if not os.path.isfile(path):
        return "missing_image", f"image file {path} not found (check --image_folder)"
    if check == "exists":
        return None
    try:
        (_decode if check == "decode" else _header_check)(path)
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError...
        return "corrupt_image", f"image file {path} cannot be read ({type(e).__name__}: {e})"
    return None


def embedded_image_problem(data: bytes, name: str, check: str = "header") -> tuple[str, str] | None:
    """`image_problem` of an image whose bytes the data embeds (parquet): ('corrupt_image', message) or None."""
    import io

    from PIL import Image

    if check == "exists":
        return None
    try:
        if check == "decode":
            _decode(io.BytesIO(data))
        else:
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format
                im.verify()
            if fmt == "JPEG" and _JPEG_EOI not in data[-_JPEG_TAIL:]:
                _decode(io.BytesIO(data))
    except Exception as e:
        return "corrupt_image", f"embedded image {name} cannot be read ({type(e).__name__}: {e})"
    return None
