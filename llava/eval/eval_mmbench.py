"""MMBench scorer (dev splits): ``python -m llava.eval.eval_mmbench --annotation-file mmbench_dev.tsv --result-file A``.

Prints the circular accuracy, the MMBench server's figure (a question is right when all its
circular-variant rows, ``index % 1,000,000``, are right), with the row accuracy beside it; overall
and per category. Answers made with ``model_vqa_mmbench --all-rounds`` need every round right.
Answers that the official rule-based matching cannot read count as wrong, and are counted.
"""

from __future__ import annotations

import argparse

from llava.eval.lmms_parquet import is_parquet_source, mmbench_rows
from llava.eval.scorers.mmbench import read_tsv, score_mmbench
from llava.utils.jsonfiles import read_jsonl


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Score MMBench / MMBench-CN dev answers.")
    parser.add_argument(
        "--annotation-file", required=True, help="the dev .tsv, or lmms-lab's MMBench parquet"
    )
    parser.add_argument("--result-file", required=True)
    args = parser.parse_args(argv)
    rows = (
        mmbench_rows(args.annotation_file)
        if is_parquet_source(args.annotation_file)
        else read_tsv(args.annotation_file)
    )
    res = score_mmbench(rows, read_jsonl(args.result_file, "MMBench answer file"))
    if res["unanswered"]:
        what = "answers (rows x rounds)" if res["rounds"] == "all" else "rows"
        print(f"Warning: {res['unanswered']} {what} have no answer (count as wrong)")
    print(f"Circular accuracy: {res['circular/overall']:.2f}% ({res['questions']} questions)  "
          f"Row accuracy: {res['overall']:.2f}% ({res['count']} rows)")  # fmt: skip
    judged = res["judge_questions"]
    print(f"Unmatched answers: {res['unmatched']} (no option letter or text found; counted as wrong, "
          f"the MMBench server would ask a GPT judge: {judged} questions depend on it)")  # fmt: skip
    for key in sorted(k for k in res if k.startswith(("category/", "l2-category/"))):
        print(f"  {key}: circular {res['circular/' + key]:.2f}% (row {res[key]:.2f}%)")
    return res


if __name__ == "__main__":
    main()
