"""Check every sample of a LLaVA / LLaVA-NeXT / OneVision training file before a long run.

    python -m llava.data.validate --data_path llava_v1_5_mix665k.json --image_folder ./playground/data \\
        --version v1 --model_name_or_path lmsys/vicuna-7b-v1.5 --model_max_length 2048 \\
        [--image_aspect_ratio anyres_max_9 --image_grid_pinpoints "(1x1),...,(6x6)" --vision_tower TOWER ...]
        [--video_folder ./videos --frames_upbound 32] [--image_check decode --num_workers 8]
        [--output_clean_json clean.json]

Checks: the JSON schema ({"id", "image"?: name or [names], "video"?: name, "conversations": [{"from",
"value"}]}, not both image and video), roles alternating human/gpt, one `<image>` per image (a video
takes one), every image existing and opening (a header check; every pixel with --image_check decode),
every video probed as training probes it (decode: its sampled frames decoded), and, with a tokenizer,
the sample rendered with the --version template and tokenised as training does fitting
--model_max_length with its visual tokens (with --allow_too_long an over-long sample is kept when
training's cut of it works). Prints each problem's count and first sample ids and the samples per
modality, writes the samples without errors to --output_clean_json (atomically), and exits 1 when any
sample has an error. Warnings (missing or duplicate ids) do not remove samples.

Token counts equal training's: the flags (training's names and defaults: llava.data.tools.visual_check)
make training's SampleFormat, whose `visual_tokens` count each image (anyres: from its size) and video
(its sampled frames); the text counts as `tokenizer_image_token` (llava.data.tools.token_counter); the
format's length budget says what is too long and what training cuts it to (llava.data.length_budget).
"v0" and "v0.5" use the default template, as training does.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN
from llava.data.dataset import check_sample_shape
from llava.data.preprocess import (
    ASSISTANT_ROLES,
    HUMAN_ROLES,
    SampleError,
    preprocess_multimodal,
    render_sample,
    resolve_conversation,
)
from llava.data.sample_format import SampleFormat, template_for_version
from llava.data.tools.image_check import IMAGE_CHECKS
from llava.data.tools.token_counter import PromptTokenCounter
from llava.data.tools.validate_inputs import embeds, read_samples
from llava.data.tools.visual_check import (
    add_visual_flags,
    check_format,
    check_visuals,
    describe_visuals,
    sample_format_from_flags,
)
from llava.data.visuals import VIDEO, num_visuals, sample_modality, visual_names

# category -> what it means; the order is the order of the report.
ERRORS = {
    "schema": "not a sample object with a non-empty 'conversations' list of {'from', 'value'} strings, "
    "or bad 'image' / 'video' fields",
    "unknown_role": "a turn whose 'from' is not human/gpt (or a leading system turn)",
    "roles_not_alternating": "human and gpt turns do not alternate",
    "empty_turn": "a turn with an empty value",
    "no_reply": "no gpt reply to train on",
    "image_token_mismatch": "<image> markers do not match the 'image' field (one each) or 'video' (one)",
    "missing_image": "image file not found under --image_folder",
    "corrupt_image": "image file is not a readable image (--image_check header; decode: every pixel)",
    "missing_video": "video file or frames folder not found under --video_folder (else --image_folder)",
    "corrupt_video": "not a usable video: unreadable, no video stream, a still image or no frames "
    "(--image_check decode: its sampled frames do not decode)",
    "template_error": "the --version template cannot render the conversation",
    "too_long": "text + visual tokens exceed --model_max_length (training would truncate it)",
    "cut_fails": "too long, and training's cut would drop an image or video, or every target (even if allowed)",
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
    token_counts: dict[int, int] = field(default_factory=dict)  # index -> text + visual tokens (before a cut)
    cut_to: dict[int, int] = field(default_factory=dict)  # too-long index -> its tokens after training's cut
    tolerated: frozenset[str] = frozenset()  # error categories reported as warnings instead
    modalities: dict[str, int] = field(default_factory=dict)  # text / image / multi_image / video -> samples

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
        if self.modalities:
            order = [m for m in ("text", "image", "multi_image", "video") if m in self.modalities]
            lines.append("by modality: " + ", ".join(f"{m} {self.modalities[m]}" for m in order))
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
                f"tokens per sample (text + visual): max {counts[-1]}, "
                f"p99 {counts[min(len(counts) - 1, int(0.99 * len(counts)))]}, median {counts[len(counts) // 2]}"
            )
        return "\n".join(lines)


# ------------------------------------------------------------------------------ per-sample checks
def conversation_problem(sample: dict) -> tuple[str, str] | None:
    """(category, message) of the first structural problem of `sample`, or None.

    Follows `preprocess`: an optional leading system turn, a leading gpt turn skipped, then
    human/gpt alternating; `<image>` markers only in human turns, one per image (a video: one).
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
    kind, names = visual_names(sample)
    if markers != len(names):
        what = "1 video (a video takes one)" if kind == VIDEO else f"{len(names)} image(s)"
        return "image_token_mismatch", f"{markers} {DEFAULT_IMAGE_TOKEN} marker(s) for {what}"
    return None


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
        visuals = num_visuals(sample)
        source = [dict(turn) for turn in sample["conversations"]]
        if visuals:
            source = preprocess_multimodal([source], fmt, conv=conv)[0]
        try:
            prompt, _ = render_sample(source, tokenizer, conv, visuals, sample.get("id"))
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
    *,
    video_folder: str | None = None,
    sample_format: SampleFormat | None = None,
) -> ValidationReport:
    """Check `samples` (the loaded JSON list); see the module docstring.

    `sample_format`: the format to count with (the CLI's: `sample_format_from_flags`); without it
    `version`, `model_max_length`, `num_image_tokens`, `mm_use_im_start_end` and `image_aspect_ratio`
    make one. `image_check`: "exists", "header" (default) or "decode" (`check_images=True`, the old flag).
    `video_folder`: where `video` names are (default `image_folder`, as the dataset). `num_workers`:
    threads checking files, and processes tokenising files of PARALLEL_THRESHOLD samples or more.
    With im_start/end the tokens are added to `tokenizer`, as training does. `allow_too_long`:
    over-long samples are warnings and stay in the clean file, unless training's cut of them fails
    ("cut_fails": tokenised and cut as the dataset does). `token_counts` are before the cut,
    `cut_to` after it: the dataset's `lengths` are `cut_to.get(i, token_counts[i])`.
    """
    if image_check not in IMAGE_CHECKS:
        raise ValueError(f"unknown image_check {image_check!r}; valid: {IMAGE_CHECKS}")
    if check_images:
        image_check = "decode"
    report = ValidationReport(total=len(samples), tolerated=frozenset({"too_long"} if allow_too_long else ()))
    fmt = sample_format or SampleFormat(  # an unknown --version: ValueError listing the names
        template_for_version(version), model_max_length, is_multimodal=True, mm_use_im_start_end=mm_use_im_start_end,
        image_aspect_ratio=image_aspect_ratio, num_image_tokens=num_image_tokens)  # fmt: skip
    check_format(fmt)
    budget = fmt.budget
    seen: set = set()
    good = []
    for i, sample in enumerate(samples):
        sid = sample.get("id")
        modality = sample_modality(sample)
        report.modalities[modality] = report.modalities.get(modality, 0) + 1
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
    with_visuals = [i for i in good if num_visuals(samples[i])]
    found = check_visuals(samples, with_visuals, fmt, image_folder, video_folder, image_check, num_workers)
    for i, (category, message) in sorted(found.problems.items()):
        report.add(category, i, samples[i].get("id"), message)
    good = [i for i in good if i not in found.problems]

    if tokenizer is not None and fmt.mm_use_im_start_end:
        tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
    rows = _render_and_count_all([samples[i] for i in good], tokenizer, fmt, num_workers)
    for i, (n, reason) in zip(good, rows):
        sid = samples[i].get("id")
        if reason is not None:
            report.add("template_error", i, sid, reason)
        if n is None:
            continue
        costs = found.costs.get(i, [])
        text = n - len(costs)
        total = budget.cost(text, costs)
        report.token_counts[i] = total
        if budget.too_long(text, costs):
            failure = _cut_failure(samples[i], tokenizer, fmt, costs)
            what = describe_visuals(samples[i], costs, found.infos.get(i), fmt)
            message = f"{total} tokens ({text} text + {what}) > --model_max_length {fmt.model_max_length}"
            if failure is not None:
                report.add("cut_fails", i, sid, f"{message}: {failure}")
                continue
            report.cut_to[i] = budget.trained_length(text, costs)
            report.add("too_long", i, sid, f"{message} (training cuts it to {report.cut_to[i]})")
    return report


