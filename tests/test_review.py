"""GPT-assisted review against a loopback OpenAI-compatible stub: request shape, score parsing, cache, retries."""

import json
from pathlib import Path

import pytest

from llava.eval.gpt_review import SYSTEM_PROMPT, parse_score
from llava.utils.jsonfiles import read_jsonl
from llava.utils.openai_client import CachedChatClient, ChatRequestError, ReplyCache, RetryPolicy

FIX = Path(__file__).resolve().parent / "fixtures" / "eval"
REV = FIX / "review"


@pytest.fixture()
def stub_server():
    from fixtures.eval.stub_openai import StubOpenAI

    return StubOpenAI


def judge(request):
    """Scores depend on the question so that parsing is checked per line."""
    user = request["messages"][-1]["content"]
    if "suitcases in the image" in user or "landmark" in user:
        return "8 9\nAssistant 2 is as accurate and a little more detailed."
    if "comprehensive and detailed" in user or "painting" in user:
        return "9, 6\nAssistant 2 misses most details."
    return "Both answers are fine.\n7 7"  # no score on the first line -> [-1, -1]


def visual_args(tmp_path, stub, *extra):
    return ["--question", str(REV / "qa90_questions_3.jsonl"), "--context", str(REV / "caps_boxes_3.jsonl"),
            "--rule", str(REV / "rule.json"), "--answer-list", str(REV / "qa90_gpt4_answer_3.jsonl"),
            str(REV / "model_answers_3.jsonl"), "--output", str(tmp_path / "reviews" / "model.jsonl"),
            "--api-base", stub.url, "--model", "judge-model", "--cache-dir", str(tmp_path / "cache"), *extra]  # fmt: skip


@pytest.mark.parametrize(
    "review, scores",
    [("8 9\ntext", [8.0, 9.0]), ("8, 9\ntext", [8.0, 9.0]), ("7.5 6", [7.5, 6.0]), ("  10  3 \nx", [10.0, 3.0]),
     ("Score: 8 9", [-1.0, -1.0]), ("8\n9", [-1.0, -1.0]), ("", [-1.0, -1.0])],
)  # fmt: skip
def test_parse_score(review, scores):
    assert parse_score(review) == scores


def test_visual_review_request_shape_scores_and_cache(tmp_path, stub_server, monkeypatch, capsys):
    from llava.eval.eval_gpt_review_visual import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    with stub_server(judge) as stub:
        reviews = main(visual_args(tmp_path, stub))
        assert len(stub.requests) == 3
        q0 = read_jsonl(REV / "qa90_questions_3.jsonl")[0]
        (req,) = [r for r in stub.requests if f"[Question]\n{q0['text']}\n" in r["messages"][1]["content"]]
        assert stub.paths[0] == "/v1/chat/completions"
        assert stub.headers[0]["authorization"] == "Bearer sk-test-key"
        assert req["model"] == "judge-model" and req["temperature"] == 0.2 and req["max_tokens"] == 1024
        assert [m["role"] for m in req["messages"]] == ["system", "user"]
        assert req["messages"][0]["content"] == SYSTEM_PROMPT
        content = req["messages"][1]["content"]
        ctx = json.loads((REV / "caps_boxes_3.jsonl").read_text().splitlines()[0])
        rule = json.loads((REV / "rule.json").read_text())["conv"]
        a1 = read_jsonl(REV / "qa90_gpt4_answer_3.jsonl")[0]["text"]
        a2 = read_jsonl(REV / "model_answers_3.jsonl")[0]["text"]
        boxes = "\n".join(f"{i['category']}: {i['bbox']}" for i in ctx["instances"])
        assert content == (
            f"[Context]\n{chr(10).join(ctx['captions'])}\n\n{boxes}\n\n[Question]\n{q0['text']}\n\n"
            f"[Assistant 1]\n{a1}\n\n[End of Assistant 1]\n\n[Assistant 2]\n{a2}\n\n[End of Assistant 2]\n\n"
            f"[System]\n{rule['prompt']}\n\n"
        )
        assert [r["tuple"] for r in reviews] == [[8.0, 9.0], [9.0, 6.0], [-1.0, -1.0]]
        saved = read_jsonl(tmp_path / "reviews/model.jsonl")
        assert saved == reviews
        assert saved[0] == {
            **saved[0],
            "id": 1,
            "question_id": 0,
            "answer1_id": 0,
            "answer2_id": "m0",
            "category": "conv",
        }
        assert "1 reviews have no parsable score" in capsys.readouterr().out

        # second run, output deleted: every reply comes from the cache, nothing is sent
        (tmp_path / "reviews/model.jsonl").unlink()
        again = main(visual_args(tmp_path, stub))
        assert len(stub.requests) == 3 and again == reviews
        assert "judge calls: 0, cached: 3" in capsys.readouterr().out

        # no cache, but the earlier output is there: complete reviews are reused
        main(visual_args(tmp_path, stub, "--cache-dir", ""))
        assert len(stub.requests) == 3

        # another judge sample (--run 1) is a different cache entry: 3 new requests
        main(visual_args(tmp_path, stub, "--run", "1", "--output", str(tmp_path / "run1.jsonl")))
        assert len(stub.requests) == 6
    assert not [p for p in (tmp_path / "reviews").iterdir() if p.name.endswith(".tmp")]


