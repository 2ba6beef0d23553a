"""MME scorer: ``python -m llava.eval.eval_mme --gt-dir DIR --result-file answers.jsonl [--output-dir DIR]``.

Replaces the two steps of the original recipe (``convert_answer_to_mme.py`` then MME's
``eval_tool/calculation.py``): ``--output-dir`` still writes the per-subtask
``image<TAB>question<TAB>answer<TAB>prediction`` files that MME's own tool reads.
"""

from __future__ import annotations

import argparse
import os

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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Score MME answers (perception and cognition).")
    parser.add_argument(
        "--gt-dir",
        "--data-path",
        dest="gt_dir",
        required=True,
        help="MME_Benchmark_release_version folder, or a folder of <subtask>.txt ground-truth files",
    )
    parser.add_argument(
        "--result-file", required=True, help="answers jsonl from model_vqa_loader on llava_mme.jsonl"
    )
    parser.add_argument("--output-dir", default=None, help="also write MME eval_tool result files here")
    args = parser.parse_args(argv)  # fmt: skip
    pairs = match_answers(load_ground_truth(args.gt_dir), read_jsonl(args.result_file, "MME answer file"))
    scores = score_subtasks(pairs)
    if args.output_dir:
        write_eval_tool_files(pairs, args.output_dir)
    print(report(scores))
    result = totals(scores)
    print(f"Perception: {result['perception']:.2f}  Cognition: {result['cognition']:.2f}")
    return {"subtasks": scores, **result}


if __name__ == "__main__":
    main()
