"""MM-Vet summary: ``python -m llava.eval.eval_mmvet --grade-file <model>_gpt-4-grade-<n>runs.json [--metadata mm-vet.json]``.

Grading itself is done by MM-Vet's GPT-4 grader (its online evaluator or its ``mm-vet_evaluator``)
on the file ``scripts/convert_mmvet_for_eval.py`` writes; this prints the totals of its grade file.
"""

from __future__ import annotations

import argparse

from llava.eval.scorers.mmvet import summarize_grades
from llava.utils.jsonfiles import read_json


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Summarise an MM-Vet grade file.")
    parser.add_argument("--grade-file", required=True)
    parser.add_argument("--metadata", default=None, help="MM-Vet's mm-vet.json, for per-capability scores")
    args = parser.parse_args(argv)
    metadata = read_json(args.metadata, "MM-Vet metadata") if args.metadata else None
    res = summarize_grades(read_json(args.grade_file, "MM-Vet grade file"), metadata)
    runs = ", ".join(f"{r:.1f}" for r in res["runs"])
    print(f"total: {res['total']:.1f}  std: {res['std']:.1f}  runs: [{runs}]")
    for key in ("capabilities", "integrations"):
        for name, value in res.get(key, {}).items():
            print(f"  {name}: {value:.1f}")
    return res


if __name__ == "__main__":
    main()
