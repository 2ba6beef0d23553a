"""TextVQA scorer: ``python -m llava.eval.eval_textvqa --annotation-file TextVQA_0.5.1_val.json --result-file A``.

``--result-dir`` scores every ``.jsonl`` in a folder instead.
"""

from __future__ import annotations

import argparse
import os

from llava.eval.lmms_parquet import is_parquet_source
from llava.eval.lmms_parquet_truth import textvqa_truth
from llava.eval.scorers.textvqa import score_textvqa
from llava.utils.jsonfiles import read_json, read_jsonl


def eval_single(annotation_file: str, result_file: str) -> float:
    print(os.path.splitext(os.path.basename(result_file))[0])
    if is_parquet_source(annotation_file):
        annotations = textvqa_truth(annotation_file)
    else:
        annotations = read_json(annotation_file, "TextVQA annotation file")["data"]
    accuracy, n = score_textvqa(annotations, read_jsonl(result_file, "TextVQA answer file"))
    print(f"Samples: {n}\nAccuracy: {100.0 * accuracy:.2f}%\n")
    return accuracy


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Score TextVQA answers (m4c accuracy).")
    parser.add_argument("--annotation-file", required=True)
    parser.add_argument("--result-file", default=None)
    parser.add_argument("--result-dir", default=None)
    args = parser.parse_args(argv)
    if not args.result_file and not args.result_dir:
        parser.error("give --result-file or --result-dir")
    results = {}
    if args.result_file:
        results[args.result_file] = eval_single(args.annotation_file, args.result_file)
    if args.result_dir:
        for name in sorted(os.listdir(args.result_dir)):
            if not name.endswith(".jsonl"):
                print(f"Skipping {name}")
                continue
            path = os.path.join(args.result_dir, name)
            results[path] = eval_single(args.annotation_file, path)
    return results


if __name__ == "__main__":
    main()
