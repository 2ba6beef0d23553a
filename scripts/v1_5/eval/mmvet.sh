#!/bin/bash
# MM-Vet: answers, converted to the file MM-Vet's GPT-4 grader reads.
#
# Data (./playground/data/eval/mm-vet/):
#   llava-mm-vet.jsonl   questions (LLaVA's eval.zip)
#   images/              MM-Vet images (github.com/yuweihao/MM-Vet, mm-vet.zip)
# Output: answers/llava-v1.5-13b.jsonl, results/llava-v1.5-13b.json. Grade that file with MM-Vet's
# grader (its online evaluator, huggingface.co/spaces/whyu/MM-Vet_Evaluator, or its
# mm-vet_evaluator script with your OpenAI key), then summarise the grade file:
#   python -m llava.eval.eval_mmvet --grade-file results/llava-v1.5-13b_gpt-4-grade-1runs.json [--metadata mm-vet.json]
set -e

python -m llava.eval.model_vqa \
    --model-path liuhaotian/llava-v1.5-13b \
    --question-file ./playground/data/eval/mm-vet/llava-mm-vet.jsonl \
    --image-folder ./playground/data/eval/mm-vet/images \
    --answers-file ./playground/data/eval/mm-vet/answers/llava-v1.5-13b.jsonl \
    --temperature 0 \
    --conv-mode vicuna_v1

mkdir -p ./playground/data/eval/mm-vet/results

python scripts/convert_mmvet_for_eval.py \
    --src ./playground/data/eval/mm-vet/answers/llava-v1.5-13b.jsonl \
    --dst ./playground/data/eval/mm-vet/results/llava-v1.5-13b.json
