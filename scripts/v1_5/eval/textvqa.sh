#!/bin/bash
# TextVQA val (with OCR tokens in the prompt), m4c accuracy.
#
# Data (./playground/data/eval/textvqa/):
#   llava_textvqa_val_v051_ocr.jsonl   questions (LLaVA's eval.zip)
#   TextVQA_0.5.1_val.json             ground truth (textvqa.org/dataset)
#   train_images/                      TextVQA train/val images (textvqa.org/dataset)
# Output: answers/llava-v1.5-13b.jsonl, printed accuracy.
set -e

python -m llava.eval.model_vqa_loader \
    --model-path liuhaotian/llava-v1.5-13b \
    --question-file ./playground/data/eval/textvqa/llava_textvqa_val_v051_ocr.jsonl \
    --image-folder ./playground/data/eval/textvqa/train_images \
    --answers-file ./playground/data/eval/textvqa/answers/llava-v1.5-13b.jsonl \
    --temperature 0 \
    --conv-mode vicuna_v1

python -m llava.eval.eval_textvqa \
    --annotation-file ./playground/data/eval/textvqa/TextVQA_0.5.1_val.json \
    --result-file ./playground/data/eval/textvqa/answers/llava-v1.5-13b.jsonl
