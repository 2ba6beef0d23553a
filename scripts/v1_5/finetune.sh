#!/bin/bash
# LLaVA-1.5 stage 2: visual instruction tuning of the whole LLM + projector on llava_v1_5_mix665k,
# starting from the projector of pretrain.sh. Writes a full model in the original LLaVA format.
#
# Published setting: 8 GPUs x per_device_train_batch_size 16 x gradient_accumulation_steps 1
# = global batch 128, lr 2e-5, 1 epoch, ZeRO-3, --image_aspect_ratio pad,
# --group_by_modality_length True. When you change the number of GPUs, keep
#   num_gpus x per_device_train_batch_size x gradient_accumulation_steps = 128
# e.g. 4 GPUs: 16 x 2; 8 GPUs with 40 GB: 8 x 2 (or use ./scripts/zero3_offload.json).
# Extra arguments are appended and win. Launcher and multi-node: see pretrain.sh (LAUNCH=...).
# A run resumes by itself from the newest complete checkpoint-* in --output_dir.
# Faster, same samples and steps: append --packing True (and, with liger-kernel installed,
# --use_liger_kernel True); see docs/Training.md, "Packing" and "Liger kernels".
set -euo pipefail
cd "$(dirname "$0")/../.."

${LAUNCH:-deepspeed} llava/train/train_mem.py \
    --deepspeed ./scripts/zero3.json \
    --model_name_or_path lmsys/vicuna-13b-v1.5 \
    --version v1 \
    --data_path ./playground/data/llava_v1_5_mix665k.json \
    --image_folder ./playground/data \
    --vision_tower openai/clip-vit-large-patch14-336 \
    --pretrain_mm_mlp_adapter ./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    --bf16 True \
    --output_dir ./checkpoints/llava-v1.5-13b \
    --num_train_epochs 1 \
    --per_device_train_batch_size 16 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 1 \
    --evaluation_strategy "no" \
    --save_strategy "steps" \
    --save_steps 50000 \
    --save_total_limit 1 \
    --learning_rate 2e-5 \
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
