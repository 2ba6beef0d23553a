"""MM-Vet summary: ``python -m llava.eval.eval_mmvet --grade-file <model>_gpt-4-grade-<n>runs.json [--metadata mm-vet.json]``.

Grading itself is done by MM-Vet's GPT-4 grader (its online evaluator or its ``mm-vet_evaluator``)
on the file ``scripts/convert_mmvet_for_eval.py`` writes; this prints the totals of its grade file.
``--metadata`` (for the per-capability scores) is MM-Vet's ``mm-vet.json`` or lmms-lab's MMVet parquet.
"""

from __future__ import annotations

import argparse

from llava.eval.lmms_parquet import is_parquet_source
from llava.eval.lmms_parquet_truth import mmvet_metadata
from llava.eval.scorers.mmvet import summarize_grades
from llava.utils.jsonfiles import read_json

METADATA_HELP = "MM-Vet's mm-vet.json, or lmms-lab's MMVet parquet (a file, glob or folder of shards)"


def read_metadata(path: str) -> dict:
    """MM-Vet's ground truth in mm-vet.json's layout, from that file or from lmms-lab's parquet."""
    return mmvet_metadata(path) if is_parquet_source(path) else read_json(path, "MM-Vet metadata")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Summarise an MM-Vet grade file.")
    parser.add_argument("--grade-file", required=True)
    parser.add_argument("--metadata", default=None, help=f"{METADATA_HELP}, for per-capability scores")
    args = parser.parse_args(argv)
    metadata = read_metadata(args.metadata) if args.metadata else None
    res = summarize_grades(read_json(args.grade_file, "MM-Vet grade file"), metadata)
    runs = ", ".join(f"{r:.1f}" for r in res["runs"])
    print(f"total: {res['total']:.1f}  std: {res['std']:.1f}  runs: [{runs}]")
    for key in ("capabilities", "integrations"):
        for name, value in res.get(key, {}).items():
            print(f"  {name}: {value:.1f}")
    return res


if __name__ == "__main__":
    main()
