#!/bin/bash
# MMBench dev (English): answers, the submission sheet, and a local score (the dev split has answers).
#
# Data (./playground/data/eval/mmbench/):
#   mmbench_dev_20230712.tsv   questions with base64 images (github.com/open-compass/MMBench)
# Output: answers/$SPLIT/llava-v1.5-13b.jsonl, answers_upload/$SPLIT/llava-v1.5-13b.xlsx (submit to
# the MMBench evaluation server, https://mmbench.opencompass.org.cn, for the official circular score).
# The official TSV already holds each question's circular variants as rows: eval_mmbench prints the circular
# figure (the published one) from a plain run. --all-rounds additionally rotates every row's options itself.
set -e

SPLIT="mmbench_dev_20230712"

python -m llava.eval.model_vqa_mmbench \
    --model-path liuhaotian/llava-v1.5-13b \
    --question-file ./playground/data/eval/mmbench/$SPLIT.tsv \
    --answers-file ./playground/data/eval/mmbench/answers/$SPLIT/llava-v1.5-13b.jsonl \
    --single-pred-prompt \
    --temperature 0 \
    --conv-mode vicuna_v1

mkdir -p playground/data/eval/mmbench/answers_upload/$SPLIT

python scripts/convert_mmbench_for_submission.py \
    --annotation-file ./playground/data/eval/mmbench/$SPLIT.tsv \
    --result-dir ./playground/data/eval/mmbench/answers/$SPLIT \
    --upload-dir ./playground/data/eval/mmbench/answers_upload/$SPLIT \
    --experiment llava-v1.5-13b

python -m llava.eval.eval_mmbench \
    --annotation-file ./playground/data/eval/mmbench/$SPLIT.tsv \
    --result-file ./playground/data/eval/mmbench/answers/$SPLIT/llava-v1.5-13b.jsonl
