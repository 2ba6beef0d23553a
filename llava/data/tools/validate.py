"""Check every sample of a LLaVA training file before a long run.

    python -m llava.data.validate --data_path llava_v1_5_mix665k.json --image_folder ./playground/data \\
        --version v1 --model_name_or_path lmsys/vicuna-7b-v1.5 --model_max_length 2048 \\
        [--image_aspect_ratio pad] [--decode_images --num_workers 8] [--output_clean_json clean.json]

Checks: the JSON schema (a list of {"id", "image"?, "conversations": [{"from", "value"}]}), roles
alternating human/gpt, the `<image>` markers matching the "image" field, the image file existing
and opening as an image (a header check, by default; every pixel decoded with --decode_images),
and, with a tokenizer, the sample rendered with the --version template and tokenised as training
does fitting --model_max_length together with its image tokens (with --allow_too_long, an
over-long sample is kept only when training's cut of it works). Prints the count of each problem
with the first sample ids, and writes the samples without errors to --output_clean_json
(atomically). Exits 1 when any sample has an error. Warnings (missing or duplicate ids) do not
remove samples.

Token counts equal training's (`tokenizer_image_token` on the rendered prompt, see
`llava.data.tools.token_counter` for how they are computed quickly); each image adds
--num_image_tokens (576 for CLIP ViT-L/14-336). The flags make the same SampleFormat training
uses (llava.data.sample_format), and whether a sample is too long, and what training cuts it to,
is its length budget's answer (llava.data.length_budget), so the validator and the trainer agree.
"v0" and "v0.5" use the default template, as training does.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN
from llava.data.dataset import check_sample_shape, load_samples
from llava.data.preprocess import (
    ASSISTANT_ROLES,
    HUMAN_ROLES,
    SampleError,
    preprocess_multimodal,
    render_sample,
    resolve_conversation,
)
from llava.data.sample_format import SampleFormat, template_for_version
from llava.data.tools.image_check import IMAGE_CHECKS, image_problem
from llava.data.tools.token_counter import PromptTokenCounter

# category -> what it means; the order is the order of the report.
ERRORS = {
    "schema": "not a sample object with a non-empty 'conversations' list of {'from', 'value'} strings",
    "unknown_role": "a turn whose 'from' is not human/gpt (or a leading system turn)",
    "roles_not_alternating": "human and gpt turns do not alternate",
    "empty_turn": "a turn with an empty value",
    "no_reply": "no gpt reply to train on",
    "image_token_mismatch": "<image> markers do not match the 'image' field",
    "missing_image": "image file not found under --image_folder",
    "corrupt_image": "image file is not a readable image (--image_check header; decode: every pixel)",
    "template_error": "the --version template cannot render the conversation",
    "too_long": "text + image tokens exceed --model_max_length (training would truncate it)",
    "cut_fails": "too long, and training's cut would drop its image or every target (even if allowed)",
}
WARNINGS = {
    "missing_id": "sample has no 'id'",
    "duplicate_id": "'id' used by an earlier sample",
}


@dataclass
class Problem:
    index: int
    sample_id: object
    message: str


@dataclass
class ValidationReport:
    total: int
    problems: dict[str, list[Problem]] = field(default_factory=dict)
    token_counts: dict[int, int] = field(default_factory=dict)  # index -> text + image tokens
    cut_to: dict[int, int] = field(default_factory=dict)  # too-long index -> its tokens after training's cut
    tolerated: frozenset[str] = frozenset()  # error categories reported as warnings instead

    def add(self, category: str, index: int, sample_id, message: str) -> None:
        """Record a problem; the message is prefixed with the sample's id and index."""
        message = f"sample {sample_id!r} (#{index}): {message}"
        self.problems.setdefault(category, []).append(Problem(index, sample_id, message))

    def _tables(self) -> tuple[dict[str, str], dict[str, str]]:
        errors = {c: d for c, d in ERRORS.items() if c not in self.tolerated}
        return errors, {**WARNINGS, **{c: d for c, d in ERRORS.items() if c in self.tolerated}}

    @property
    def bad_indices(self) -> set[int]:
        errors = self._tables()[0]
        return {p.index for cat, probs in self.problems.items() if cat in errors for p in probs}

    @property
    def num_errors(self) -> int:
        return len(self.bad_indices)

    def counts(self) -> dict[str, int]:
        return {cat: len(self.problems[cat]) for cat in (*ERRORS, *WARNINGS) if cat in self.problems}

    def summary(self, max_ids: int = 5) -> str:
        lines = [
            f"{self.total} samples: {self.total - self.num_errors} usable, {self.num_errors} with errors"
        ]
        for title, table in zip(("errors", "warnings"), self._tables()):
            cats = [c for c in table if c in self.problems]
            if cats:
                lines.append(f"{title}:")
            for cat in cats:
                probs = self.problems[cat]
                ids = ", ".join(f"{p.sample_id!r} (#{p.index})" for p in probs[:max_ids])
                more = f" and {len(probs) - max_ids} more" if len(probs) > max_ids else ""
                lines.append(f"  {cat:<22} {len(probs):>8}  ({table[cat]})")
                lines.append(f"      e.g. {probs[0].message}")
                lines.append(f"      samples: {ids}{more}")
        if self.token_counts:
            counts = sorted(self.token_counts.values())
            lines.append(
                f"tokens per sample (text + image): max {counts[-1]}, "
                f"p99 {counts[min(len(counts) - 1, int(0.99 * len(counts)))]}, median {counts[len(counts) // 2]}"
            )
        return "\n".join(lines)


