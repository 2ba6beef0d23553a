"""GPT-assisted review for LLaVA-Bench: a judge model scores two answers to each question.

The judge sees a text description of the image (captions, and for LLaVA-Bench-COCO also object
boxes), the question, answer 1 (the reference, e.g. GPT-4's) and answer 2 (the model's), then the
rule for the question's category from a ``rule.json`` (``{category: {"role", "prompt"}}``, the
original's format). Its reply starts with the two scores; each review line written is
``{"id", "question_id", "answer1_id", "answer2_id", "category", "content", "tuple"}``.

Replies are cached by request (``llava.utils.openai_client``), earlier complete reviews in the
output file are reused, and the output is written atomically, so an interrupted run resumes
for free. ``--run N`` draws an independent judge sample (the published numbers average 3 runs).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from llava.utils.jsonfiles import read_json, read_jsonl, read_jsonl_tolerant, write_jsonl
from llava.utils.openai_client import CachedChatClient

SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."
DEFAULT_MODEL = "gpt-4o"
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "llava", "openai")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)$")


def parse_score(review: str) -> list[float]:
    """The two scores on the first line ("8 9", "8, 9", "8.5 7"); ``[-1, -1]`` when they are not there."""
    first = review.strip().split("\n")[0].replace(",", " ")
    parts = first.split()
    if len(parts) == 2 and all(_NUMBER.match(p) for p in parts):
        return [float(parts[0]), float(parts[1])]
    return [-1.0, -1.0]


def context_text(context: dict, with_boxes: bool) -> str:
    """The image description given to the judge: captions (and "category: [x1, y1, x2, y2]" boxes)."""
    captions = context.get("captions", context.get("caption"))
    if captions is None:
        raise KeyError(f"context for image {context.get('image')!r} has no 'caption(s)' field")
    text = "\n".join(captions) if isinstance(captions, list) else str(captions)
    if with_boxes:
        boxes = "\n".join(f"{inst['category']}: {inst['bbox']}" for inst in context.get("instances", []))
        text = f"{text}\n\n{boxes}"
    return text


def judge_content(context: str, question: str, answer1: str, answer2: str, rule: dict) -> str:
    role, prompt = rule["role"], rule["prompt"]
    return (
        f"[Context]\n{context}\n\n"
        f"[Question]\n{question}\n\n"
        f"[{role} 1]\n{answer1}\n\n[End of {role} 1]\n\n"
        f"[{role} 2]\n{answer2}\n\n[End of {role} 2]\n\n"
        f"[System]\n{prompt}\n\n"
    )


def build_jobs(
    questions, contexts, answers1, answers2, rules, *, with_boxes: bool, category_prefix: str
) -> list[dict]:
    """One job per question: the review record without ``content``/``tuple`` plus the judge text."""
    by_image = {c["image"]: c for c in contexts}
    a1 = {a["question_id"]: a for a in answers1}
    a2 = {a["question_id"]: a for a in answers2}
    jobs = []
    for idx, q in enumerate(questions):
        qid = q["question_id"]
        for name, table in (("first", a1), ("second", a2)):
            if qid not in table:
                raise KeyError(f"question {qid} has no answer in the {name} --answer-list file")
        if q["image"] not in by_image:
            raise KeyError(f"question {qid}: image {q['image']!r} has no entry in the --context file")
        category = category_prefix + q["category"]
        if category not in rules:
            raise KeyError(
                f"question {qid}: category {category!r} not in the rule file (has {sorted(rules)})"
            )
        ans1, ans2 = a1[qid], a2[qid]
        content = judge_content(
            context_text(by_image[q["image"]], with_boxes),
            q["text"],
            ans1["text"],
            ans2["text"],
            rules[category],
        )
        record = {
            "id": idx + 1,
            "question_id": qid,
            "answer1_id": ans1.get("answer_id", ans1["question_id"]),
            "answer2_id": ans2.get("answer_id", ans2["question_id"]),
            "category": category,
        }
        jobs.append({"record": record, "content": content})
    return jobs


def _reuse_key(record: dict) -> tuple:
    return record["question_id"], record["answer1_id"], record["answer2_id"], record["category"]


def run_reviews(
    jobs: Sequence[dict],
    client: CachedChatClient,
    *,
    max_tokens: int = 1024,
    temperature: float = 0.2,
    run: int = 0,
    previous: Sequence[dict] = (),
    workers: int = 4,
) -> list[dict]:
    """Ask the judge for every job (reusing ``previous`` reviews of the same answers); returns review lines."""
    done = {_reuse_key(r): r for r in previous if "content" in r and "tuple" in r}

    def review(job: dict) -> dict:
        old = done.get(_reuse_key(job["record"]))
        if old is not None:
            return {**job["record"], "content": old["content"], "tuple": old["tuple"]}
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": job["content"]}]
        salt = f"run-{run}" if run else None
        text = client.chat(messages, cache_salt=salt, temperature=temperature, max_tokens=max_tokens)
        return {**job["record"], "content": text, "tuple": parse_score(text)}

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(tqdm(pool.map(review, jobs), total=len(jobs), desc="reviews"))


def main(argv=None, *, with_boxes: bool, category_prefix: str, description: str) -> list[dict]:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-q", "--question", required=True)
    parser.add_argument("-c", "--context", required=True)
    parser.add_argument(
        "-a", "--answer-list", nargs=2, required=True, help="reference answers, then model answers"
    )
    parser.add_argument("-r", "--rule", required=True)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument(
        "--max-tokens", type=int, default=1024, help="maximum number of tokens produced in the output"
    )
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument(
        "--api-base", default=os.environ.get("OPENAI_BASE_URL"), help="OpenAI-compatible endpoint"
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="judge model (the published numbers used gpt-4-0314)"
    )
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help="judge reply cache ('' to disable)")
    parser.add_argument("--run", type=int, default=0, help="independent judge sample number (0, 1, 2, ...)")
    parser.add_argument("--workers", type=int, default=4, help="requests in flight at once")
    args = parser.parse_args(argv)

    jobs = build_jobs(
        read_jsonl(args.question, "question file"),
        read_jsonl(args.context, "context file"),
        read_jsonl(args.answer_list[0], "reference answer file"),
        read_jsonl(args.answer_list[1], "model answer file"),
        read_json(args.rule, "rule file"),
        with_boxes=with_boxes,
        category_prefix=category_prefix,
    )
    client = CachedChatClient(args.model, api_base=args.api_base, cache_dir=args.cache_dir or None)
    reviews = run_reviews(
        jobs,
        client,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        run=args.run,
        previous=read_jsonl_tolerant(args.output),
        workers=args.workers,
    )
    write_jsonl(args.output, reviews)
    bad = sum(r["tuple"] == [-1.0, -1.0] for r in reviews)
    print(
        f"wrote {len(reviews)} reviews to {args.output} (judge calls: {client.misses}, cached: {client.hits})"
    )
    if bad:
        print(f"Warning: {bad} reviews have no parsable score line (tuple [-1, -1])")
    return reviews
