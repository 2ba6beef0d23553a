#!/bin/bash
# MME: perception (10 subtasks) and cognition (4 subtasks), score = 100 * (acc + acc+) per subtask.
#
# Data (./playground/data/eval/MME/):
#   llava_mme.jsonl                   questions (LLaVA's eval.zip)
#   MME_Benchmark_release_version/    images and ground truth (apply to the MME authors:
#                                     github.com/BradyFU/Awesome-Multimodal-Large-Language-Models, Evaluation)
# Output: answers/llava-v1.5-13b.jsonl, eval_tool/answers/llava-v1.5-13b/<subtask>.txt (MME's own
# format, readable by its eval_tool/calculation.py), printed scores.
set -e

python -m llava.eval.model_vqa_loader \
    --model-path liuhaotian/llava-v1.5-13b \
    --question-file ./playground/data/eval/MME/llava_mme.jsonl \
    --image-folder ./playground/data/eval/MME/MME_Benchmark_release_version \
    --answers-file ./playground/data/eval/MME/answers/llava-v1.5-13b.jsonl \
    --temperature 0 \
    --conv-mode vicuna_v1

python -m llava.eval.eval_mme \
    --gt-dir ./playground/data/eval/MME/MME_Benchmark_release_version \
    --result-file ./playground/data/eval/MME/answers/llava-v1.5-13b.jsonl \
    --output-dir ./playground/data/eval/MME/eval_tool/answers/llava-v1.5-13b
