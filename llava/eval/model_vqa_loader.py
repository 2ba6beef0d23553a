"""Answer a question jsonl with images loaded by background workers (the short-answer benchmarks).

python -m llava.eval.model_vqa_loader --model-path PATH --question-file Q.jsonl --image-folder DIR
    --answers-file A.jsonl [--conv-mode vicuna_v1 --num-chunks N --chunk-idx K --batch-size B --num-workers W]
Same runner as llava.eval.model_vqa; answers are short by default (--max_new_tokens 128).
"""

import argparse

from llava.eval.answer_runner import add_runner_args, run
from llava.eval.question_sources import vqa_items


def main(argv=None, loaded=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_runner_args(parser, question_file="tables/question.jsonl", max_new_tokens=128, num_workers=4)
    args = parser.parse_args(argv)
    return run(
        args,
        vqa_items(args.question_file, args.image_folder, args.video_folder, args.benchmark),
        loaded=loaded,
    )


if __name__ == "__main__":
    main()