def _cut_failure(sample: dict, tokenizer, fmt: SampleFormat, costs: list[int]) -> str | None:
    """Why training's one cut of this over-long sample fails (it would drop a visual or every target),
    or None: the dataset's own path (`SampleFormat.tokenize` with the same visual costs), so the two
    cannot disagree."""
    try:
        fmt.tokenize(sample, tokenizer, costs)
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
    add = p.add_argument
    add("--data_path", required=True, help="the training JSON (list) or JSON-lines file")
    add("--image_folder", default=None, help="folder the 'image' fields are relative to")
    add("--version", default="v1", help="conversation template, as in training (default v1)")
    add("--model_name_or_path", default=None, help="tokenizer for the length check (skipped without)")
    add("--model_max_length", type=int, default=2048, help="as in training (LLaVA-1.5: 2048)")
    add("--allow_too_long", action="store_true", help="keep over-long samples (training cuts them): a warning")  # fmt: skip
    add_visual_flags(p)  # --video_folder, image modes, tower, video sampling (training's), --image_check
    add("--num_workers", type=int, default=1,
        help="threads checking files and, for files of 20K+ samples, processes tokenising (use free cores)")  # fmt: skip
    add("--output_clean_json", default=None, help="write the samples without errors here")
    add("--max_ids", type=int, default=5, help="sample ids listed per problem")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    fmt = sample_format_from_flags(args)  # bad flags fail before the file is read
    samples = read_samples(args.data_path)
    if args.output_clean_json and any(embeds(s) for s in samples):
        raise SystemExit(
            f"--output_clean_json writes JSON, and {args.data_path} embeds its images or videos: convert the "
            "clean samples with python -m llava.data.convert instead"
        )
    tokenizer = None
    if args.model_name_or_path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    image_check = "decode" if args.decode_images else args.image_check
    report = validate(samples, args.image_folder, tokenizer, image_check=image_check, num_workers=args.num_workers,
                      allow_too_long=args.allow_too_long, video_folder=args.video_folder, sample_format=fmt)  # fmt: skip
    checks = "images " + {"exists": "exist (not opened)", "header": "exist and open (header check)",
                          "decode": "exist and decode"}[image_check]  # fmt: skip
    checks += ", videos probed" + (" and their sampled frames decoded" if image_check == "decode" else "")
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
