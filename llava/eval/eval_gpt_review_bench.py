"""GPT review for LLaVA-Bench (in the wild): the judge sees the image's caption, rules ``llava_bench_<category>``.

python -m llava.eval.eval_gpt_review_bench --question questions.jsonl --context context.jsonl
    --rule rule.json --answer-list answers_gpt4.jsonl answers/model.jsonl --output reviews/model.jsonl
    [--api-base URL --model NAME --run N]    (key from OPENAI_API_KEY)

``--question``, ``--context`` and the reference (first) ``--answer-list`` file may each be lmms-lab's
llava-bench-in-the-wild parquet, which holds all three (``question``, ``caption``, ``gpt_answer``):
``-q P -c P -a P answers/model.jsonl``. The judge then sees what it sees with the original's files.
"""

from __future__ import annotations

import os
import sys
import tempfile

from llava.eval.gpt_review import main as _main
from llava.eval.lmms_parquet import is_parquet_source
from llava.eval.lmms_parquet_truth import llava_bench_inputs
from llava.utils.jsonfiles import write_jsonl

DESCRIPTION = (
    "GPT review for LLaVA-Bench (in the wild). --question, --context and the reference (first) --answer-list "
    "file may each be lmms-lab's llava-bench-in-the-wild parquet (a file, glob or folder of shards): "
    "-q P -c P -a P answers/model.jsonl"
)


def main(argv=None):
    with tempfile.TemporaryDirectory(prefix="llava_bench_parquet_") as folder:
        argv = parquet_inputs_as_jsonl(sys.argv[1:] if argv is None else list(argv), folder)
        return _main(argv, with_boxes=False, category_prefix="llava_bench_", description=DESCRIPTION)


FLAGS = {
    "-q": "questions",
    "--question": "questions",
    "-c": "contexts",
    "--context": "contexts",
    "-a": "references",
    "--answer-list": "references",
}  # the reference is the first --answer-list file


def parquet_inputs_as_jsonl(argv: list[str], folder: str) -> list[str]:
    """``argv`` with each input that names the parquet replaced by the original's file made from it in
    ``folder`` (``gpt_review`` reads JSON lines and parses the command line itself)."""
    out, k = [], 0
    while k < len(argv):
        arg = argv[k]
        flag, eq, value = arg.partition("=")
        if flag in FLAGS and eq:  # --question=P
            out.append(f"{flag}={_as_jsonl(value, FLAGS[flag], folder)}")
        elif arg in FLAGS and k + 1 < len(argv):
            out += [arg, _as_jsonl(argv[k + 1], FLAGS[arg], folder)]
            k += 1
        else:
            out.append(arg)
        k += 1
    return out


def _as_jsonl(path: str, part: str, folder: str) -> str:
    """``path`` itself, or when it names the parquet, a JSON-lines file of its ``part`` (llava_bench_inputs)."""
    if not is_parquet_source(path):
        return path
    return str(write_jsonl(os.path.join(folder, f"{part}.jsonl"), llava_bench_inputs(path)[part]))


if __name__ == "__main__":
    main()
