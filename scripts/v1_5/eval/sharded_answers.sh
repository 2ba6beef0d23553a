#!/bin/bash
# Shared by vqav2.sh, gqa.sh and seed.sh: answer a question file greedily with one
# llava.eval.model_vqa_loader process per GPU in CUDA_VISIBLE_DEVICES (default: GPU 0), then join
# the shards in order into OUT_DIR/merge.jsonl.
#
#   bash scripts/v1_5/eval/sharded_answers.sh MODEL_PATH QUESTION_FILE IMAGE_FOLDER OUT_DIR [runner flags]
#
# Shard K of N is written to OUT_DIR/N_K.jsonl; a shard that fails stops the script before the
# merge (rerunning resumes each shard where it stopped). Extra flags go to every runner.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: $0 MODEL_PATH QUESTION_FILE IMAGE_FOLDER OUT_DIR [runner flags]" >&2
    exit 2
fi
model=$1 questions=$2 images=$3 out=$4
shift 4
IFS=',' read -ra gpus <<< "${CUDA_VISIBLE_DEVICES:-0}"
n=${#gpus[@]}
mkdir -p "$out"

pids=()
for k in $(seq 0 $((n - 1))); do
    CUDA_VISIBLE_DEVICES=${gpus[$k]} python -m llava.eval.model_vqa_loader \
        --model-path "$model" \
        --question-file "$questions" \
        --image-folder "$images" \
        --answers-file "$out/${n}_${k}.jsonl" \
        --num-chunks "$n" \
        --chunk-idx "$k" \
        --temperature 0 \
        --conv-mode vicuna_v1 \
        "$@" &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "$pid" || { echo "an answer shard failed; not merging" >&2; exit 1; }
done

tmp="$out/merge.jsonl.tmp"
for k in $(seq 0 $((n - 1))); do
    cat "$out/${n}_${k}.jsonl"
done > "$tmp"
mv "$tmp" "$out/merge.jsonl"
echo "merged $n shard(s) into $out/merge.jsonl"
