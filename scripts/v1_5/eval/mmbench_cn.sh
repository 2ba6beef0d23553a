#!/bin/bash
# MMBench-CN dev (Chinese questions, Chinese answer instruction): answers, submission sheet, local score.
#
# Data (./playground/data/eval/mmbench_cn/):
#   mmbench_dev_cn_20231003.tsv   questions with base64 images (github.com/open-compass/MMBench)
# Output: answers/$SPLIT/llava-v1.5-13b.jsonl, answers_upload/$SPLIT/llava-v1.5-13b.xlsx (submit to
# the MMBench evaluation server for the official circular score).
set -e

SPLIT="mmbench_dev_cn_20231003"

python -m llava.eval.model_vqa_mmbench \
    --model-path liuhaotian/llava-v1.5-13b \
    --question-file ./playground/data/eval/mmbench_cn/$SPLIT.tsv \
    --answers-file ./playground/data/eval/mmbench_cn/answers/$SPLIT/llava-v1.5-13b.jsonl \
    --lang cn \
    --single-pred-prompt \
    --temperature 0 \
    --conv-mode vicuna_v1

mkdir -p playground/data/eval/mmbench_cn/answers_upload/$SPLIT

python scripts/convert_mmbench_for_submission.py \
    --annotation-file ./playground/data/eval/mmbench_cn/$SPLIT.tsv \
    --result-dir ./playground/data/eval/mmbench_cn/answers/$SPLIT \
    --upload-dir ./playground/data/eval/mmbench_cn/answers_upload/$SPLIT \
    --experiment llava-v1.5-13b

python -m llava.eval.eval_mmbench \
    --annotation-file ./playground/data/eval/mmbench_cn/$SPLIT.tsv \
    --result-file ./playground/data/eval/mmbench_cn/answers/$SPLIT/llava-v1.5-13b.jsonl
