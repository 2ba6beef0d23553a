#!/bin/bash
# LLaVA-OneVision stage 1.5 ("mid stage"): the whole model (LLM, projector, SigLIP tower at its own
# lr 2e-6) trains on about 4M high-quality knowledge samples (detailed re-captions, OCR, documents):
# lmms-lab/LLaVA-OneVision-Mid-Data and the LLaVA-ReCap sets. Starts from Qwen2 plus stage 1's
# projector (pretrain.sh); the image newline token is created here. Writes a full model that
# finetune_si.sh starts from.
#
# Images: anyres_max_9 over tile grids (1x1),...,(6x6) of 384-px tiles (up to 2304x2304): the whole
# image as one crop (729 tokens) plus the tiles of the best grid, laid out unpadded with a newline
# after every row and scaled down to about 9 tiles' worth when larger (docs/Data.md, "Tokens").
#
# LLaVA-NeXT did not publish this stage's script; its scripts/train/README.md says the later stages
# are the basic script with another data mixture, so this is finetune_si.sh's setting: global batch
# 256, lr 1e-5, tower lr 2e-6, 1 epoch, ZeRO-3, 32768 tokens, 1 sample per GPU.
# Here: 8 GPUs x 1 x gradient_accumulation_steps 32 = 256. When you change the number of GPUs, keep
#   num_gpus x per_device_train_batch_size x gradient_accumulation_steps = 256
# e.g. 128 GPUs: 1 x 2 (LLaVA-NeXT's 7B runs), 256 GPUs: 1 x 1 (its 72B runs).
# Data: one JSON (list) file. LLaVA-NeXT gives a YAML mixture of many files as --data_path; this
# trainer takes a single file for now, so merge the mixture into one list first.
# --mm_newline_position one_token (a single newline after a video, as OneVision's checkpoints) is
# passed in every stage: the trainer's own default is grid, and the config field is written each run.
# Extra arguments are appended and win. Launcher and multi-node: see scripts/v1_5/pretrain.sh (LAUNCH=...).
set -euo pipefail
cd "$(dirname "$0")/../.."

${LAUNCH:-deepspeed} llava/train/train_mem.py \
    --deepspeed ./scripts/zero3.json \
    --model_name_or_path Qwen/Qwen2-7B-Instruct \
    --version qwen_1_5 \
    --data_path ./playground/data/onevision_mid_stage.json \
    --image_folder ./playground/data \
    --vision_tower google/siglip-so400m-patch14-384 \
    --pretrain_mm_mlp_adapter ./checkpoints/llava-onevision-qwen2-7b-pretrain/mm_projector.bin \
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
    --group_by_modality_length True \
    --bf16 True \
    --output_dir ./checkpoints/llava-onevision-qwen2-7b-mid \
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
