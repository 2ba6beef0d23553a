"""Wire protocol, image decoding and small helpers of llava.serve (in-process, no model)."""

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from llava.conversation import get_conv_template as get_template
from llava.conversation import guess_conv_mode as infer_conv_mode
from llava.serve import protocol
from llava.serve.images import (
    ImageInputError,
    decode_image_bytes,
    encode_image_base64,
    load_image_from_base64,
    parse_data_url,
)
from llava.serve.inference import held_back


def _png(w=6, h=4, color=(200, 10, 20)):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width, height):
    """A PNG whose header claims width x height, with a tiny (truncated) pixel stream: a bomb's shape."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_stream_roundtrip_across_arbitrary_piece_boundaries():
    chunks = [
        protocol.encode_chunk("P: a", 0),
        protocol.encode_chunk("P: añ\0?", 0),
        protocol.encode_chunk("bad", 1),
    ]
    wire = b"".join(chunks)
    assert wire.count(b"\0") == 3  # a NUL inside the text is escaped by JSON (\\u0000)
    for size in (1, 3, 7, len(wire)):
        pieces = [wire[i : i + size] for i in range(0, len(wire), size)]
        got = list(protocol.iter_chunks(pieces))
        assert [c["text"] for c in got] == ["P: a", "P: añ\0?", "bad"]
        assert [c["error_code"] for c in got] == [0, 0, 1]


def test_stream_rejects_garbage_with_clear_error():
    with pytest.raises(ValueError, match="malformed stream chunk"):
        list(protocol.iter_chunks([b"not json\0"]))
    with pytest.raises(ValueError, match="lacks 'text'"):
        list(protocol.iter_chunks([b'{"x": 1}\0']))


def test_decode_good_image_and_data_url():
    raw = _png(6, 4)
    b64 = base64.b64encode(raw).decode()
    img = load_image_from_base64(b64)
    assert img.size == (6, 4) and img.mode == "RGB" and img.getpixel((0, 0)) == (200, 10, 20)
    assert load_image_from_base64(f"data:image/png;base64,{b64}").size == (6, 4)
    assert load_image_from_base64(base64.urlsafe_b64encode(raw).decode().rstrip("=")).size == (6, 4)
    assert load_image_from_base64(encode_image_base64(img)).getpixel((5, 3)) == (200, 10, 20)


@pytest.mark.parametrize(
    "payload, match",
    [
        ("%%%not-base64%%%", "not valid base64"),
        (base64.b64encode(b"hello, I am text and no picture").decode(), "not a readable image"),
        ("", "is empty"),
        (base64.b64encode(_png()[:40]).decode(), "truncated or corrupt|not a readable image"),
        ("data:text/plain;base64,aGVsbG8=", "media type 'text/plain'"),
        ("data:image/png,rawbytes", "must be base64"),
    ],
)
def test_bad_image_payloads_raise_clear_errors(payload, match):
    with pytest.raises(ImageInputError, match=match):
        load_image_from_base64(payload, "image 1 of 1")


def test_decompression_bomb_is_refused_from_the_header():
    # 30000 x 30000 is over twice PIL's limit: PIL itself refuses at open.
    with pytest.raises(ImageInputError, match="too large to decode safely"):
        decode_image_bytes(_png_header_only(30000, 30000))
    # Under PIL's hard limit but over the server's configured limit: refused before decoding.
    with pytest.raises(ImageInputError, match="over the limit of 1000000.*decompression bomb"):
        decode_image_bytes(_png_header_only(2000, 1000), max_pixels=1_000_000)


def test_parse_data_url_requires_the_data_scheme_shape():
    with pytest.raises(ImageInputError, match="malformed data: URL"):
        parse_data_url("data:;;;")
    assert parse_data_url("data:image/png;base64," + base64.b64encode(b"xy").decode()) == b"xy"


@pytest.mark.parametrize(
    "text, stops, expected",
    [
        ("Hello </", ["</s>"], 2),
        ("Hello <", ["</s>"], 1),
        ("Hello", ["</s>"], 0),
        ("a#", ["###", "</s>"], 1),
        ("x##", ["###"], 2),
    ],
)
def test_held_back_keeps_possible_stop_prefixes(text, stops, expected):
    assert held_back(text, stops) == expected


@pytest.mark.parametrize(
    "name, mode",
    [
        ("llava-v1.5-7b", "llava_v1"),
        ("llava-v1.5-13b-lora", "llava_v1"),
        ("llava-llama-2-13b-chat", "llava_llama_2"),
        ("llava-v1.6-mistral-7b", "mistral_instruct"),
        ("llava-v1.6-34b", "chatml_direct"),
        ("llava-v1-0719-336px-lora-merge-vicuna-13b-v1.3-plain", "v1_mmtag"),
        ("llava-v0-7b", "llava_v0"),
        ("vicuna-7b", "vicuna_v1"),
        ("llama-2-7b-chat", "llama_2"),
    ],
)
def test_infer_conv_mode_follows_the_original_rules(name, mode):
    assert infer_conv_mode(name) == mode


def test_unknown_name_is_llava_when_known_multimodal():
    assert infer_conv_mode("my-finetune", multimodal=True) == "llava_v0"
    assert infer_conv_mode("my-finetune") == "vicuna_v1"


def test_stop_strings_of_templates():
    assert get_template("llava_v1").stop_str == "</s>"
    assert get_template("llava_v0").stop_str == "###"
    assert get_template("mpt").stop_str == "<|im_end|>"
    with pytest.raises(ValueError, match="valid names"):
        get_template("no_such_template")


def test_netguard_refuses_and_records_outbound_connections(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    log = tmp_path / "net.log"
    script = tmp_path / "reach_out.py"
    script.write_text(
        "import socket, sys\n"
        "import tests.serve.netguard as guard\n"
        "guard.install(sys.argv[1])\n"
        "try:\n"
        "    socket.create_connection(('203.0.113.7', 80), timeout=0.5)\n"
        "except OSError as e:\n"
        "    print(e)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, str(script), str(log)], capture_output=True, text=True, cwd=repo, env=env, timeout=60
    )
    assert "netguard: outbound network to '203.0.113.7'" in out.stdout, out.stderr
    assert log.read_text() == "socket.getaddrinfo '203.0.113.7'\n"  # refused before any packet leaves
