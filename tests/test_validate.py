"""llava.data.validate: every problem category, token counts equal to training's, clean output,
and bad input (missing file, truncated JSON, corrupt images) with nothing half-written."""

import json
import random
from types import SimpleNamespace

import pytest
from PIL import Image
from transformers import AutoTokenizer

from llava.data.dataset import LazySupervisedDataset
from llava.data.length_cache import count_sample
from llava.data.sample_format import SampleFormat, template_for_version
from llava.data.tools.validate import count_prompt_tokens, main, validate
from tests.conftest import FIXTURES


def _turns(*texts):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


def _ok(sid, image=None, *texts):
    sample = {"id": sid, "conversations": _turns(*(texts or ("<image>\nWhat is it?", "A red circle.")))}
    if image:
        sample["image"] = image
    return sample


@pytest.fixture
def data(tmp_path):
    """A data file with good samples and one sample per problem; returns (path, image folder, samples)."""
    images = tmp_path / "images"
    images.mkdir()
    for name, colour in (("a.png", "red"), ("b.jpg", "blue")):
        Image.new("RGB", (20, 16), colour).save(images / name)
    (images / "garbage.png").write_bytes(b"this is not a picture at all")
    Image.new("RGB", (64, 64), "green").save(images / "cut.png")
    (images / "cut.png").write_bytes((images / "cut.png").read_bytes()[:60])
    long_reply = " ".join(["word"] * 3000)
    samples = [
        _ok("good-1", "a.png"),
        _ok("good-2", "b.jpg", "Describe it.\n<image>", "Blue.", "Sure?", "Yes,  sure.\n"),
        _ok("text-only", None, "Hello there", "Hi! How can I help?"),
        {"id": "sys", "conversations": [{"from": "system", "value": "Be brief."}, *_turns("Hi", "Hello")]},
        {"id": "no-conv", "image": "a.png"},
        {"id": "not-a-turn", "conversations": ["human: hi", {"from": "gpt", "value": "x"}]},
        {"id": "bot", "conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "x"}]},
        {
            "id": "two-humans",
            "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}],
        },
        _ok("empty", None, "Question?", "   "),
        {"id": "no-reply", "conversations": [{"from": "human", "value": "Anyone?"}]},
        _ok("no-marker", "a.png", "What is it?", "A circle."),
        _ok("marker-no-image", None, "<image>\nWhat is it?", "A circle."),
        _ok("two-markers", "a.png", "<image> and <image>", "Two."),
        _ok("marker-in-reply", "a.png", "<image>\nWhat?", "An <image>."),
        _ok("missing-file", "nope.png"),
        _ok("garbage", "garbage.png"),
        _ok("truncated-png", "cut.png"),
        _ok("too-long", "a.png", "<image>\nTell me everything.", long_reply),
        {"conversations": _turns("No id here", "Fine.")},
        _ok("good-1", "a.png"),  # a duplicate id
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(samples))
    return path, images, samples


def _ids(report, category):
    return [p.sample_id for p in report.problems.get(category, [])]


def test_every_problem_is_found_and_named(data, llama2_tokenizer):
    _, images, samples = data
    report = validate(
        samples, images, llama2_tokenizer, "v1", model_max_length=2048, check_images=True, num_workers=2
    )
    assert _ids(report, "schema") == ["no-conv", "not-a-turn"]
    assert _ids(report, "unknown_role") == ["bot"]
    assert _ids(report, "roles_not_alternating") == ["two-humans"]
    assert _ids(report, "empty_turn") == ["empty"]
    assert _ids(report, "no_reply") == ["no-reply"]
    assert _ids(report, "image_token_mismatch") == [
        "no-marker",
        "marker-no-image",
        "two-markers",
        "marker-in-reply",
    ]
    assert _ids(report, "missing_image") == ["missing-file"]
    assert _ids(report, "corrupt_image") == ["garbage", "truncated-png"]
    assert _ids(report, "too_long") == ["too-long"]
    assert _ids(report, "missing_id") == [None] and _ids(report, "duplicate_id") == ["good-1"]
    assert "template_error" not in report.problems
    bad = {s.get("id") for i, s in enumerate(samples) if i in report.bad_indices}
    assert {s.get("id") for s in samples} - bad == {"good-1", "good-2", "text-only", "sys", None}
    msgs = {c: probs[0].message for c, probs in report.problems.items()}
    assert (
        msgs["missing_image"]
        == f"sample 'missing-file' (#14): image file {images / 'nope.png'} not found (check --image_folder)"
    )
    assert "cut.png cannot be read" in report.problems["corrupt_image"][1].message
    assert "marker(s) for 1 image(s)" in msgs["image_token_mismatch"]
    assert "> --model_max_length 2048" in msgs["too_long"] and "576 image" in msgs["too_long"]


def test_allow_too_long_makes_it_a_warning(data, llama2_tokenizer):
    _, images, samples = data
    report = validate(samples, images, llama2_tokenizer, "v1", allow_too_long=True)
    assert _ids(report, "too_long") == ["too-long"] and 17 not in report.bad_indices
    errors_part, warnings_part = report.summary().split("warnings:")
    assert "\n  too_long " in warnings_part and "\n  too_long " not in errors_part


def test_without_check_images_only_existence_is_checked(data):
    _, images, samples = data
    report = validate(samples, images, None, image_check="exists")
    assert _ids(report, "missing_image") == ["missing-file"] and "corrupt_image" not in report.problems
    assert "too_long" not in report.problems and report.token_counts == {}  # no tokenizer: no length check


def test_every_image_is_opened_by_default(data, capsys):
    """The default header check finds text under an image name and a truncated PNG, as decoding does."""
    path, images, samples = data
    report = validate(samples, images, None)
    assert _ids(report, "corrupt_image") == ["garbage", "truncated-png"]
    assert "garbage.png cannot be read (UnidentifiedImageError" in report.problems["corrupt_image"][0].message
    decoded = validate(samples, images, None, image_check="decode")
    assert _ids(decoded, "corrupt_image") == ["garbage", "truncated-png"]
    only = path.parent / "images-only.json"
    only.write_text(json.dumps([samples[0], samples[15], samples[16]]))
    assert main(["--data_path", str(only), "--image_folder", str(images)]) == 1
    out = capsys.readouterr().out
    assert "exist and open (header check)" in out and "3 samples: 1 usable, 2 with errors" in out
    assert main(["--data_path", str(only), "--image_folder", str(images), "--image_check", "exists"]) == 0
    assert main(["--data_path", str(only), "--image_folder", str(images), "--decode_images"]) == 1
    assert "exist and decode" in capsys.readouterr().out


def _photo(path, size=(64, 48), seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path.read_bytes()


@pytest.mark.parametrize("check", ["header", "decode"])
def test_truncated_and_fake_jpegs_are_found(tmp_path, check):
    from llava.data.tools.image_check import image_problem

    whole = _photo(tmp_path / "ok.jpg")
    (tmp_path / "half.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "no-end.jpg").write_bytes(whole[:-2])  # the end marker lost: training cannot load it
    (tmp_path / "page.jpg").write_text("<html><body>404 Not Found</body></html>")
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert image_problem(str(tmp_path / "ok.jpg"), check) is None
    for name in ("half.jpg", "no-end.jpg", "page.jpg", "empty.jpg"):
        problem = image_problem(str(tmp_path / name), check)
        assert problem and problem[0] == "corrupt_image" and name in problem[1], name
    assert image_problem(str(tmp_path / "page.jpg"), "exists") is None
    with pytest.raises(ValueError, match="unknown image check 'pixels'"):
        image_problem(str(tmp_path / "ok.jpg"), "pixels")


def test_template_errors_come_from_the_chosen_template(data, llama2_tokenizer):
    _, images, samples = data
    report = validate(samples, images, llama2_tokenizer, "plain")
    # plain (stage 1) takes one image and one human/gpt pair: multi-turn and text-only samples fail.
    assert set(_ids(report, "template_error")) == {"good-2", "text-only", "sys", None}
    with pytest.raises(ValueError, match="unknown conversation template 'v9'"):
        validate(samples, images, llama2_tokenizer, "v9")


def test_cli_prints_counts_and_ids_and_writes_clean_json(data, capsys):
    path, images, samples = data
    clean = path.parent / "out" / "clean.json"
    code = main(["--data_path", str(path), "--image_folder", str(images), "--check_images",
                 "--model_name_or_path", str(FIXTURES / "tokenizers" / "llama2"), "--output_clean_json", str(clean),
                 "--max_ids", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert "20 samples: 6 usable, 14 with errors" in out
    assert "image_token_mismatch          4" in out
    assert "samples: 'no-marker' (#10), 'marker-no-image' (#11) and 2 more" in out
    assert "duplicate_id                  1" in out
    assert "wrote 6 samples to" in out
    kept = json.loads(clean.read_text())
    assert [s.get("id") for s in kept] == ["good-1", "good-2", "text-only", "sys", None, "good-1"]
    assert [p.name for p in clean.parent.iterdir()] == ["clean.json"]  # no temp file left
    # The cleaned file trains: the dataset accepts every sample.
    tok = AutoTokenizer.from_pretrained(FIXTURES / "tokenizers" / "llama2")
    args = SimpleNamespace(image_folder=str(images), lengths_cache_dir=str(path.parent / "cache"),
                           skip_bad_samples=False)  # fmt: skip
    fmt = SampleFormat("v1", tok.model_max_length, is_multimodal=True)  # no pixels needed to prepare
    dataset = LazySupervisedDataset(str(clean), tok, args, fmt)
    dataset.prepare()
    assert len(dataset) == 6


def test_clean_file_passes_with_exit_code_0(data, tmp_path, capsys):
    path, images, samples = data
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(s) + "\n" for s in samples[:4]))
    assert main(["--data_path", str(good), "--image_folder", str(images), "--output_clean_json",
                 str(tmp_path / "c.jsonl")]) == 0  # fmt: skip
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 4
    assert "4 samples: 4 usable, 0 with errors" in capsys.readouterr().out


def test_missing_and_truncated_data_files(data, tmp_path):
    path, images, _ = data
    out = tmp_path / "clean.json"
    with pytest.raises(FileNotFoundError, match=r"--data_path .*absent.json does not exist"):
        main(["--data_path", str(tmp_path / "absent.json"), "--output_clean_json", str(out)])
    truncated = tmp_path / "truncated.json"
    truncated.write_text(path.read_text()[:700])
    with pytest.raises(ValueError, match=r"--data_path .*truncated.json: not valid JSON at line \d+ column"):
        main(["--data_path", str(truncated), "--output_clean_json", str(out)])
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_a_bad_jsonl_line_is_named_by_its_line(data, tmp_path):
    """JSON lines are read line by line: line 41 is reported as line 41, not as 'line 2 column 1'."""
    from llava.data.dataset import load_samples

    path, _, _ = data
    samples = json.loads(path.read_text())
    rows = [json.dumps(samples[i % len(samples)]) for i in range(45)]
    rows[40] = rows[40][:-5]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"--data_path .*bad.jsonl:41: not valid JSON"):
        load_samples(bad)


# ------------------------------------------------------------------------------ token counts
_WORDS = ["the", "cat", "sits", "on", "a", "table", "What", "colour", "?", "It's", "red", "naïve", "café", "🙂",
          "x=1;", "\n", "  ", "Answer", "briefly.", "</s>", "USER:", "<unk>", "日本"]  # fmt: skip


def _random_samples(n, seed=0):
    rng = random.Random(seed)

    def text():
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 40))).strip() or "ok"

    samples = []
    for i in range(n):
        turns = [text() for _ in range(2 * rng.randint(1, 3))]
        sample = {"id": i, "conversations": _turns(*turns)}
        if i % 3:
            sample["image"] = "a.png"
            turns[0] = turns[0] + "\n<image>" if i % 2 else "<image>\n" + turns[0]
            sample["conversations"] = _turns(*turns)
        samples.append(sample)
    return samples


