"""MMBench scorer (dev splits): ``python -m llava.eval.eval_mmbench --annotation-file mmbench_dev.tsv --result-file A``.

Prints single-pass accuracy (round 0) and, when the answers hold every rotation
(``model_vqa_mmbench --all-rounds``), circular accuracy; overall and per category.
"""

from __future__ import annotations

import argparse

from llava.eval.scorers.mmbench import read_tsv, score_mmbench
from llava.utils.jsonfiles import read_jsonl


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Score MMBench / MMBench-CN dev answers.")
    parser.add_argument("--annotation-file", required=True)
    parser.add_argument("--result-file", required=True)
    args = parser.parse_args(argv)
    res = score_mmbench(read_tsv(args.annotation_file), read_jsonl(args.result_file, "MMBench answer file"))
    if res["answered"] < res["count"]:
        print(
            f"Warning: {res['count'] - res['answered']} of {res['count']} questions have no answer (count as wrong)"
        )
    print(f"Accuracy: {res['overall']:.2f}%")
    if "circular/overall" in res:
        print(f"Circular accuracy: {res['circular/overall']:.2f}%")
    for key in sorted(k for k in res if k.startswith(("category/", "l2-category/"))):
        circ = res.get(f"circular/{key}")
        print(f"  {key}: {res[key]:.2f}%" + (f" (circular {circ:.2f}%)" if circ is not None else ""))
    return res


if __name__ == "__main__":
    main()
