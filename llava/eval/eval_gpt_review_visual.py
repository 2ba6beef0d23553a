"""GPT review for LLaVA-Bench (COCO): the judge sees the five captions and the object boxes.

python -m llava.eval.eval_gpt_review_visual --question qa90_questions.jsonl
    --context caps_boxes_coco2014_val_80.jsonl --rule rule.json
    --answer-list qa90_gpt4_answer.jsonl answers/model.jsonl --output reviews/model.jsonl
    [--api-base URL --model NAME --run N]    (key from OPENAI_API_KEY)
"""

from llava.eval.gpt_review import main as _main


def main(argv=None):
    return _main(argv, with_boxes=True, category_prefix="", description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
