#!/bin/bash
# LLaVA-1.5 stage 1: pre-train the projector (mlp2x_gelu) on LCS-558K; the LLM and CLIP stay frozen.
# Writes ./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin (keys model.mm_projector.*), which
# finetune.sh / finetune_lora.sh read with --pretrain_mm_mlp_adapter.
#
# Published setting: 8 GPUs x per_device_train_batch_size 32 x gradient_accumulation_steps 1
# = global batch 256, lr 1e-3, 1 epoch, ZeRO-2. When you change the number of GPUs, keep
#   num_gpus x per_device_train_batch_size x gradient_accumulation_steps = 256
# e.g. 4 GPUs: --per_device_train_batch_size 32 --gradient_accumulation_steps 2
#      (or 16 x 4 on 40 GB cards); 1 GPU: 32 x 8.
# Extra arguments are appended and win, e.g. `bash scripts/v1_5/pretrain.sh --gradient_accumulation_steps 2`.
#
# Launcher: LAUNCH (default `deepspeed`, all GPUs of this machine). Multi-node:
#   LAUNCH="deepspeed --hostfile ./hostfile --master_addr node0 --master_port 29500" bash scripts/v1_5/pretrain.sh
#     (hostfile lines: `node0 slots=8`, `node1 slots=8`; passwordless ssh between the nodes)
#   or on every node:
#   LAUNCH="torchrun --nnodes 2 --node_rank \$NODE_RANK --nproc_per_node 8 --master_addr node0 --master_port 29500" \
#     bash scripts/v1_5/pretrain.sh
# A run resumes by itself from the newest complete checkpoint-* in --output_dir.
set -euo pipefail
cd "$(dirname "$0")/../.."

${LAUNCH:-deepspeed} llava/train/train_mem.py \
    --deepspeed ./scripts/zero2.json \
    --model_name_or_path lmsys/vicuna-13b-v1.5 \
    --version plain \
    --data_path ./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json \
    --image_folder ./playground/data/LLaVA-Pretrain/images \
    --vision_tower openai/clip-vit-large-patch14-336 \
    --mm_projector_type mlp2x_gelu \
    --tune_mm_mlp_adapter True \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --bf16 True \
    --output_dir ./checkpoints/llava-v1.5-13b-pretrain \
    --num_train_epochs 1 \
    --per_device_train_batch_size 32 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 1 \
    --evaluation_strategy "no" \
    --save_strategy "steps" \
    --save_steps 24000 \
    --save_total_limit 1 \
    --learning_rate 1e-3 \
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
