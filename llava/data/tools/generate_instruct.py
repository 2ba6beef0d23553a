"""Generate visual instruction data from captions and boxes with a text-only LLM (the LLaVA recipe).

    python -m llava.data.generate_instruct --captions caps_boxes.jsonl --kind conversation \\
        --api-base http://127.0.0.1:8000/v1 --model my-llm --out playground/data/instruct_conv.json

Each input line is ``{"id", "image", "captions": [...], "instances": [{"category", "bbox"}]}``.
The model gets the prompts of ``playground/data/prompts/<kind>/`` (system message + few-shot
examples, see its README) and the image's description; its reply becomes one sample in the LLaVA
training format ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}`` with
``<image>`` in the first human turn. Kinds shipped: ``conversation`` (multi-turn Q&A),
``detail`` (a detailed description for an instruction drawn from ``questions.txt``), ``complex``
(one reasoning question).

Replies are cached on disk by request, so an interrupted run resumes without repeating calls and
a re-run costs nothing; the output is written atomically once all samples are done. Replies that
do not follow the format are reported by id and left out (``--run N`` draws new replies).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.utils.jsonfiles import read_jsonl, write_json
from llava.utils.openai_client import CachedChatClient

REPLY_FORMATS = ("qa_pairs", "single_qa", "description")
_SEPARATOR = re.compile(r"^\s*===\s*$", re.MULTILINE)
_BLOCK = re.compile(r"^(question|answer)\s*:\s*(.*)$", re.IGNORECASE | re.DOTALL)


def default_prompts_dir() -> Path:
    local = Path("playground/data/prompts")
    return (
        local if local.is_dir() else Path(__file__).resolve().parents[2] / "playground" / "data" / "prompts"
    )


@dataclass
class PromptSet:
    kind: str
    system: str
    examples: list[tuple[str, str]]  # (image description, reply)
    use_boxes: bool
    reply_format: str
    questions: list[str]  # instructions for the "description" format

    def messages(self, description: str) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}]
        for user, assistant in self.examples:
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return msgs + [{"role": "user", "content": description}]


def load_prompts(prompts_dir: str | os.PathLike, kind: str) -> PromptSet:
    root = Path(prompts_dir)
    folder = root / kind
    if not folder.is_dir():
        kinds = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise FileNotFoundError(
            f"no prompts for --kind {kind!r} in {root} (kinds there: {kinds}); see --prompts-dir"
        )
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    reply_format = config.get("reply_format", "qa_pairs")
    if reply_format not in REPLY_FORMATS:
        raise ValueError(f"{config_path}: reply_format {reply_format!r} is not one of {REPLY_FORMATS}")
    system_path = folder / "system_message.txt"
    if not system_path.is_file():
        raise FileNotFoundError(f"{system_path} is missing: every prompt folder needs a system message")
    examples = []
    for caps in sorted(folder.glob("*_caps.txt")):
        conv = caps.with_name(caps.name.replace("_caps.txt", "_conv.txt"))
        if not conv.is_file():
            raise FileNotFoundError(f"few-shot example {caps} has no reply file {conv.name}")
        examples.append((caps.read_text(encoding="utf-8").strip(), conv.read_text(encoding="utf-8").strip()))
    questions = []
    if reply_format == "description":
        qfile = folder / config.get("questions_file", "questions.txt")
        if not qfile.is_file():
            raise FileNotFoundError(
                f"{qfile} is missing: the 'description' format draws its instructions from it"
            )
        questions = [q.strip() for q in qfile.read_text(encoding="utf-8").splitlines() if q.strip()]
    return PromptSet(kind, system_path.read_text(encoding="utf-8").strip(), examples,
                     bool(config.get("use_boxes", False)), reply_format, questions)  # fmt: skip


def validate_record(rec: dict, lineno: int, path: str, need_boxes: bool) -> None:
    where = f"{path}, line {lineno} (id {rec.get('id')!r})"
    for field in ("id", "image", "captions"):
        if field not in rec:
            raise ValueError(
                f"{where}: missing field {field!r}; each line needs id, image, captions[, instances]"
            )
    if (
        not isinstance(rec["captions"], list)
        or not rec["captions"]
        or not all(isinstance(c, str) for c in rec["captions"])
    ):
        raise ValueError(f"{where}: 'captions' must be a non-empty list of strings")
    if need_boxes:
        for inst in rec.get("instances", []):
            if "category" not in inst or len(inst.get("bbox", [])) != 4:
                raise ValueError(f"{where}: each instance needs 'category' and a 4-number 'bbox'")


def describe(rec: dict, use_boxes: bool) -> str:
    """The image description the LLM sees (same layout as the few-shot ``*_caps.txt`` files)."""
    text = "Captions:\n" + "\n".join(c.strip() for c in rec["captions"])
    if use_boxes and rec.get("instances"):
        boxes = "\n".join(
            f"{i['category']}: [{', '.join(str(round(float(v), 3)) for v in i['bbox'])}]"
            for i in rec["instances"]
        )
        text += "\n\nObjects:\n" + boxes
    return text


def parse_qa(reply: str) -> list[tuple[str, str]]:
    """``Question:``/``Answer:`` blocks separated by ``===`` lines -> [(question, answer)]; ValueError if malformed."""
    blocks = [b.strip() for b in _SEPARATOR.split(reply) if b.strip()]
    pairs, question = [], None
    for block in blocks:
        m = _BLOCK.match(block)
        label, body = (m.group(1).lower(), m.group(2).strip()) if m else (None, "")
        if label == "question" and question is None and body:
            question = body
        elif label == "answer" and question is not None and body:
            pairs.append((question, body))
            question = None
        else:
            raise ValueError(f"unexpected block {block[:60]!r}")
    if question is not None or not pairs:
        raise ValueError("the reply has no complete Question/Answer pair")
    return pairs


def pick_question(questions: Sequence[str], sample_id) -> str:
    digest = hashlib.sha256(str(sample_id).encode("utf-8")).digest()
    return questions[int.from_bytes(digest[:4], "big") % len(questions)]


def to_sample(rec: dict, reply: str, prompts: PromptSet, image_prefix: str = "") -> dict:
    if prompts.reply_format == "description":
        text = reply.strip()
        if not text:
            raise ValueError("empty description")
        pairs = [(pick_question(prompts.questions, rec["id"]), text)]
    else:
        pairs = parse_qa(reply)
        if prompts.reply_format == "single_qa":
            pairs = pairs[:1]
    conversations = []
    for i, (question, answer) in enumerate(pairs):
        human = f"{DEFAULT_IMAGE_TOKEN}\n{question}" if i == 0 else question
        conversations += [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
    return {"id": str(rec["id"]), "image": image_prefix + rec["image"], "conversations": conversations}


def generate(records, prompts: PromptSet, client: CachedChatClient, *, temperature=1.0, max_tokens=1024,
             run=0, workers=4, image_prefix="") -> tuple[list[dict], list[tuple[str, str]]]:  # fmt: skip
    """Samples in input order, and ``(id, reason)`` for the replies that could not be used."""

    def one(rec):
        salt = f"run-{run}" if run else None
        reply = client.chat(prompts.messages(describe(rec, prompts.use_boxes)), cache_salt=salt,
                            temperature=temperature, max_tokens=max_tokens)  # fmt: skip
        try:
            return to_sample(rec, reply, prompts, image_prefix), None
        except ValueError as e:
            return None, (str(rec["id"]), str(e))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(one, records), total=len(records), desc=f"generate {prompts.kind}"))
    return [s for s, _ in results if s is not None], [f for _, f in results if f is not None]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description="Generate LLaVA instruction data from captions and boxes.")
    parser.add_argument("--captions", required=True, help="caps_boxes jsonl: id, image, captions, instances")
    parser.add_argument(
        "--kind", required=True, help="conversation | detail | complex (a folder under --prompts-dir)"
    )
    parser.add_argument("--out", required=True, help="output JSON in the LLaVA training format")
    parser.add_argument(
        "--api-base", default=os.environ.get("OPENAI_BASE_URL"), help="OpenAI-compatible endpoint"
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts-dir", default=None, help="default: playground/data/prompts")
    parser.add_argument(
        "--cache-dir", default=os.path.join("~", ".cache", "llava", "openai"), help="'' to disable"
    )
    parser.add_argument(
        "--image-prefix", default="", help="prepended to each image path, e.g. coco/train2017/"
    )
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--limit", type=int, default=None, help="only the first N captions")
    parser.add_argument("--run", type=int, default=0, help="draw new replies (part of the cache key)")
    parser.add_argument("--workers", type=int, default=4, help="requests in flight at once")
    args = parser.parse_args(argv)

    prompts = load_prompts(args.prompts_dir or default_prompts_dir(), args.kind)
    records = read_jsonl(args.captions, "captions file")[: args.limit]
    if not records:
        raise SystemExit(f"{args.captions} has no captions")
    for lineno, rec in enumerate(records, 1):
        validate_record(rec, lineno, args.captions, prompts.use_boxes)
    client = CachedChatClient(args.model, api_base=args.api_base, cache_dir=args.cache_dir or None)
    samples, failed = generate(records, prompts, client, temperature=args.temperature, max_tokens=args.max_tokens,
                               run=args.run, workers=args.workers, image_prefix=args.image_prefix)  # fmt: skip
    write_json(args.out, samples, indent=2)
    print(f"wrote {len(samples)} samples to {args.out} (model calls: {client.misses}, cached: {client.hits})")
    if failed:
        shown = "; ".join(f"{i}: {why}" for i, why in failed[:10])
        print(f"Warning: {len(failed)} replies did not follow the {prompts.reply_format} format and were left out "
              f"({shown}); re-run with --run 1 to draw new replies for them")  # fmt: skip
    return samples


if __name__ == "__main__":
    main()
