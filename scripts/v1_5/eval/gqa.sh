#!/bin/bash
# GQA test-dev balanced: sharded answers, merged, converted to GQA's predictions format and scored.
#
# Data (./playground/data/eval/gqa/):
#   llava_gqa_testdev_balanced.jsonl            questions (LLaVA's eval.zip)
#   data/images/                                GQA images (cs.stanford.edu/people/dorarad/gqa)
#   data/testdev_balanced_questions.json        GQA ground truth (GQA "questions1.2" download)
#   data/eval/eval.py (optional)                GQA's official script, for consistency/validity/plausibility
# Output: answers/$SPLIT/$CKPT/merge.jsonl, data/testdev_balanced_predictions.json, printed accuracy.
set -e

CKPT="llava-v1.5-13b"
SPLIT="llava_gqa_testdev_balanced"
GQADIR="./playground/data/eval/gqa/data"

bash scripts/v1_5/eval/sharded_answers.sh liuhaotian/llava-v1.5-13b \
    ./playground/data/eval/gqa/$SPLIT.jsonl \
    ./playground/data/eval/gqa/data/images \
    ./playground/data/eval/gqa/answers/$SPLIT/$CKPT

output_file=./playground/data/eval/gqa/answers/$SPLIT/$CKPT/merge.jsonl

python scripts/convert_gqa_for_eval.py --src $output_file --dst $GQADIR/testdev_balanced_predictions.json

python -m llava.eval.eval_gqa \
    --questions $GQADIR/testdev_balanced_questions.json \
    --predictions $GQADIR/testdev_balanced_predictions.json

# GQA's own script gives the same accuracy plus its other metrics:
#   (cd $GQADIR && python eval/eval.py --tier testdev_balanced)
