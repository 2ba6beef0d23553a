#!/bin/bash
# LLaVA-1.6 anyres instruction tuning with LoRA on the LLM: the data, images and token layout of
# finetune.sh, with LLaVA-1.5's LoRA settings (r 128, alpha 256, lr 2e-4; the projector trains fully at
# --mm_projector_lr 2e-5). Not a published 1.6 recipe (1.6 was released as full fine-tunes only): the
# CLIP tower stays frozen here, so only the adapter, the projector and the image newline train, and the
# run fits far smaller GPUs. Writes the adapter (adapter_config.json, adapter_model.safetensors),
# non_lora_trainables.bin and config.json; load with --model-base lmsys/vicuna-13b-v1.5.
#
# Global batch 128: 8 GPUs x per_device_train_batch_size 8 x gradient_accumulation_steps 2. When you
# change the number of GPUs, keep
#   num_gpus x per_device_train_batch_size x gradient_accumulation_steps = 128.
# QLoRA: add `--bits 4` (bitsandbytes; use ./scripts/zero2.json, not ZeRO-3).
# Extra arguments are appended and win. Launcher and multi-node: see scripts/v1_5/pretrain.sh (LAUNCH=...).
set -euo pipefail
cd "$(dirname "$0")/../.."

${LAUNCH:-deepspeed} llava/train/train_mem.py \
    --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 \
    --deepspeed ./scripts/zero3.json \
    --model_name_or_path lmsys/vicuna-13b-v1.5 \
    --version v1 \
    --data_path ./playground/data/llava_next_779k.json \
    --image_folder ./playground/data \
    --vision_tower openai/clip-vit-large-patch14-336 \
    --pretrain_mm_mlp_adapter ./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio anyres \
    --image_grid_pinpoints "[(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]" \
    --mm_patch_merge_type spatial_unpad \
    --group_by_modality_length True \
    --bf16 True \
    --output_dir ./checkpoints/llava-v1.6-13b-lora \
    --num_train_epochs 1 \
    --per_device_train_batch_size 8 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 2 \
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
    --model_max_length 4096 \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --lazy_preprocess True \
    --report_to wandb \
    "$@"
