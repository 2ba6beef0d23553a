"""Make the VizWiz EvalAI upload file ([{"image", "answer"}], answers normalised as EvalAI does).

python scripts/convert_vizwiz_for_submission.py --annotation-file llava_test.jsonl --result-file answers.jsonl
    --result-upload-file answers_upload/model.json
"""

import argparse

from llava.eval.scorers.vqa import vizwiz_upload
from llava.utils.jsonfiles import read_jsonl, write_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-file", required=True)
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--result-upload-file", required=True)
    args = parser.parse_args(argv)
    answers = read_jsonl(args.result_file, "VizWiz answer file")
    questions = read_jsonl(args.annotation_file, "VizWiz question file")
    print(f"total results: {len(answers)}, total split: {len(questions)}")
    write_json(args.result_upload_file, vizwiz_upload(questions, answers))
    return args.result_upload_file


if __name__ == "__main__":
    main()