def test_bench_review_pairs_answers_by_question_id(tmp_path, stub_server, monkeypatch):
    from llava.eval.eval_gpt_review_bench import main
    from llava.eval.summarize_gpt_review import main as summarize

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a local endpoint needs no key
    out = tmp_path / "review_bench.jsonl"
    with stub_server(judge) as stub:
        reviews = main(["-q", str(REV / "bench_questions.jsonl"), "-c", str(REV / "bench_context.jsonl"),
                        "-r", str(REV / "rule.json"), "-a", str(REV / "bench_answers_gpt4.jsonl"),
                        str(REV / "bench_answers_model.jsonl"), "-o", str(out), "--api-base", stub.url,
                        "--model", "m", "--cache-dir", str(tmp_path / "cache"), "--workers", "1"])  # fmt: skip
        first, second = (r["messages"][1]["content"] for r in stub.requests)
    assert first.startswith(
        "[Context]\nA tall iron lattice tower in Paris seen from a park on a clear day.\n\n[Question]"
    )
    assert second.startswith("[Context]\nAn oil painting of a woman with a pearl earring.\nShe wears a blue")
    assert (
        "[Assistant 2]\nIt is the Eiffel Tower.\n" in first
    )  # the model file lists answers in another order
    assert [(r["category"], r["answer2_id"], r["tuple"]) for r in reviews] == [
        ("llava_bench_conv", "b0", [8.0, 9.0]),
        ("llava_bench_detail", "b1", [9.0, 6.0]),
    ]
    (summary,) = summarize(["-f", str(out)])
    assert summary["all"].relative == pytest.approx(100 * 15 / 17)


def test_review_missing_answer_is_a_clear_error(tmp_path, stub_server):
    from llava.eval.eval_gpt_review_bench import main

    partial = tmp_path / "partial.jsonl"
    partial.write_text((REV / "bench_answers_model.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(KeyError, match="question 0 has no answer in the second --answer-list file"):
        main(["-q", str(REV / "bench_questions.jsonl"), "-c", str(REV / "bench_context.jsonl"), "-r", str(REV / "rule.json"),
              "-a", str(REV / "bench_answers_gpt4.jsonl"), str(partial), "-o", str(tmp_path / "o.jsonl"),
              "--api-base", "http://127.0.0.1:9/v1", "--cache-dir", ""])  # fmt: skip
    assert not (tmp_path / "o.jsonl").exists()


def test_client_retries_rate_limits_then_succeeds(tmp_path, stub_server):
    waits = []
    with stub_server(lambda req: "5 6", fail_first=2) as stub:
        client = CachedChatClient("m", api_base=stub.url, api_key="k", cache_dir=tmp_path, sleep=waits.append)
        assert client.chat([{"role": "user", "content": "hi"}], temperature=0) == "5 6"
    assert client.retries == 2 and len(waits) == 2 and len(stub.requests) == 1


def test_client_gives_up_after_max_attempts(stub_server):
    with stub_server(lambda req: "x", fail_first=10) as stub:
        client = CachedChatClient(
            "m", api_base=stub.url, api_key="k", retry=RetryPolicy(max_attempts=3), sleep=lambda s: None
        )
        with pytest.raises(ChatRequestError, match="failed after 3 attempts"):
            client.chat([{"role": "user", "content": "hi"}])


def test_client_does_not_retry_client_errors(stub_server):
    with stub_server(lambda req: (404, "The model 'm' does not exist")) as stub:
        client = CachedChatClient("m", api_base=stub.url, api_key="k", sleep=lambda s: None)
        with pytest.raises(ChatRequestError, match="The model 'm' does not exist"):
            client.chat([{"role": "user", "content": "hi"}])
    assert client.retries == 0


def test_client_needs_a_key_only_for_the_default_endpoint(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ChatRequestError, match="set OPENAI_API_KEY"):
        CachedChatClient("m").chat([{"role": "user", "content": "hi"}])
    # a cached reply needs no endpoint and no key at all
    client = CachedChatClient("m", cache_dir=tmp_path)
    request = client.request([{"role": "user", "content": "hi"}], temperature=0.5)
    client.cache.put(ReplyCache.key(request), {"reply": "cached"})
    assert client.chat([{"role": "user", "content": "hi"}], temperature=0.5) == "cached" and client.hits == 1


def test_cache_key_and_damaged_entries(tmp_path):
    cache = ReplyCache(tmp_path)
    a = ReplyCache.key({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0.2})
    b = ReplyCache.key({"temperature": 0.2, "messages": [{"content": "x", "role": "user"}], "model": "m"})
    c = ReplyCache.key({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0.3})
    assert a == b != c
    cache.put(a, {"reply": "r"})
    assert cache.get(a) == {"reply": "r"}
    cache.path(a).write_text('{"reply": ')  # damaged (e.g. disk full): treated as a miss
    assert cache.get(a) is None


def test_retry_policy_delays():
    policy = RetryPolicy(initial_delay=1.0, multiplier=2.0, max_delay=5.0, jitter=0.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    assert policy.delay(1, retry_after=3.0) == 3.0 and policy.delay(1, retry_after=99.0) == 5.0
