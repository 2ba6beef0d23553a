"""GPT review for LLaVA-Bench (in the wild): the judge sees the image's caption, rules ``llava_bench_<category>``.

python -m llava.eval.eval_gpt_review_bench --question questions.jsonl --context context.jsonl
    --rule rule.json --answer-list answers_gpt4.jsonl answers/model.jsonl --output reviews/model.jsonl
    [--api-base URL --model NAME --run N]    (key from OPENAI_API_KEY)
"""

from llava.eval.gpt_review import main as _main


def main(argv=None):
    return _main(argv, with_boxes=False, category_prefix="llava_bench_", description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
