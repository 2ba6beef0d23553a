"""Make the file MM-Vet's grader reads ({"v1_<id>": answer}) from an answers jsonl.

python scripts/convert_mmvet_for_eval.py --src answers/model.jsonl --dst results/model.json
"""

import argparse

from llava.eval.scorers.mmvet import answers_for_grader
from llava.utils.jsonfiles import read_jsonl, write_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True)
    parser.add_argument("--dst", required=True)
    args = parser.parse_args(argv)
    write_json(args.dst, answers_for_grader(read_jsonl(args.src, "MM-Vet answer file")), indent=2)
    return args.dst


if __name__ == "__main__":
    main()