# ------------------------------------------------------------------------------ per-sample checks
def conversation_problem(sample: dict) -> tuple[str, str] | None:
    """(category, message) of the first structural problem of `sample`, or None.

    Follows `preprocess`: an optional leading system turn, a leading gpt turn skipped, then
    human/gpt alternating; `<image>` markers only in human turns, one per image.
    """
    shape = check_sample_shape(sample, is_multimodal=True)
    if shape:
        return "schema", shape
    turns = sample["conversations"]
    for j, turn in enumerate(turns):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("from"), str)
            or not isinstance(turn.get("value"), str)
        ):
            return "schema", f"turn {j} is not an object with string 'from' and 'value': {str(turn)[:80]}"
    roles = [t["from"].lower() for t in turns]
    start = 1 if roles[0] == "system" else 0
    if start < len(roles) and roles[start] in ASSISTANT_ROLES:
        start += 1  # preprocess drops a leading assistant turn, as the original did
    markers = 0
    for j in range(start, len(turns)):
        role, value, k = roles[j], turns[j]["value"], j - start
        if role not in HUMAN_ROLES + ASSISTANT_ROLES:
            return "unknown_role", f"turn {j} has role {turns[j]['from']!r}; expected human or gpt"
        if (role in ASSISTANT_ROLES) != (k % 2 == 1):
            return (
                "roles_not_alternating",
                f"turn {j} is {turns[j]['from']!r} where a {'gpt' if k % 2 else 'human'} turn belongs",
            )
        if not value.strip():
            return "empty_turn", f"turn {j} ({turns[j]['from']!r}) is empty"
        if k % 2 == 1 and DEFAULT_IMAGE_TOKEN in value:
            return "image_token_mismatch", f"gpt turn {j} contains {DEFAULT_IMAGE_TOKEN}"
        markers += value.count(DEFAULT_IMAGE_TOKEN)
    if len(turns) - start < 2:
        return "no_reply", "no gpt reply to train on (need a human turn followed by a gpt turn)"
    images = 1 if "image" in sample else 0
    if markers != images:
        return "image_token_mismatch", f"{markers} {DEFAULT_IMAGE_TOKEN} marker(s) for {images} image(s)"
    return None


def _check_images(samples, indices, image_folder, check, num_workers, report) -> set[int]:
    """Record missing (and, unless `check` is "exists", unreadable) images of the samples at `indices`;
    returns the bad ones."""
    paths = {i: os.path.join(image_folder or "", samples[i]["image"]) for i in indices}
    unique = sorted(set(paths.values()))
    if check == "exists":
        results = {path: image_problem(path, check) for path in unique}
    else:  # PIL decodes (and zlib checks CRCs) without the GIL: threads use the cores
        from tqdm import tqdm

        desc = "decoding images" if check == "decode" else "checking image headers"
        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            found = pool.map(lambda path: image_problem(path, check), unique)
            results = dict(zip(unique, tqdm(found, total=len(unique), desc=desc, mininterval=2,
                                            disable=len(unique) < 10000)))  # fmt: skip
    bad = set()
    for i, path in paths.items():
        if results[path]:
            category, message = results[path]
            report.add(category, i, samples[i].get("id"), message)
            bad.add(i)
    return bad


# ------------------------------------------------------------------------------ rendering + token counts
PARALLEL_THRESHOLD = 20000  # samples; below this, starting worker processes costs more than it saves


def count_prompt_tokens(prompts: list[str], tokenizer) -> list[int]:
    """``len(tokenizer_image_token(p, tokenizer))`` (each `<image>` one id) for every prompt."""
    return PromptTokenCounter(tokenizer).count(prompts, progress=len(prompts) >= 50000)


