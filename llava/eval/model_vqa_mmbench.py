"""Answer MMBench / MMBench-CN from its ``.tsv`` (base64 images in the file).

python -m llava.eval.model_vqa_mmbench --model-path PATH --question-file mmbench_dev_20230712.tsv
    --answers-file A.jsonl --single-pred-prompt [--lang cn] [--all-rounds] [--conv-mode vicuna_v1]
--all-rounds asks every question once per rotation of its options (for circular evaluation);
answer lines carry round_id, options and option_char.
"""

import argparse

from llava.eval.answer_runner import add_runner_args, run
from llava.eval.question_sources import mmbench_items


def main(argv=None, loaded=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_runner_args(parser, question_file="tables/question.jsonl", max_new_tokens=1024)
    parser.add_argument("--all-rounds", action="store_true", help="one question per rotation of the options")
    parser.add_argument("--single-pred-prompt", action="store_true", help="ask for the option letter only")
    parser.add_argument("--lang", type=str, default="en", choices=["en", "cn"])
    args = parser.parse_args(argv)
    items = mmbench_items(
        args.question_file, args.all_rounds, args.single_pred_prompt, args.lang, args.benchmark
    )
    return run(args, items, loaded=loaded)


if __name__ == "__main__":
    main()
