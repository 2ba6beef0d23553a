"""Make the VQAv2 EvalAI upload file from merged answers.

python scripts/convert_vqav2_for_submission.py --split llava_vqav2_mscoco_test-dev2015 --ckpt llava-v1.5-13b
reads <dir>/answers/<split>/<ckpt>/merge.jsonl and <dir>/llava_vqav2_mscoco_test2015.jsonl, writes
<dir>/answers_upload/<split>/<ckpt>.json (every test question; empty answer where none was generated).
"""

import argparse
import os

from llava.eval.scorers.vqa import vqav2_upload
from llava.utils.jsonfiles import read_jsonl, write_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="./playground/data/eval/vqav2")
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--test-file", default=None, help="default: <dir>/llava_vqav2_mscoco_test2015.jsonl")
    args = parser.parse_args(argv)
    src = os.path.join(args.dir, "answers", args.split, args.ckpt, "merge.jsonl")
    test_file = args.test_file or os.path.join(args.dir, "llava_vqav2_mscoco_test2015.jsonl")
    dst = os.path.join(args.dir, "answers_upload", args.split, f"{args.ckpt}.json")
    answers = read_jsonl(src, "merged VQAv2 answers")
    questions = read_jsonl(test_file, "VQAv2 test question file")
    upload, missing = vqav2_upload(questions, answers)
    print(f"total results: {len(answers)}, total split: {len(questions)}, without answer: {missing}")
    write_json(dst, upload)
    print(f"wrote {dst}")
    return dst


if __name__ == "__main__":
    main()