def render_and_count(samples: list[dict], tokenizer, fmt: SampleFormat):
    """For each sample (already structurally checked): ``(prompt token count or None, SampleError reason or None)``.

    Renders as the dataset does (`preprocess_multimodal`, then the template of `fmt`) and counts as
    `tokenizer_image_token` does (before any cut); counts are None without a tokenizer.
    """
    conv = resolve_conversation(fmt.template, tokenizer)
    prompts, out = [], []
    for sample in samples:
        has_image = "image" in sample
        source = [dict(turn) for turn in sample["conversations"]]
        if has_image:
            source = preprocess_multimodal([source], fmt, conv=conv)[0]
        try:
            prompt, _ = render_sample(source, tokenizer, conv, int(has_image), sample.get("id"))
        except SampleError as e:
            out.append((None, e.reason))
            continue
        prompts.append(prompt)
        out.append((len(prompts) - 1, None))
    if tokenizer is None:
        return [(None, reason) for _, reason in out]
    counts = PromptTokenCounter(tokenizer).count(prompts)
    return [(counts[k] if k is not None else None, reason) for k, reason in out]


def _render_and_count_all(samples: list[dict], tokenizer, fmt: SampleFormat, num_workers: int):
    """`render_and_count` over all samples, split across forked worker processes for large inputs."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    workers = min(num_workers, os.cpu_count() or 1)
    if len(samples) < PARALLEL_THRESHOLD or workers <= 1 or "fork" not in mp.get_all_start_methods():
        return render_and_count(samples, tokenizer, fmt)
    size = -(-len(samples) // workers)
    parts = [samples[k : k + size] for k in range(0, len(samples), size)]
    # fork: the workers start without re-importing torch/transformers.
    with ProcessPoolExecutor(len(parts), mp_context=mp.get_context("fork")) as pool:
        futures = [pool.submit(render_and_count, part, tokenizer, fmt) for part in parts]
        return [row for f in futures for row in f.result()]


# ------------------------------------------------------------------------------ the whole file
def validate(
    samples: list[dict],
    image_folder: str | None = None,
    tokenizer=None,
    version: str | None = "v1",
    model_max_length: int = 2048,
    num_image_tokens: int = 576,
    check_images: bool = False,
    num_workers: int = 1,
    mm_use_im_start_end: bool = False,
    allow_too_long: bool = False,
    image_aspect_ratio: str | None = "square",
    image_check: str = "header",
) -> ValidationReport:
    """Check `samples` (the loaded JSON list); see the module docstring.

    `image_check`: "exists", "header" (default: every image opened and verified) or "decode" (every
    pixel); `check_images=True` (the old flag) means "decode".
    `num_workers`: threads checking images, and processes rendering/tokenising files of
    PARALLEL_THRESHOLD samples or more (worth it on free cores; on a busy machine 1 is faster).
    With `mm_use_im_start_end` the im_start/im_end tokens are added to `tokenizer`, as training does.
    `allow_too_long`: over-long samples are warnings (training cuts them) and stay in the clean file;
    those whose cut fails in training (it would drop the image or leave no target) stay errors
    ("cut_fails"), found by tokenising and cutting them exactly as the dataset does.
    The arguments make the SampleFormat training would use (without a model); its length budget
    decides what is too long, and `report.cut_to` what training cuts each such sample to.
    """
    if image_check not in IMAGE_CHECKS:
        raise ValueError(f"unknown image_check {image_check!r}; valid: {IMAGE_CHECKS}")
    if check_images:
        image_check = "decode"
    report = ValidationReport(total=len(samples), tolerated=frozenset({"too_long"} if allow_too_long else ()))
    fmt = SampleFormat(  # an unknown --version: ValueError listing the names
        template_for_version(version),
        model_max_length,
        is_multimodal=True,
        mm_use_im_start_end=mm_use_im_start_end,
        image_aspect_ratio=image_aspect_ratio,
        num_image_tokens=num_image_tokens,
    )
    budget = fmt.budget
    seen: set = set()
    good = []
    for i, sample in enumerate(samples):
        sid = sample.get("id")
        if sid is None:
            report.add("missing_id", i, None, "no 'id'")
        elif isinstance(sid, (str, int)):
            if sid in seen:
                report.add("duplicate_id", i, sid, "this id was used by an earlier sample")
            seen.add(sid)
        problem = conversation_problem(sample)
        if problem:
            report.add(problem[0], i, sid, problem[1])
        else:
            good.append(i)
    with_image = [i for i in good if "image" in samples[i]]
    bad = _check_images(samples, with_image, image_folder, image_check, num_workers, report)
    good = [i for i in good if i not in bad]

    if tokenizer is not None and mm_use_im_start_end:
        tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
    rows = _render_and_count_all([samples[i] for i in good], tokenizer, fmt, num_workers)
    for i, (n, reason) in zip(good, rows):
        sid = samples[i].get("id")
        if reason is not None:
            report.add("template_error", i, sid, reason)
        if n is None:
            continue
        images = 1 if "image" in samples[i] else 0
        text = n - images
        total = budget.cost(text, images)
        report.token_counts[i] = total
        if budget.too_long(text, images):
            failure = _cut_failure(samples[i], tokenizer, fmt)
            if failure is not None:
                message = f"{total} tokens > --model_max_length {model_max_length}: {failure}"
                report.add("cut_fails", i, sid, message)
                continue
            report.cut_to[i] = budget.trained_length(text, images)
            report.add(
                "too_long",
                i,
                sid,
                f"{total} tokens ({text} text + {total - text} image) > --model_max_length "
                f"{model_max_length} (training cuts it to {report.cut_to[i]})",
            )
    return report


def _cut_failure(sample: dict, tokenizer, fmt: SampleFormat) -> str | None:
    """Why training's one cut of this over-long sample fails (it would drop an image or every target),
    or None: the dataset's own path (`SampleFormat.tokenize`), so the two cannot disagree."""
    try:
        fmt.tokenize(sample, tokenizer)
    except SampleError as e:
        return e.reason
    return None


