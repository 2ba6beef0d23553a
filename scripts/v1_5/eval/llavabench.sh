#!/bin/bash
# LLaVA-Bench (in the wild): answers, a GPT judge's reviews against the GPT-4 reference answers,
# and the summary (relative score = model / reference * 100, per category and overall).
#
# Data (./playground/data/eval/llava-bench-in-the-wild/):
#   questions.jsonl, context.jsonl, answers_gpt4.jsonl, images/
#       (huggingface.co/datasets/liuhaotian/llava-bench-in-the-wild)
#   rule.json   the judge rules ({category: {"role", "prompt"}}), the file haotian-liu/LLaVA ships as
#               llava/eval/table/rule.json; set RULE to use another path
# Needs an OpenAI-compatible judge endpoint: OPENAI_API_KEY, and optionally JUDGE_API_BASE / JUDGE_MODEL
# (the published numbers used gpt-4-0314 and average 3 judge runs: RUNS="0 1 2").
# Judge replies are cached (~/.cache/llava/openai), so re-running costs nothing.
set -e

RULE=${RULE:-./playground/data/eval/llava-bench-in-the-wild/rule.json}
JUDGE_MODEL=${JUDGE_MODEL:-gpt-4o}
RUNS=${RUNS:-0}
API_BASE_ARGS=()
if [ -n "$JUDGE_API_BASE" ]; then API_BASE_ARGS=(--api-base "$JUDGE_API_BASE"); fi

python -m llava.eval.model_vqa \
    --model-path liuhaotian/llava-v1.5-13b \
    --question-file ./playground/data/eval/llava-bench-in-the-wild/questions.jsonl \
    --image-folder ./playground/data/eval/llava-bench-in-the-wild/images \
    --answers-file ./playground/data/eval/llava-bench-in-the-wild/answers/llava-v1.5-13b.jsonl \
    --temperature 0 \
    --conv-mode vicuna_v1

mkdir -p playground/data/eval/llava-bench-in-the-wild/reviews

REVIEWS=()
for RUN in $RUNS; do
    OUT=playground/data/eval/llava-bench-in-the-wild/reviews/llava-v1.5-13b-run$RUN.jsonl
    python llava/eval/eval_gpt_review_bench.py \
        --question playground/data/eval/llava-bench-in-the-wild/questions.jsonl \
        --context playground/data/eval/llava-bench-in-the-wild/context.jsonl \
        --rule "$RULE" \
        --answer-list \
            playground/data/eval/llava-bench-in-the-wild/answers_gpt4.jsonl \
            playground/data/eval/llava-bench-in-the-wild/answers/llava-v1.5-13b.jsonl \
        --output "$OUT" \
        --model "$JUDGE_MODEL" --run "$RUN" "${API_BASE_ARGS[@]}"
    REVIEWS+=("$OUT")
done

python llava/eval/summarize_gpt_review.py -f "${REVIEWS[@]}"
