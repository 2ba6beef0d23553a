#!/bin/bash
# LoRA (r 128, alpha 256, lr 2e-4; projector at --mm_projector_lr 2e-5) on a trained LLaVA-1.5 for
# your own task data in the mix665k format. Load the result with --model-base liuhaotian/llava-v1.5-13b.
#
# Published setting: 8 GPUs x per_device_train_batch_size 16 x gradient_accumulation_steps 1
# = global batch 128, 1 epoch, ZeRO-3. When you change the number of GPUs, keep
#   num_gpus x per_device_train_batch_size x gradient_accumulation_steps = 128.
# QLoRA: add `--bits 4` and use ./scripts/zero2.json. Extra arguments are appended and win.
# Launcher and multi-node: see pretrain.sh (LAUNCH=...).
set -euo pipefail
cd "$(dirname "$0")/../.."

${LAUNCH:-deepspeed} llava/train/train_mem.py \
    --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 \
    --deepspeed ./scripts/zero3.json \
    --model_name_or_path liuhaotian/llava-v1.5-13b \
    --version v1 \
    --data_path ./playground/data/llava_v1_5_mix665k.json \
    --image_folder ./playground/data \
    --vision_tower openai/clip-vit-large-patch14-336 \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    --bf16 True \
    --output_dir ./checkpoints/llava-v1.5-13b-task-lora \
    --num_train_epochs 1 \
    --per_device_train_batch_size 16 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 1 \
    --evaluation_strategy "no" \
    --save_strategy "steps" \
    --save_steps 50000 \
    --save_total_limit 1 \
    --learning_rate 2e-4 \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type "cosine" \
    --logging_steps 1 \
    --tf32 True \
    --model_max_length 2048 \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --lazy_preprocess True \
    --report_to wandb \
    "$@"
