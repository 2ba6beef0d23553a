"""Summarise GPT-judge review files: ``python -m llava.eval.summarize_gpt_review -f reviews.jsonl [...]``.

For each file prints, per category and overall: the relative score (model / reference * 100), the
reference's and the model's mean scores (x10). With several files (e.g. the three judge runs)
also prints the mean relative score over them.
"""

from __future__ import annotations

import argparse
import os

from llava.eval.scorers.llava_bench import mean_relative, summarize_reviews
from llava.utils.jsonfiles import read_jsonl

_PREFIXES = ("gpt4_text", "reviews_", "review_")


def review_files(directory: str | None, files: list[str] | None) -> list[str]:
    if files:
        return sorted(files)
    if not directory:
        raise SystemExit("give review files with -f, or a folder with -d")
    names = [n for n in os.listdir(directory) if n.endswith(".jsonl") and n.startswith(_PREFIXES)]
    if not names:
        raise SystemExit(f"no review files (gpt4_text*/review_*/reviews_*.jsonl) in {directory}")
    return [os.path.join(directory, n) for n in sorted(names)]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description="Summarise GPT-assisted review files.")
    parser.add_argument("-d", "--dir", default=None)
    parser.add_argument("-f", "--files", nargs="*", default=None)
    parser.add_argument("-i", "--ignore", nargs="*", default=None, help="question ids to leave out")
    args = parser.parse_args(argv)
    ignore = [int(x) for x in args.ignore] if args.ignore else []
    summaries = []
    for path in review_files(args.dir, args.files):
        print(os.path.basename(path).replace("gpt4_text_", "").replace(".jsonl", ""))
        summary = summarize_reviews(read_jsonl(path, "review file"), ignore)
        for cat in summary.values():
            note = f"  ({cat.unparsed} unparsed)" if cat.unparsed else ""
            print(f"{cat.category} {cat.relative:.1f} {cat.reference:.1f} {cat.model:.1f}{note}")
        print("=================================")
        summaries.append(summary)
    if len(summaries) > 1:
        print(f"mean over {len(summaries)} files: all {mean_relative(summaries):.2f}")
    return summaries


if __name__ == "__main__":
    main()
