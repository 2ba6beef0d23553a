#!/bin/bash
# LLaVA-OneVision stage 2, OneVision (OV): the whole model (LLM, projector, SigLIP tower at lr 2e-6)
# trains on about 1.6M samples mixing single images (about 800K replayed from the SI stage), several
# images per sample (M4-Instruct) and videos (LLaVA-Video-178K's academic subsets, LLaVA-Hound);
# LLaVA-NeXT's scripts/train/onevision.yaml lists the mixture. Starts from finetune_si.sh's model; the
# result is what lmms-lab/llava-onevision-qwen2-*-ov are.
#
# How each sample is seen (docs/Data.md): its only image as anyres_max_9 (at most about 8.8K tokens);
# each of several images as one padded 384-px crop (729 tokens + 1 newline); a video as at most 32
# frames (--frames_upbound; one per second before that), each pooled to 14 x 14 = 196 tokens, then one
# newline after the whole video (--mm_newline_position one_token): 32 x 196 + 1 = 6273 tokens.
#
# Published setting (LLaVA-NeXT's scripts/train/finetune_ov.sh): as the SI stage: global batch 256,
# lr 1e-5, tower lr 2e-6, 1 epoch, ZeRO-3, 32768 tokens, --frames_upbound 32.
# Here: 8 GPUs x per_device_train_batch_size 1 x gradient_accumulation_steps 32 = 256. When you
# change the number of GPUs, keep
#   num_gpus x per_device_train_batch_size x gradient_accumulation_steps = 256.
# Data: one JSON (list) file whose samples may hold "image" (a name or a list) or "video"; LLaVA-NeXT's
# YAML mixture is not read by this trainer yet: merge the files into one list. Videos are looked up
# under --video_folder. Left out from LLaVA-NeXT's command: --mm_tunable_parts (here
# --unfreeze_mm_vision_tower True), --torch_compile, --attn_implementation (train_mem.py picks it).
# Extra arguments are appended and win. Launcher and multi-node: see scripts/v1_5/pretrain.sh (LAUNCH=...).
set -euo pipefail
cd "$(dirname "$0")/../.."

${LAUNCH:-deepspeed} llava/train/train_mem.py \
    --deepspeed ./scripts/zero3.json \
    --model_name_or_path ./checkpoints/llava-onevision-qwen2-7b-si \
    --version qwen_1_5 \
    --data_path ./playground/data/onevision_ov.json \
    --image_folder ./playground/data \
    --video_folder ./playground/data/videos \
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
    --output_dir ./checkpoints/llava-onevision-qwen2-7b-ov \
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
