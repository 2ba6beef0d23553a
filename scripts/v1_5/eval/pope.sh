#!/bin/bash
# POPE (COCO; adversarial / popular / random): accuracy, precision, recall, F1, yes-ratio per split.
#
# Data (./playground/data/eval/pope/):
#   llava_pope_test.jsonl   questions (LLaVA's eval.zip)
#   coco/coco_pope_*.json   labels (github.com/AoiDragon/POPE, output/coco)
#   val2014/                COCO val2014 images (cocodataset.org)
# Output: answers/llava-v1.5-13b.jsonl, printed metrics (the published number is the mean F1).
set -e

python -m llava.eval.model_vqa_loader \
    --model-path liuhaotian/llava-v1.5-13b \
    --question-file ./playground/data/eval/pope/llava_pope_test.jsonl \
    --image-folder ./playground/data/eval/pope/val2014 \
    --answers-file ./playground/data/eval/pope/answers/llava-v1.5-13b.jsonl \
    --temperature 0 \
    --conv-mode vicuna_v1

python llava/eval/eval_pope.py \
    --annotation-dir ./playground/data/eval/pope/coco \
    --question-file ./playground/data/eval/pope/llava_pope_test.jsonl \
    --result-file ./playground/data/eval/pope/answers/llava-v1.5-13b.jsonl
