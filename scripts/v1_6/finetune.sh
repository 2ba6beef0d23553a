#!/bin/bash
# LLaVA-1.6 (LLaVA-NeXT, January 2024) visual instruction tuning: high-resolution "anyres" images,
# the whole LLM, the projector and the CLIP tower train. There is no 1.6 stage 1 of its own: 1.6
# started from LLaVA-1.5's stage-1 projector, so run scripts/v1_5/pretrain.sh first (or download
# liuhaotian/llava-v1.5-mlp2x-336px-pretrain-vicuna-13b-v1.5, docs/MODEL_ZOO.md).
#
# Images: the best of the grids 1x2, 2x1, 2x2, 3x1, 1x3 (336-px tiles, up to 672x672, 1008x336 and
# 336x1008) is chosen per image; the tiles plus the whole image resized to 336 go through CLIP, and
# the tiles' features are laid out as the image's own map (padding cut away, spatial_unpad) with a
# learned newline token after every row: up to 576 + 2352 = 2928 image tokens per image.
#
# Published setting (LLaVA-1.6's release; its checkpoints' config.json): global batch 128, lr 2e-5,
# vision tower lr 2e-6, 1 epoch, ZeRO-3, 4096 tokens, on about 760K samples (not released as one
# file; lmms-lab/LLaVA-NeXT-Data, 779K, is the closest public mixture: give it as --data_path).
# Here: 8 GPUs x per_device_train_batch_size 8 x gradient_accumulation_steps 2 = 128. When you change
# the number of GPUs, keep
#   num_gpus x per_device_train_batch_size x gradient_accumulation_steps = 128
# e.g. 4 GPUs: 8 x 4; 32 GPUs: 4 x 1.
# Other LLMs of the 1.6 release (append; the stage-1 projector must come from the same LLM):
#   Mistral-7B: --model_name_or_path mistralai/Mistral-7B-Instruct-v0.2 --version mistral_instruct
#   34B:        --model_name_or_path NousResearch/Nous-Hermes-2-Yi-34B --version chatml_direct
# Extra arguments are appended and win. Launcher and multi-node: see scripts/v1_5/pretrain.sh (LAUNCH=...).
# A run resumes by itself from the newest complete checkpoint-* in --output_dir.
set -euo pipefail
cd "$(dirname "$0")/../.."

${LAUNCH:-deepspeed} llava/train/train_mem.py \
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
    --unfreeze_mm_vision_tower True \
    --mm_vision_tower_lr 2e-6 \
    --image_aspect_ratio anyres \
    --image_grid_pinpoints "[(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]" \
    --mm_patch_merge_type spatial_unpad \
    --group_by_modality_length True \
    --bf16 True \
    --output_dir ./checkpoints/llava-v1.6-13b \
    --num_train_epochs 1 \
    --per_device_train_batch_size 8 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 2 \
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
    --model_max_length 4096 \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --lazy_preprocess True \
    --report_to wandb \
    "$@"
