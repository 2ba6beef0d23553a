"""Turning untrusted request bytes into PIL images, with clear errors instead of crashes.

Every failure raises `ImageInputError` (a ValueError) whose message says which image and why:
bad base64, bytes that are no image, an image over the pixel limit (decompression bombs are
caught from the header, before any pixel is decoded), a data: URL of another media type, or a
remote URL when fetching is off.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image, UnidentifiedImageError

# PIL's own default limit (about 89 megapixels); a request may not lower the server's setting.
DEFAULT_MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024

_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I
)


class ImageInputError(ValueError):
    """An image in a request could not be used; the message says which and why."""


class ImageTooLarge(ImageInputError):
    """An image over the server's pixel limit (a server adds the flag that sets the limit)."""


def open_image_header(
    data: bytes, what: str = "image", max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """Open `data` lazily (only its header is read): a non-image or an image over `max_pixels` is refused
    before any pixel is decoded. Finish with `load_rgb`."""
    if not data:
        raise ImageInputError(f"{what} is empty")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"{what} is too large to decode safely: {e}") from None
    except UnidentifiedImageError:
        raise ImageInputError(
            f"{what} is not a readable image (no image format recognised; it starts with {data[:12]!r})"
        ) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageInputError(f"{what} is not a readable image ({type(e).__name__}: {e})") from None
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(
            f"{what} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
            "(possible decompression bomb); send a smaller image"
        )
    return img


def load_rgb(img: Image.Image, what: str = "image") -> Image.Image:
    """Decode the pixels of an image opened by `open_image_header`, as RGB."""
    try:
        img.load()
        return img.convert("RGB")
    except Image.DecompressionBombError as e:
        raise ImageInputError(f"{what} is too large to decode safely: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageInputError(f"{what} is truncated or corrupt ({type(e).__name__}: {e})") from None


def decode_image_bytes(
    data: bytes, what: str = "image", max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """Open `data` as an RGB image, refusing non-images and images larger than `max_pixels`."""
    return load_rgb(open_image_header(data, what, max_pixels), what)


def decode_base64(s: str, what: str = "image") -> bytes:
    """Strict base64 (standard or URL-safe alphabet, whitespace allowed) -> bytes."""
    if not isinstance(s, str):
        raise ImageInputError(f"{what} must be a base64 string, got {type(s).__name__}")
    compact = "".join(s.split())
    if "-" in compact or "_" in compact:
        compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageInputError(f"{what} is not valid base64 ({e})") from None


def parse_data_url(url: str, what: str = "image", media: str = "image") -> bytes:
    """The bytes of a `data:<media>/...;base64,...` URL (`media`: "image" or "video")."""
    m = _DATA_URL.match(url)
    if not m:
        raise ImageInputError(f"{what}: malformed data: URL (expected data:{media}/<type>;base64,<data>)")
    mime = (m.group("mime") or "").lower()
    if mime and not mime.startswith(f"{media}/"):
        raise ImageInputError(f"{what}: data: URL has media type {mime!r}, expected {media}/*")
    if not m.group("b64"):
        raise ImageInputError(f"{what}: data: URL must be base64-encoded (';base64,')")
    return decode_base64(url[m.end() :], what)


def data_url_mime(url: str) -> str:
    """The media type of a data: URL ('' when it names none)."""
    m = _DATA_URL.match(url)
    return (m.group("mime") or "").lower() if m else ""


def base64_image_bytes(s: str, what: str = "image") -> bytes:
    """The bytes of a request's base64 image (a bare base64 string or a data:image/... URL)."""
    if isinstance(s, str) and s.startswith("data:"):
        return parse_data_url(s, what)
    return decode_base64(s, what)


def load_image_from_base64(
    s: str, what: str = "image", max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """A request's base64 image (a bare base64 string or a data: URL) -> RGB PIL image."""
    return decode_image_bytes(base64_image_bytes(s, what), what, max_pixels)


def fetch_image_url(
    url: str,
    what: str = "image",
    timeout: float = 10.0,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> bytes:
    """Download an http(s) image with a time and size limit (only call when the server allows it)."""
    import httpx

    if not url.lower().startswith(("http://", "https://")):
        raise ImageInputError(f"{what}: only http(s) and data: URLs are supported, got {url[:40]!r}")
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as r:
            if r.status_code != 200:
                raise ImageInputError(f"{what}: fetching {url} gave HTTP {r.status_code}")
            buf = bytearray()
            for piece in r.iter_bytes():
                buf += piece
                if len(buf) > max_bytes:
                    raise ImageInputError(f"{what}: {url} is larger than {max_bytes} bytes")
            return bytes(buf)
    except httpx.HTTPError as e:
        raise ImageInputError(f"{what}: could not fetch {url} ({type(e).__name__}: {e})") from None


def encode_image_base64(img: Image.Image, fmt: str = "PNG", **save_options) -> str:
    """PIL image -> base64 string (what `/worker_generate_stream` expects in `images`)."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_options)
    return base64.b64encode(buf.getvalue()).decode("ascii")
