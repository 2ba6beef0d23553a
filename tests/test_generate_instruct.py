"""Instruction-data generation (llava.data.generate_instruct) against a loopback OpenAI-compatible stub."""

import json
from pathlib import Path

import pytest

from llava.data.tools.generate_instruct import describe, generate, load_prompts, main, parse_qa, pick_question
from llava.utils.jsonfiles import read_jsonl
from llava.utils.openai_client import CachedChatClient, ChatRequestError, RetryPolicy

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "playground" / "data" / "prompts"
CAPS = Path(__file__).resolve().parent / "fixtures" / "eval" / "instruct" / "caps_boxes_3.jsonl"
SHARED_CAPS = (
    REPO.parent / "shared" / "data" / "eval" / "llava-bench-coco" / "caps_boxes_coco2014_val_80.jsonl"
)


@pytest.fixture()
def stub_server():
    from fixtures.eval.stub_openai import StubOpenAI

    return StubOpenAI


def writer(request):
    """Replies in the format each kind asks for; the image id is echoed so outputs can be checked."""
    system, user = request["messages"][0]["content"], request["messages"][-1]["content"]
    first_caption = user.split("\n")[1]
    if "detailed, well organised description" in system:
        return f"  A detailed description. {first_caption}  "
    if "needs reasoning" in system:
        return f"Question:\nWhy is this happening?\n===\nAnswer:\nBecause: {first_caption}"
    if "MALFORMED" in user:
        return "Sorry, I cannot help with that."
    return f"Question:\nWhat is shown?\n===\nAnswer:\n{first_caption}\n===\nQuestion: How many?\n===\nAnswer: Two."


def run(tmp_path, stub, kind, *extra, captions=CAPS):
    out = tmp_path / f"{kind}.json"
    samples = main(["--captions", str(captions), "--kind", kind, "--api-base", stub.url, "--model", "writer",
                    "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--prompts-dir", str(PROMPTS), *extra])  # fmt: skip
    return out, samples


def test_conversation_request_shape_output_and_cache(tmp_path, stub_server):
    caps = read_jsonl(CAPS)
    with stub_server(writer) as stub:
        out, samples = run(tmp_path, stub, "conversation", "--image-prefix", "coco/train2017/")
        assert len(stub.requests) == 3
        req = next(r for r in stub.requests if caps[0]["captions"][0] in r["messages"][-1]["content"])
        msgs = req["messages"]
        assert req["model"] == "writer" and req["temperature"] == 1.0 and req["max_tokens"] == 1024
        assert msgs[0] == {
            "role": "system",
            "content": (PROMPTS / "conversation/system_message.txt").read_text().strip(),
        }
        assert [m["role"] for m in msgs[1:]] == ["user", "assistant", "user", "assistant", "user"]
        assert msgs[1]["content"] == (PROMPTS / "conversation/000_caps.txt").read_text().strip()
        assert msgs[4]["content"] == (PROMPTS / "conversation/001_conv.txt").read_text().strip()
        assert msgs[-1]["content"] == "Captions:\n" + "\n".join(caps[0]["captions"])  # no boxes for this kind

        # second run: all replies from the cache, the same file
        first = out.read_bytes()
        out.unlink()
        run(tmp_path, stub, "conversation", "--image-prefix", "coco/train2017/")
        assert len(stub.requests) == 3 and out.read_bytes() == first

    assert json.loads(first) == samples
    assert [s["id"] for s in samples] == [c["id"] for c in caps]
    s0 = samples[0]
    assert s0["image"] == "coco/train2017/" + caps[0]["image"]
    assert s0["conversations"] == [
        {"from": "human", "value": "<image>\nWhat is shown?"},
        {"from": "gpt", "value": caps[0]["captions"][0]},
        {"from": "human", "value": "How many?"},
        {"from": "gpt", "value": "Two."},
    ]


def test_detail_and_complex(tmp_path, stub_server):
    caps = read_jsonl(CAPS)
    questions = [q for q in (PROMPTS / "detail/questions.txt").read_text().splitlines() if q.strip()]
    with stub_server(writer) as stub:
        _, detail = run(tmp_path, stub, "detail")
        _, complex_ = run(tmp_path, stub, "complex")
        boxes_user = stub.requests[-1]["messages"][-1]["content"]
    assert "\n\nObjects:\n" in boxes_user and boxes_user.count(": [") >= 1  # boxes for these kinds
    for cap, sample in zip(caps, detail):
        human, gpt = sample["conversations"]
        assert (
            human["value"] == "<image>\n" + pick_question(questions, cap["id"])
            and human["value"].split("\n")[1] in questions
        )
        assert gpt == {"from": "gpt", "value": f"A detailed description. {cap['captions'][0]}"}
    assert complex_[0]["conversations"] == [
        {"from": "human", "value": "<image>\nWhy is this happening?"},
        {"from": "gpt", "value": f"Because: {caps[0]['captions'][0]}"},
    ]


