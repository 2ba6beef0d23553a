#!/bin/bash
# Tiny recipe, stage 1 (feature alignment): the flags of scripts/v1_5/pretrain.sh with a tiny model,
# tiny batches and the synthetic shapes data (python -m llava.data.synthetic). Runs on a laptop CPU.
#
#   DATA=demo_out/data MODELS=demo_out/models OUT=demo_out/checkpoints bash scripts/tiny/pretrain.sh
#
# Launcher: LAUNCH (default: one plain python process on the CPU). On GPUs use e.g.
#   LAUNCH=deepspeed bash scripts/tiny/pretrain.sh --deepspeed ./scripts/zero2.json --bf16 True
# The published recipe (8 GPUs x 32 = global batch 256, ZeRO-2) is scripts/v1_5/pretrain.sh.
# Extra arguments are appended and win.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-./demo_out/data}
MODELS=${MODELS:-./demo_out/models}
OUT=${OUT:-./demo_out/checkpoints}

${LAUNCH:-python} llava/train/train_mem.py \
    --model_name_or_path "$MODELS/tiny-llama" \
    --version plain \
    --data_path "$DATA/pretrain.json" \
    --image_folder "$DATA/images" \
    --vision_tower "$MODELS/tiny-clip" \
    --mm_projector_type mlp2x_gelu \
    --tune_mm_mlp_adapter True \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --output_dir "$OUT/tiny-pretrain" \
    --num_train_epochs 1 \
    --per_device_train_batch_size 32 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 1 \
    --eval_strategy "no" \
    --save_strategy "steps" \
    --save_steps 50 \
    --save_total_limit 1 \
    --learning_rate 1e-3 \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type "cosine" \
    --logging_steps 10 \
    --model_max_length 256 \
    --dataloader_num_workers 0 \
    --lazy_preprocess True \
    --report_to none \
    "$@"
