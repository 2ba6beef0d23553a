#!/bin/bash
# Tiny recipe, stage 2 (visual instruction tuning): the flags of scripts/v1_5/finetune.sh with a tiny
# model, tiny batches and the synthetic shapes data; the projector starts from stage 1's
# mm_projector.bin. The tiny CLIP tower stays frozen as in the published recipe; the demo gives it
# useful features first (llava/data/tools/synthetic_tower.py), as real LLaVA starts from a pre-trained CLIP.
# Runs on a laptop CPU.
#
#   DATA=demo_out/data MODELS=demo_out/models OUT=demo_out/checkpoints bash scripts/tiny/finetune.sh
#
# Launcher: LAUNCH (default: one plain python process on the CPU). On GPUs use e.g.
#   LAUNCH=deepspeed bash scripts/tiny/finetune.sh --deepspeed ./scripts/zero3.json --bf16 True
# The published recipe (8 GPUs x 16 = global batch 128, ZeRO-3) is scripts/v1_5/finetune.sh.
# Extra arguments are appended and win.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-./demo_out/data}
MODELS=${MODELS:-./demo_out/models}
OUT=${OUT:-./demo_out/checkpoints}

${LAUNCH:-python} llava/train/train_mem.py \
    --model_name_or_path "$MODELS/tiny-llama" \
    --version v1 \
    --data_path "$DATA/finetune.json" \
    --image_folder "$DATA/images" \
    --vision_tower "$MODELS/tiny-clip" \
    --pretrain_mm_mlp_adapter "$OUT/tiny-pretrain/mm_projector.bin" \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    --output_dir "$OUT/tiny-finetune" \
    --num_train_epochs 3 \
    --per_device_train_batch_size 8 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 1 \
    --eval_strategy "no" \
    --save_strategy "steps" \
    --save_steps 200 \
    --save_total_limit 1 \
    --learning_rate 2e-3 \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type "cosine" \
    --logging_steps 50 \
    --model_max_length 256 \
    --dataloader_num_workers 0 \
    --lazy_preprocess True \
    --report_to none \
    "$@"
