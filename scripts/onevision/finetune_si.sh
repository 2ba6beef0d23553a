#!/bin/bash
# LLaVA-OneVision stage 2, single-image (SI): the whole model (LLM, projector, SigLIP tower at lr 2e-6)
# trains on about 3.2M single-image instruction samples (lmms-lab/LLaVA-OneVision-Data; LLaVA-NeXT's
# scripts/train/single_image.yaml lists the mixture). Starts from mid_stage.sh's model; the result is
# what lmms-lab/llava-onevision-qwen2-*-si are, and what finetune_ov.sh starts from.
#
# Published setting (LLaVA-NeXT's scripts/train/finetune_si.sh): global batch 256 (7B: 128 GPUs x 1 x
# accumulation 2; 72B: 256 GPUs x 1 x 1), lr 1e-5, tower lr 2e-6, 1 epoch, ZeRO-3, 32768 tokens,
# anyres_max_9 over (1x1),...,(6x6), spatial_unpad, at most 32 frames per video.
# Here: 8 GPUs x per_device_train_batch_size 1 x gradient_accumulation_steps 32 = 256. When you
# change the number of GPUs, keep
#   num_gpus x per_device_train_batch_size x gradient_accumulation_steps = 256.
# Data: one JSON (list) file; LLaVA-NeXT's YAML mixture (several files with sampling rules) is not
# read by this trainer yet: merge the files into one list. Left out from LLaVA-NeXT's command:
# --mm_tunable_parts (here: --unfreeze_mm_vision_tower True; the LLM and projector train by default),
# --torch_compile (not tested with this model), --attn_implementation (train_mem.py picks it).
# Other sizes: --model_name_or_path and --output_dir of the 0.5B / 72B chain.
# Extra arguments are appended and win. Launcher and multi-node: see scripts/v1_5/pretrain.sh (LAUNCH=...).
set -euo pipefail
cd "$(dirname "$0")/../.."

${LAUNCH:-deepspeed} llava/train/train_mem.py \
    --deepspeed ./scripts/zero3.json \
    --model_name_or_path ./checkpoints/llava-onevision-qwen2-7b-mid \
    --version qwen_1_5 \
    --data_path ./playground/data/onevision_single_image.json \
    --image_folder ./playground/data \
    --vision_tower google/siglip-so400m-patch14-384 \
    --unfreeze_mm_vision_tower True \
    --mm_vision_tower_lr 2e-6 \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio anyres_max_9 \
    --image_grid_pinpoints "(1x1),...,(6x6)" \
    --mm_patch_merge_type spatial_unpad \
    --mm_newline_position one_token \
    --mm_spatial_pool_stride 2 \
    --mm_spatial_pool_mode bilinear \
    --frames_upbound 32 \
    --group_by_modality_length True \
    --bf16 True \
    --output_dir ./checkpoints/llava-onevision-qwen2-7b-si \
    --num_train_epochs 1 \
    --per_device_train_batch_size 1 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 32 \
    --evaluation_strategy "no" \
    --save_strategy "steps" \
    --save_steps 1000 \
    --save_total_limit 1 \
    --learning_rate 1e-5 \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type "cosine" \
    --logging_steps 1 \
    --tf32 True \
    --model_max_length 32768 \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --dataloader_drop_last True \
    --lazy_preprocess True \
    --report_to wandb \
    "$@"
