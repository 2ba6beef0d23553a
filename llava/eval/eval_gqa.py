"""GQA scorer: ``python -m llava.eval.eval_gqa --questions testdev_balanced_questions.json --predictions P.json``.

``--predictions`` is the file ``scripts/convert_gqa_for_eval.py`` writes (or pass ``--result-file``
with the raw answers jsonl instead).
"""

from __future__ import annotations

import argparse

from llava.eval.lmms_parquet import is_parquet_source
from llava.eval.lmms_parquet_truth import gqa_truth
from llava.eval.scorers.gqa import predictions_from_answers, score_gqa
from llava.utils.jsonfiles import read_json, read_jsonl


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Score GQA predictions (accuracy, binary/open, per type).")
    parser.add_argument(
        "--questions",
        required=True,
        help="GQA question file, e.g. testdev_balanced_questions.json, or lmms-lab's testdev_balanced_instructions parquet",
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--predictions", help="[{questionId, prediction}] from convert_gqa_for_eval.py")
    group.add_argument("--result-file", help="answers jsonl from model_vqa_loader")
    args = parser.parse_args(argv)
    if args.predictions:
        predictions = read_json(args.predictions, "GQA predictions file")
    else:
        predictions = predictions_from_answers(read_jsonl(args.result_file, "GQA answer file"))
    if is_parquet_source(args.questions):
        questions = gqa_truth(args.questions)
    else:
        questions = read_json(args.questions, "GQA question file")
    res = score_gqa(questions, predictions)
    if res["missing"]:
        print(f"Warning: {res['missing']} questions have no prediction and count as wrong")
    print(f"Accuracy: {res['accuracy']:.2f}% ({res['count']} questions)")
    for key in ("binary", "open"):
        if key in res:
            print(f"{key}: {res[key]:.2f}%")
    for key in sorted(k for k in res if "/" in k):
        print(f"  {key}: {res[key]:.2f}%")
    return res


if __name__ == "__main__":
    main()
