#!/bin/bash
# Optional video stage after OneVision (LLaVA-Video's recipe, LLaVA-NeXT's
# scripts/video/train/SO400M_Qwen2_7B_ov_to_video_am9.sh): the whole model (SigLIP tower at lr 2e-6)
# continues on video-heavy data (lmms-lab/LLaVA-Video-178K plus image data) from an OneVision model,
# with more frames and a finer video layout:
#   --frames_upbound 64 --force_sample True   always 64 frames spread evenly over the video
#   --mm_newline_position grid                a newline after every row of every pooled frame:
#                                             64 x (196 + 14) = 13,440 tokens per video
# Changing the newline layout from OneVision's one_token is part of the recipe; the model learns it here.
#
# Published setting: lr 1e-5, tower lr 2e-6, 1 epoch, ZeRO-3, 32768 tokens, 1 sample per GPU x
# accumulation 2 (global batch 2 x the number of GPUs). Here: 8 GPUs x 1 x
# gradient_accumulation_steps 32 = 256, as the OneVision stages; keep
#   num_gpus x per_device_train_batch_size x gradient_accumulation_steps = 256
# when you change the number of GPUs. Left out from LLaVA-NeXT's command: --add_time_instruction (a
# sentence with the video's duration and frame times added to the prompt; not implemented here),
# --mm_tunable_parts (here --unfreeze_mm_vision_tower True), --torch_compile.
# Data: one JSON (list) file (LLaVA-NeXT's YAML mixture: merge it into one list first).
# Starts from finetune_ov.sh's model; a downloaded one works too: --model_name_or_path lmms-lab/llava-onevision-qwen2-7b-ov.
# Extra arguments are appended and win. Launcher and multi-node: see scripts/v1_5/pretrain.sh (LAUNCH=...).
set -euo pipefail
cd "$(dirname "$0")/../.."

${LAUNCH:-deepspeed} llava/train/train_mem.py \
    --deepspeed ./scripts/zero3.json \
    --model_name_or_path ./checkpoints/llava-onevision-qwen2-7b-ov \
    --version qwen_1_5 \
    --data_path ./playground/data/llava_video_mix.json \
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
    --mm_newline_position grid \
    --mm_spatial_pool_stride 2 \
    --mm_spatial_pool_mode bilinear \
    --frames_upbound 64 \
    --force_sample True \
    --group_by_modality_length True \
    --bf16 True \
    --output_dir ./checkpoints/llava-video-qwen2-7b \
    --num_train_epochs 1 \
    --per_device_train_batch_size 1 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 32 \
    --evaluation_strategy "no" \
    --save_strategy "steps" \
    --save_steps 500 \
    --save_total_limit 1 \
    --learning_rate 1e-5 \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type "cosine" \
    --logging_steps 1 \
    --tf32 True \
    --model_max_length 32768 \
    --gradient_checkpointing True \
    --dataloader_num_workers 2 \
    --dataloader_drop_last True \
    --lazy_preprocess True \
    --report_to wandb \
    "$@"
