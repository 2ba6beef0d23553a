"""POPE scorer: ``python -m llava.eval.eval_pope --annotation-dir DIR --question-file Q --result-file A``.

Prints, per split, the confusion counts and accuracy / precision / recall / F1 / yes-ratio (the
original's output lines), then the mean F1 over the splits (the number LLaVA-1.5 reports).
"""

from __future__ import annotations

import argparse

from llava.eval.lmms_parquet import is_parquet_source
from llava.eval.lmms_parquet_truth import pope_truth
from llava.eval.scorers.pope import evaluate_pope, evaluate_pope_files
from llava.utils.jsonfiles import read_jsonl


def report(results: dict) -> str:
    lines = []
    for split, m in results.items():
        lines += [
            f"Category: {split}, # samples: {m.tp + m.fp + m.tn + m.fn}",
            "TP\tFP\tTN\tFN\t",
            f"{m.tp}\t{m.fp}\t{m.tn}\t{m.fn}",
            f"Accuracy: {m.accuracy}",
            f"Precision: {m.precision}",
            f"Recall: {m.recall}",
            f"F1 score: {m.f1}",
            f"Yes ratio: {m.yes_ratio}",
            f"{m.f1:.3f}, {m.accuracy:.3f}, {m.precision:.3f}, {m.recall:.3f}, {m.yes_ratio:.3f}",
            "====================================",
        ]
    mean_f1 = sum(m.f1 for m in results.values()) / len(results)
    mean_acc = sum(m.accuracy for m in results.values()) / len(results)
    lines.append(f"Mean over {len(results)} splits: F1 {100 * mean_f1:.2f}, Accuracy {100 * mean_acc:.2f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Score POPE answers per split.")
    parser.add_argument(
        "--annotation-dir",
        default=None,
        help="folder with coco_pope_<split>.json label files (not needed "
        "when --question-file is lmms-lab's POPE parquet: its labels are in it)",
    )
    parser.add_argument("--question-file", required=True)
    parser.add_argument("--result-file", required=True)
    args = parser.parse_args(argv)
    if is_parquet_source(args.question_file):
        questions, labels = pope_truth(args.question_file)
        results = evaluate_pope(questions, read_jsonl(args.result_file, "POPE answer file"), labels)
    elif args.annotation_dir is None:
        parser.error("--annotation-dir is required with a JSON question file")
    else:
        results = evaluate_pope_files(args.annotation_dir, args.question_file, args.result_file)
    print(report(results))
    return results


if __name__ == "__main__":
    main()
