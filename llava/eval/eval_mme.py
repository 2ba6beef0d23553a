"""MME scorer: ``python -m llava.eval.eval_mme --gt-dir DIR --result-file answers.jsonl [--output-dir DIR]``.

Replaces the two steps of the original recipe (``convert_answer_to_mme.py`` then MME's
``eval_tool/calculation.py``): ``--output-dir`` still writes the per-subtask
``image<TAB>question<TAB>answer<TAB>prediction`` files that MME's own tool reads.
"""

from __future__ import annotations

import argparse
import os

from llava.eval.lmms_parquet import is_parquet_source
from llava.eval.lmms_parquet_truth import mme_truth
from llava.eval.scorers.mme import (
    COGNITION,
    PERCEPTION,
    load_ground_truth,
    match_answers,
    score_subtasks,
    totals,
)
from llava.utils.atomic import atomic_write_text
from llava.utils.jsonfiles import read_jsonl


def report(scores: dict) -> str:
    lines = []
    for title, names in (("Perception", PERCEPTION), ("Cognition", COGNITION)):
        present = [scores[n] for n in names if n in scores]
        if not present:
            continue
        lines += [f"=========== {title} ===========", f"total score: {sum(s.score for s in present):.2f}", ""]
        lines += [
            f"\t {s.subtask}  score: {s.score:.2f} (acc {100 * s.acc:.2f}, acc+ {100 * s.acc_plus:.2f})"
            for s in present
        ]
        lines.append("")
    return "\n".join(lines)


def write_eval_tool_files(pairs, output_dir: str) -> None:
    by_subtask: dict[str, list[str]] = {}
    for gt, text in pairs:
        pred = " ".join(text.split())  # one line per question in MME's format
        by_subtask.setdefault(gt.subtask, []).append(
            "\t".join((gt.image, gt.question, gt.answer, pred)) + "\n"
        )
    for subtask, lines in by_subtask.items():
        atomic_write_text(os.path.join(output_dir, f"{subtask}.txt"), "".join(lines))


def _is_mme_parquet(gt_dir: str) -> bool:
    """A parquet file/glob, or a folder of parquet shards (not MME's own folders of .txt files)."""
    if os.path.isdir(gt_dir):
        return any(
            n.endswith((".parquet", ".arrow")) or n == "state.json"
            for _, _, fs in os.walk(gt_dir)
            for n in fs
        )
    return is_parquet_source(gt_dir)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Score MME answers (perception and cognition).")
    parser.add_argument(
        "--gt-dir",
        "--data-path",
        dest="gt_dir",
        required=True,
        help="MME_Benchmark_release_version folder, a folder of <subtask>.txt ground-truth files, "
        "or lmms-lab's MME parquet",
    )
    parser.add_argument(
        "--result-file", required=True, help="answers jsonl from model_vqa_loader on llava_mme.jsonl"
    )
    parser.add_argument("--output-dir", default=None, help="also write MME eval_tool result files here")
    args = parser.parse_args(argv)  # fmt: skip
    truth = mme_truth(args.gt_dir) if _is_mme_parquet(args.gt_dir) else load_ground_truth(args.gt_dir)
    pairs = match_answers(truth, read_jsonl(args.result_file, "MME answer file"))
    scores = score_subtasks(pairs)
    if args.output_dir:
        write_eval_tool_files(pairs, args.output_dir)
    print(report(scores))
    result = totals(scores)
    print(f"Perception: {result['perception']:.2f}  Cognition: {result['cognition']:.2f}")
    return {"subtasks": scores, **result}


if __name__ == "__main__":
    main()
