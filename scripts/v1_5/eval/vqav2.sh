#!/bin/bash
# VQAv2 test-dev: answers on all GPUs in CUDA_VISIBLE_DEVICES (one shard each), merged, then the
# EvalAI upload file. Scored by the EvalAI server (https://eval.ai/web/challenges/challenge-page/830).
#
# Data (./playground/data/eval/vqav2/):
#   llava_vqav2_mscoco_test-dev2015.jsonl   questions to answer (LLaVA's eval.zip)
#   llava_vqav2_mscoco_test2015.jsonl       the full test split the upload must cover (eval.zip)
#   test2015/                               COCO test2015 images (cocodataset.org)
# Output: answers/$SPLIT/$CKPT/merge.jsonl, answers_upload/$SPLIT/$CKPT.json (upload to EvalAI).
set -e

CKPT="llava-v1.5-13b"
SPLIT="llava_vqav2_mscoco_test-dev2015"

bash scripts/v1_5/eval/sharded_answers.sh liuhaotian/llava-v1.5-13b \
    ./playground/data/eval/vqav2/$SPLIT.jsonl \
    ./playground/data/eval/vqav2/test2015 \
    ./playground/data/eval/vqav2/answers/$SPLIT/$CKPT

output_file=./playground/data/eval/vqav2/answers/$SPLIT/$CKPT/merge.jsonl

python scripts/convert_vqav2_for_submission.py --split $SPLIT --ckpt $CKPT
