#!/bin/bash
# VizWiz-VQA test: answers, then the EvalAI upload file. Scored by the EvalAI server
# (https://eval.ai/web/challenges/challenge-page/2185).
#
# Data (./playground/data/eval/vizwiz/):
#   llava_test.jsonl      questions (LLaVA's eval.zip)
#   test/                 VizWiz test images (vizwiz.org, "test.zip")
# Output: answers/llava-v1.5-13b.jsonl, answers_upload/llava-v1.5-13b.json (upload to EvalAI).
set -e

python -m llava.eval.model_vqa_loader \
    --model-path liuhaotian/llava-v1.5-13b \
    --question-file ./playground/data/eval/vizwiz/llava_test.jsonl \
    --image-folder ./playground/data/eval/vizwiz/test \
    --answers-file ./playground/data/eval/vizwiz/answers/llava-v1.5-13b.jsonl \
    --temperature 0 \
    --conv-mode vicuna_v1

python scripts/convert_vizwiz_for_submission.py \
    --annotation-file ./playground/data/eval/vizwiz/llava_test.jsonl \
    --result-file ./playground/data/eval/vizwiz/answers/llava-v1.5-13b.jsonl \
    --result-upload-file ./playground/data/eval/vizwiz/answers_upload/llava-v1.5-13b.json
