"""Make the VizWiz EvalAI upload file ([{"image", "answer"}], answers normalised as EvalAI does).

python scripts/convert_vizwiz_for_submission.py --annotation-file llava_test.jsonl --result-file answers.jsonl
    --result-upload-file answers_upload/model.json

--annotation-file may be lmms-lab's VizWiz-VQA parquet (the split the answers were made from) instead of
LLaVA's question file: its question ids (the image names) key the answers and its row order is kept.
"""

import argparse

from llava.eval.lmms_parquet import is_parquet_source
from llava.eval.lmms_parquet_truth import vizwiz_questions
from llava.eval.scorers.vqa import vizwiz_upload
from llava.utils.jsonfiles import read_jsonl, write_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-file", required=True, help="LLaVA's llava_test.jsonl, or lmms-lab's "
                        "VizWiz-VQA parquet (a file, glob or folder of shards)")  # fmt: skip
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--result-upload-file", required=True)
    args = parser.parse_args(argv)
    answers = read_jsonl(args.result_file, "VizWiz answer file")
    if is_parquet_source(args.annotation_file):
        questions = vizwiz_questions(args.annotation_file)
        _check_parquet_ids(args.annotation_file, questions, answers)
    else:
        questions = read_jsonl(args.annotation_file, "VizWiz question file")
    print(f"total results: {len(answers)}, total split: {len(questions)}")
    write_json(args.result_upload_file, vizwiz_upload(questions, answers))
    return args.result_upload_file


def _check_parquet_ids(path, questions, answers):
    """Answers made from LLaVA's llava_test.jsonl are keyed by number, the parquet's questions by image name:
    say so rather than report every question unanswered."""
    ids = [q["question_id"] for q in questions]
    if answers and ids and not set(ids) & {a["question_id"] for a in answers}:
        raise ValueError(f"none of the answers' question ids (first: {answers[0]['question_id']!r}) is one of "
                         f"{path}'s (first: {ids[0]!r}): answers made from LLaVA's llava_test.jsonl need that "
                         "file as --annotation-file")  # fmt: skip


if __name__ == "__main__":
    main()
