"""Make GQA's predictions file ([{"questionId", "prediction"}]) from an answers jsonl.

python scripts/convert_gqa_for_eval.py --src merge.jsonl --dst testdev_balanced_predictions.json
Score it with `python -m llava.eval.eval_gqa --questions testdev_balanced_questions.json --predictions <dst>`
(or GQA's own eval/eval.py for consistency, validity, plausibility, grounding).
"""

import argparse

from llava.eval.scorers.gqa import predictions_from_answers
from llava.utils.jsonfiles import read_jsonl, write_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True)
    parser.add_argument("--dst", required=True)
    args = parser.parse_args(argv)
    write_json(args.dst, predictions_from_answers(read_jsonl(args.src, "GQA answer file")))
    return args.dst


if __name__ == "__main__":
    main()
