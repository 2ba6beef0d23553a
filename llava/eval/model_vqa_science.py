"""Answer ScienceQA in LLaVA's format (``llava_test_CQM-A.json``); text-only questions get no image.

python -m llava.eval.model_vqa_science --model-path PATH --question-file llava_test_CQM-A.json
    --image-folder images/test --answers-file A.jsonl --single-pred-prompt [--conv-mode vicuna_v1]
"""

import argparse

from llava.eval.answer_runner import add_runner_args, run
from llava.eval.question_sources import science_items


def main(argv=None, loaded=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_runner_args(parser, question_file="tables/question.json", max_new_tokens=1024)
    parser.add_argument("--single-pred-prompt", action="store_true", help="ask for the option letter only")
    args = parser.parse_args(argv)
    return run(
        args,
        science_items(args.question_file, args.image_folder, args.single_pred_prompt, args.benchmark),
        loaded=loaded,
    )


if __name__ == "__main__":
    main()