def write_clean(samples: list, report: ValidationReport, path: str) -> int:
    """Write the samples without errors to `path` (JSON list, or JSON lines for .jsonl), atomically."""
    import json

    from llava.utils.atomic import atomic_write_text

    keep = [s for i, s in enumerate(samples) if i not in report.bad_indices]
    if str(path).endswith(".jsonl"):
        text = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in keep)
    else:
        text = json.dumps(keep, ensure_ascii=False)
    atomic_write_text(path, text)
    return len(keep)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_path", required=True, help="the training JSON (list) or JSON-lines file")
    p.add_argument("--image_folder", default=None, help="folder the 'image' fields are relative to")
    p.add_argument("--version", default="v1", help="conversation template, as in training (default v1)")
    p.add_argument(
        "--model_name_or_path", default=None, help="tokenizer for the length check (skipped without)"
    )
    p.add_argument("--model_max_length", type=int, default=2048, help="as in training (LLaVA-1.5: 2048)")
    p.add_argument("--num_image_tokens", type=int, default=576, help="tokens per image (CLIP-L/336: 576)")
    p.add_argument("--mm_use_im_start_end", action="store_true")
    p.add_argument(
        "--image_aspect_ratio",
        default="square",
        help="as in training (square, pad, anyres): anyres images are cut as their placeholder only",
    )
    p.add_argument(
        "--allow_too_long", action="store_true", help="keep over-long samples (training cuts them): a warning"
    )
    p.add_argument(
        "--image_check",
        choices=IMAGE_CHECKS,
        default="header",
        help="exists: the file only; header (default): opened and verified, which finds files that are no "
        "image and truncated PNGs; decode: every pixel decoded, as training does (slow)",
    )
    p.add_argument(
        "--check_images",  # the old name, kept
        "--decode_images",
        dest="decode_images",
        action="store_true",
        help="--image_check decode (--check_images: its old name)",
    )
    p.add_argument(
        "--num_workers",
        type=int,
        default=1,
        help="threads decoding images and, for files of 20K+ samples, processes tokenising (use free cores)",
    )
    p.add_argument("--output_clean_json", default=None, help="write the samples without errors here")
    p.add_argument("--max_ids", type=int, default=5, help="sample ids listed per problem")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    samples = load_samples(args.data_path)
    tokenizer = None
    if args.model_name_or_path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    image_check = "decode" if args.decode_images else args.image_check
    report = validate(
        samples,
        image_folder=args.image_folder,
        tokenizer=tokenizer,
        version=args.version,
        model_max_length=args.model_max_length,
        num_image_tokens=args.num_image_tokens,
        image_check=image_check,
        num_workers=args.num_workers,
        mm_use_im_start_end=args.mm_use_im_start_end,
        allow_too_long=args.allow_too_long,
        image_aspect_ratio=args.image_aspect_ratio,
    )
    checks = "images " + {"exists": "exist (not opened)", "header": "exist and open (header check)",
                          "decode": "exist and decode"}[image_check]  # fmt: skip
    checks += (
        f", tokens with {args.version!r} <= {args.model_max_length}" if tokenizer else ", no length check"
    )
    print(f"{args.data_path} ({checks})")
    print(report.summary(args.max_ids))
    if args.output_clean_json:
        kept = write_clean(samples, report, args.output_clean_json)
        print(f"wrote {kept} samples to {args.output_clean_json}")
    return 1 if report.num_errors else 0


if __name__ == "__main__":
    sys.exit(main())