def test_describe_boxes():
    rec = {
        "id": "1",
        "image": "x.jpg",
        "captions": [" A dog. "],
        "instances": [{"category": "dog", "bbox": [0.1, 0.25, 0.5, 1]}],
    }
    assert describe(rec, use_boxes=True) == "Captions:\nA dog.\n\nObjects:\ndog: [0.1, 0.25, 0.5, 1.0]"
    assert describe(rec, use_boxes=False) == "Captions:\nA dog."


def test_malformed_reply_is_left_out_and_reported(tmp_path, stub_server, capsys):
    caps = read_jsonl(CAPS)
    caps[1]["captions"][0] = "MALFORMED " + caps[1]["captions"][0]
    path = tmp_path / "caps.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in caps))
    with stub_server(writer) as stub:
        _, samples = run(tmp_path, stub, "conversation", captions=path)
    assert [s["id"] for s in samples] == [caps[0]["id"], caps[2]["id"]]
    assert (
        f"1 replies did not follow the qa_pairs format and were left out ({caps[1]['id']}:"
        in capsys.readouterr().out
    )


def test_interrupted_run_resumes_from_the_cache(tmp_path, stub_server):
    records = read_jsonl(CAPS)
    prompts = load_prompts(PROMPTS, "conversation")
    broken = records[2]["captions"][0]

    def flaky(req):
        return (503, "overloaded") if broken in req["messages"][-1]["content"] else writer(req)

    with stub_server(flaky) as stub:
        client = CachedChatClient(
            "w", api_base=stub.url, cache_dir=tmp_path, retry=RetryPolicy(max_attempts=1)
        )
        with pytest.raises(ChatRequestError, match="overloaded"):
            generate(records, prompts, client, workers=1)
        assert len(stub.requests) == 3
    with stub_server(writer) as stub:
        client = CachedChatClient("w", api_base=stub.url, cache_dir=tmp_path)
        samples, failed = generate(records, prompts, client, workers=1)
        assert len(stub.requests) == 1 and client.hits == 2  # only the failed one is asked again
    assert len(samples) == 3 and failed == []


def test_bad_inputs_give_clear_errors_and_write_nothing(tmp_path):
    out = tmp_path / "out.json"
    args = ["--kind", "conversation", "--model", "w", "--out", str(out), "--api-base", "http://127.0.0.1:9/v1",
            "--prompts-dir", str(PROMPTS), "--cache-dir", ""]  # fmt: skip
    with pytest.raises(FileNotFoundError, match="captions file not found: .*missing.jsonl"):
        main(["--captions", str(tmp_path / "missing.jsonl"), *args])
    truncated = tmp_path / "truncated.jsonl"
    truncated.write_text(CAPS.read_text()[:-200])
    with pytest.raises(ValueError, match=r"truncated.jsonl:3: not valid JSON .*truncated"):
        main(["--captions", str(truncated), *args])
    no_captions = tmp_path / "nocap.jsonl"
    no_captions.write_text('{"id": "7", "image": "7.jpg"}\n')
    with pytest.raises(ValueError, match=r"line 1 \(id '7'\): missing field 'captions'"):
        main(["--captions", str(no_captions), *args])
    with pytest.raises(
        FileNotFoundError, match=r"no prompts for --kind 'poems'.*'complex', 'conversation', 'detail'"
    ):
        main(["--captions", str(CAPS), *args[:0], "--kind", "poems", *args[2:]])
    assert not out.exists() and not list(tmp_path.glob(".out.json*"))


@pytest.mark.parametrize(
    "reply",
    [
        "Question:\nA?\n===\nQuestion:\nB?",
        "Answer:\nA.",
        "Question:\nA?",
        "no format at all",
        "Question:\n\n===\nAnswer:\nx",
    ],
)
def test_parse_qa_rejects_malformed(reply):
    with pytest.raises(ValueError):
        parse_qa(reply)


@pytest.mark.skipif(not SHARED_CAPS.is_file(), reason="../shared is not available")
def test_all_80_llava_bench_coco_captions(tmp_path, stub_server):
    with stub_server(writer) as stub:
        out, samples = run(tmp_path, stub, "complex", "--workers", "8", captions=SHARED_CAPS)
        assert len(stub.requests) == 80
    assert len(samples) == 80 and len({s["id"] for s in samples}) == 80
    assert all(s["conversations"][0]["value"].startswith("<image>\n") for s in samples)
