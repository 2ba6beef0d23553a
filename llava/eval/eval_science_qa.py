"""ScienceQA scorer: ``python -m llava.eval.eval_science_qa --base-dir DIR --result-file A --output-file O --output-result R``.

``--base-dir`` holds ``pid_splits.json`` and either ScienceQA's ``problems.json`` or LLaVA's
``llava_test_CQM-A.json`` (or name the latter with ``--question-file``). Prints overall and IMG
accuracy; writes the per-question analysis (``--output-file``) and the result summary
(``--output-result``) in the original's formats.
"""

from __future__ import annotations

import argparse
import os

from llava.eval.lmms_parquet import is_parquet_source
from llava.eval.lmms_parquet_truth import scienceqa_truth
from llava.eval.scorers.scienceqa import (
    OPTIONS,
    problems_from_llava,
    problems_from_scienceqa,
    score_scienceqa,
)
from llava.utils.jsonfiles import read_json, read_jsonl, write_json


def load_problems(base_dir: str, question_file: str | None):
    problems_json = os.path.join(base_dir, "problems.json")
    if question_file is None and os.path.isfile(problems_json):
        return problems_from_scienceqa(read_json(problems_json, "ScienceQA problems.json"))
    question_file = question_file or os.path.join(base_dir, "llava_test_CQM-A.json")
    if not os.path.isfile(question_file):
        raise FileNotFoundError(
            f"no ScienceQA ground truth: neither {problems_json} nor {question_file} exists "
            "(put ScienceQA's problems.json in --base-dir, or pass --question-file llava_test_CQM-A.json)"
        )
    return problems_from_llava(read_json(question_file, "ScienceQA question file"))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Score ScienceQA answers (option letters).")
    parser.add_argument("--base-dir", default=None,
                        help="holds pid_splits.json (not needed with lmms-lab's ScienceQA parquet as --question-file)")  # fmt: skip
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--output-file", default=None)
    parser.add_argument("--output-result", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--options", nargs="+", default=list(OPTIONS))
    parser.add_argument(
        "--question-file",
        default=None,
        help="LLaVA question file, used when problems.json is absent; or lmms-lab's ScienceQA parquet",
    )
    args = parser.parse_args(argv)

    if args.question_file and is_parquet_source(args.question_file):
        problems, split_ids = scienceqa_truth(args.question_file)  # the file is one split: all its rows
    elif args.base_dir is None:
        parser.error("--base-dir is required unless --question-file is lmms-lab's ScienceQA parquet")
    else:
        splits = read_json(os.path.join(args.base_dir, "pid_splits.json"), "ScienceQA pid_splits.json")
        if args.split not in splits:
            raise KeyError(f"--split {args.split!r} not in pid_splits.json (has {sorted(splits)})")
        problems, split_ids = load_problems(args.base_dir, args.question_file), splits[args.split]
    answers = read_jsonl(args.result_file, "ScienceQA answer file")
    res = score_scienceqa(problems, split_ids, answers, args.options)
    if res["missing"]:
        print(f"Warning: {res['missing']} questions have no answer and count as FAILED")
    print(
        f"Total: {res['count']}, Correct: {len(res['correct'])}, Accuracy: {res['acc']:.2f}%, "
        f"IMG-Accuracy: {res['img_acc']:.2f}%"
    )
    if args.output_file:
        write_json(args.output_file, {"correct": res["correct"], "incorrect": res["incorrect"]}, indent=2)
    if args.output_result:
        summary = {"acc": res["acc"], "correct": len(res["correct"]), "count": res["count"]}
        summary.update(results=res["results"], outputs=res["outputs"])
        write_json(args.output_result, summary, indent=2)
    return res


if __name__ == "__main__":
    main()
