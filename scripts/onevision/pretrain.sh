#!/bin/bash
# LLaVA-OneVision stage 1: pre-train the projector (mlp2x_gelu) between SigLIP so400m/14-384 and
# Qwen2 on LCS-558K with the plain template; the LLM and the tower stay frozen. Each image is one
# 384-px crop: 27 x 27 = 729 tokens. Writes
# ./checkpoints/llava-onevision-qwen2-7b-pretrain/mm_projector.bin, which mid_stage.sh reads.
#
# Stages, each starting from the one before (docs/Training.md, "LLaVA-OneVision"):
#   pretrain.sh -> mid_stage.sh -> finetune_si.sh -> finetune_ov.sh [-> finetune_video.sh]
#
# Published setting (LLaVA-NeXT's scripts/train/pretrain_siglip.sh; the OneVision paper): lr 1e-3,
# 1 epoch, ZeRO-3, 8192 tokens, 16 samples per GPU; global batch 512 (the paper's). Here: 8 GPUs x
# per_device_train_batch_size 16 x gradient_accumulation_steps 4 = 512. When you change the number
# of GPUs, keep
#   num_gpus x per_device_train_batch_size x gradient_accumulation_steps = 512
# e.g. 32 GPUs: 16 x 1. Other sizes: --model_name_or_path Qwen/Qwen2-0.5B-Instruct or
# Qwen/Qwen2-72B-Instruct (and --output_dir). With a 0.5B or 7B LLM ./scripts/zero2.json is faster
# (the frozen LLM fits every GPU); 72B needs ZeRO-3.
# Extra arguments are appended and win. Launcher and multi-node: see scripts/v1_5/pretrain.sh (LAUNCH=...).
# A run resumes by itself from the newest complete checkpoint-* in --output_dir.
set -euo pipefail
cd "$(dirname "$0")/../.."

${LAUNCH:-deepspeed} llava/train/train_mem.py \
    --deepspeed ./scripts/zero3.json \
    --model_name_or_path Qwen/Qwen2-7B-Instruct \
    --version plain \
    --data_path ./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json \
    --image_folder ./playground/data/LLaVA-Pretrain/images \
    --vision_tower google/siglip-so400m-patch14-384 \
    --mm_projector_type mlp2x_gelu \
    --tune_mm_mlp_adapter True \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --bf16 True \
    --output_dir ./checkpoints/llava-onevision-qwen2-7b-pretrain \
    --num_train_epochs 1 \
    --per_device_train_batch_size 16 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 4 \
    --evaluation_strategy "no" \
    --save_strategy "steps" \
    --save_steps 24000 \
    --save_total_limit 1 \
    --learning_rate 1e-3 \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type "cosine" \
    --logging_steps 1 \
    --tf32 True \
    --model_max_length 8192 \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --lazy_preprocess True \
    --report_to wandb \
    "$@"
