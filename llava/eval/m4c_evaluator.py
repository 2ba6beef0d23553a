"""The names the original code imports from ``llava.eval.m4c_evaluator``.

``EvalAIAnswerProcessor`` (answer normalisation) and ``TextVQAAccuracyEvaluator`` (soft accuracy
over a list of ``{"pred_answer", "gt_answers"}``); the logic lives in ``llava.eval.scorers.vqa``.
"""

from __future__ import annotations

from llava.eval.scorers.vqa import EvalAIAnswerProcessor, normalize_answer, vqa_accuracy

__all__ = ["EvalAIAnswerProcessor", "TextVQAAccuracyEvaluator", "STVQAAccuracyEvaluator"]


class TextVQAAccuracyEvaluator:
    def __init__(self):
        self.answer_processor = EvalAIAnswerProcessor()

    def eval_pred_list(self, pred_list) -> float:
        if not pred_list:
            raise ValueError("no predictions to score")
        return sum(vqa_accuracy(e["pred_answer"], e["gt_answers"]) for e in pred_list) / len(pred_list)


class STVQAAccuracyEvaluator:
    """Exact match against any ground-truth answer, after the same normalisation."""

    def __init__(self):
        self.answer_processor = EvalAIAnswerProcessor()

    def eval_pred_list(self, pred_list) -> float:
        if not pred_list:
            raise ValueError("no predictions to score")
        hits = [
            normalize_answer(e["pred_answer"]) in {normalize_answer(a) for a in e["gt_answers"]}
            for e in pred_list
        ]
        return sum(hits) / len(hits)
