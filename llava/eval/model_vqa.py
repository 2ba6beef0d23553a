"""Answer a question jsonl (``question_id``, ``image``, ``text``) with a LLaVA model.

``image`` may be a list (several images) and ``video`` a video file or frames folder (--video-folder).

python -m llava.eval.model_vqa --model-path PATH --question-file Q.jsonl --image-folder DIR
    --answers-file A.jsonl [--conv-mode vicuna_v1 --temperature 0 --num-chunks N --chunk-idx K --batch-size B]
See llava.eval.answer_runner for the answer format, sharding, batching and resuming.
"""

import argparse

from llava.eval.answer_runner import add_runner_args, run
from llava.eval.question_sources import vqa_items


def main(argv=None, loaded=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_runner_args(parser, question_file="tables/question.jsonl", max_new_tokens=1024)
    args = parser.parse_args(argv)
    return run(
        args,
        vqa_items(args.question_file, args.image_folder, args.video_folder, args.benchmark),
        loaded=loaded,
    )


if __name__ == "__main__":
    main()
