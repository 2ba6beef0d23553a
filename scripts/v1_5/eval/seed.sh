#!/bin/bash
# SEED-Bench (image and video questions): sharded answers, merged, scored per question type,
# image / video / overall, and the upload file written.
#
# Data (./playground/data/eval/seed_bench/):
#   llava-seed-bench.jsonl   questions (LLaVA's eval.zip)
#   SEED-Bench.json          ground truth (huggingface.co/datasets/AILab-CVC/SEED-Bench)
#   SEED-Bench-image/        images (same source)
#   SEED-Bench-video-image/  middle frames of the videos (extract with LLaVA's extract_video_frames.py recipe)
# Output: answers/$CKPT/merge.jsonl, answers_upload/llava-v1.5-13b.jsonl, printed accuracies.
set -e

CKPT="llava-v1.5-13b"

bash scripts/v1_5/eval/sharded_answers.sh liuhaotian/llava-v1.5-13b \
    ./playground/data/eval/seed_bench/llava-seed-bench.jsonl \
    ./playground/data/eval/seed_bench \
    ./playground/data/eval/seed_bench/answers/$CKPT

output_file=./playground/data/eval/seed_bench/answers/$CKPT/merge.jsonl

# Evaluate
python scripts/convert_seed_for_submission.py \
    --annotation-file ./playground/data/eval/seed_bench/SEED-Bench.json \
    --result-file $output_file \
    --result-upload-file ./playground/data/eval/seed_bench/answers_upload/llava-v1.5-13b.jsonl