@pytest.mark.parametrize("tok_name", ["llama2", "llama2-legacy", "mistral"])
@pytest.mark.parametrize("version", ["v1", "llama_2", "mistral_instruct", "qwen_2", "v0", "v1_mmtag"])
def test_token_counts_equal_training_counts(tok_name, version, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    tok = AutoTokenizer.from_pretrained(FIXTURES / "tokenizers" / tok_name, model_max_length=100_000)
    samples = _random_samples(24, seed=hash(version) % 1000)
    report = validate(samples, str(tmp_path), tok, version, model_max_length=10**6, num_image_tokens=0)
    assert report.num_errors == 0
    opts = SampleFormat(template_for_version(version), 10**6, is_multimodal=True)
    expected = {i: count_sample(s, tok, opts) for i, s in enumerate(samples)}
    assert all(err is None for _, err in expected.values())
    assert report.token_counts == {i: n for i, (n, _) in expected.items()}


def test_token_counts_plain_and_im_start_end(llama2_tokenizer, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    samples = [s for s in _random_samples(30, seed=4) if "image" in s]
    for s in samples:
        s["conversations"] = s["conversations"][:2]
    report = validate(samples, str(tmp_path), llama2_tokenizer, "plain", num_image_tokens=0)
    plain = SampleFormat("plain", 2048, is_multimodal=True)
    assert report.token_counts == {i: count_sample(s, llama2_tokenizer, plain)[0]
                                   for i, s in enumerate(samples)}  # fmt: skip
    tok = AutoTokenizer.from_pretrained(FIXTURES / "tokenizers" / "llama2")
    report = validate(samples, str(tmp_path), tok, "v1", num_image_tokens=0, mm_use_im_start_end=True)
    start_end = SampleFormat("v1", 2048, is_multimodal=True, mm_use_im_start_end=True)
    assert report.token_counts == {i: count_sample(s, tok, start_end)[0]
                                   for i, s in enumerate(samples)}  # fmt: skip


def test_count_prompt_tokens_by_hand(llama2_tokenizer):
    # [<s>, ▁Hi], the image id, then " there" -> [<s>, ▁there] without its BOS: 4 ids.
    assert llama2_tokenizer(" there").input_ids == [1, 727]
    assert count_prompt_tokens(["Hi<image> there", "<image>", ""], llama2_tokenizer) == [4, 2, 1]


# ------------------------------------------------------------------------------ the segment-cached counter
_ODD_TEXTS = [
    "", " ", "  ", "a", " a", "a ", "a  b", "a   b  c ", "\n", "a\nb c", "a\n b", "a \n b", "tab\t b", "x▁ y",
    "▁▁ z", "</s> USER: hi", "hi</s>USER: yo", "<s> x", "<unk>  y", "émoji 🙂 🙂🙂  end", "日本語 テキスト",
    "multi   spaces\n\n  and newlines  ", "x>  y >z", "a.b, c; d! e? f", "digits 12345 6789", "[INST] hi [/INST]",
    "<<SYS>>\nsys\n<</SYS>>\n\nq", "USER: <image> what?", "<image>", "a<image>b <image>  c", "ASSISTANT: ok</s>",
]  # fmt: skip


def _fuzz_texts(n, seed=0):
    rng = random.Random(seed)
    pool = [" ", " ", " ", "  ", "\n", "\t", "▁", ">", "</s>", "<s>", "<image>", "é", "🙂", "日", ".", "?", "x", "the",
            "cat", "Sat", "on", "a", "mat", "1", "23", "'s", "-", "USER:", "ASSISTANT:"]  # fmt: skip
    return ["".join(rng.choice(pool) for _ in range(rng.randint(0, 60))) for _ in range(n)]


def _byte_level_tokenizer(tmp_path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_fuzz_texts(300, seed=1) + ["the cat sat on the mat. " * 20], vocab_size=400)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="</s>", additional_special_tokens=["<s>"]
    )


@pytest.mark.parametrize("name", ["llama2", "llama2-legacy", "mistral", "byte-level"])
def test_segment_cache_counts_equal_tokenizer_image_token(name, tmp_path):
    from llava.data.tools.token_counter import PromptTokenCounter, segmenting_supported
    from llava.mm_utils import tokenizer_image_token

    if name == "byte-level":
        tok = _byte_level_tokenizer(tmp_path)
    else:
        tok = AutoTokenizer.from_pretrained(FIXTURES / "tokenizers" / name)
    assert segmenting_supported(tok) is None
    texts = _ODD_TEXTS + _fuzz_texts(400)
    counter = PromptTokenCounter(tok)
    got = counter.count(texts)
    assert counter.cached  # the sampled check found no difference, so the cached path gave these
    assert got == [len(tokenizer_image_token(t, tok)) for t in texts]
    assert counter.count(texts) == got  # second call: from the warm cache


def test_segment_cache_is_refused_or_verified(llama2_tokenizer, tmp_path):
    from transformers import BertTokenizerFast

    from llava.data.tools.token_counter import PromptTokenCounter, segmenting_supported
    from llava.mm_utils import tokenizer_image_token

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat"]))
    bert = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    assert "model type WordPiece" in segmenting_supported(bert)
    plain = PromptTokenCounter(bert)
    # [CLS] the cat [SEP]; then ([CLS] the [SEP]), the image id, ([CLS] cat [SEP]): no BOS to drop.
    assert not plain.cached and plain.count(["the cat", "the <image> cat"]) == [4, 7]
    assert len(tokenizer_image_token("the <image> cat", bert)) == 7

    counter = PromptTokenCounter(llama2_tokenizer)
    counter._rest["cat"] = 7  # a wrong cached count must not survive the sampled check
    texts = ["the cat sat", "a cat", "no felines"]
    assert counter.count(texts) == [len(tokenizer_image_token(t, llama2_tokenizer)) for t in texts]
    assert not counter.cached


def test_worker_processes_give_the_same_report(data, llama2_tokenizer, monkeypatch):
    import llava.data.tools.validate as validate_module

    _, images, samples = data
    samples = samples * 3
    serial = validate(samples, images, llama2_tokenizer, "v1", num_workers=1, image_check="exists")
    monkeypatch.setattr(validate_module, "PARALLEL_THRESHOLD", 0)
    parallel = validate(samples, images, llama2_tokenizer, "v1", num_workers=2, image_check="exists")
    assert parallel.token_counts == serial.token_counts and len(serial.token_counts) == 27
    assert {c: [p.index for p in v] for c, v in parallel.problems.items()} == {
        c: [p.index for p in v] for c, v in serial.problems.items()
    }
