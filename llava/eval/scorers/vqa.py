"""VQA-style answers: the EvalAI answer normalisation and the 10-annotator soft accuracy.

Used by VQAv2, VizWiz and TextVQA. The normalisation follows the EvalAI / VQA evaluation tool
step by step, including two quirks of the reference implementation that change outputs and are
kept on purpose so upload files and scores match the official tools byte for byte:

* the "period strip" pattern is written ``(?!<=\\d)(\\.)(?!\\d)`` there; the first group is a
  (mistyped) look-ahead that can never match at a ``.``, so in effect it is ``\\.(?!\\d)``;
* ``re.UNICODE`` (= 32) is passed as the *count* argument of ``sub``, so at most 32 periods are
  removed from one answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# The contraction table of the VQA evaluation tool (a fixed part of the metric's definition).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
_PERIOD = re.compile(r"\.(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d)(,)+(?=\d)")
_MAX_PERIODS_REMOVED = 32  # see the module docstring


def _strip_punctuation(text: str) -> str:
    # A mark touching a space (or any digit,digit in the answer) is deleted; otherwise it becomes a space.
    # The test looks at the input text, not at the partly processed one (as the reference tool does).
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        spaced = (mark + " ") in text or (" " + mark) in text
        out = out.replace(mark, "" if spaced or has_digit_comma else " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS_REMOVED)


def _digits_articles_contractions(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """EvalAI's answer processing: lower case, punctuation, number words, articles, contractions."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles_contractions(_strip_punctuation(text))


class EvalAIAnswerProcessor:
    """Callable form of :func:`normalize_answer` (the name the original code imports)."""

    def __call__(self, item: str) -> str:
        return normalize_answer(item)


def vqa_accuracy(prediction: str, gt_answers: Sequence[str], normalize: bool = True) -> float:
    """VQA soft accuracy: mean over the leave-one-annotator-out subsets of min(1, #matches / 3).

    With the usual 10 human answers, a prediction given by >= 4 annotators scores 1.0, by 3 scores
    0.9, by 2 scores 0.6, by 1 scores 0.3.
    """
    if not gt_answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    if normalize:
        prediction = normalize_answer(prediction)
        gt_answers = [normalize_answer(a) for a in gt_answers]
    matches = sum(a == prediction for a in gt_answers)
    return sum(min(1.0, (matches - (a == prediction)) / 3.0) for a in gt_answers) / len(gt_answers)


def mean_vqa_accuracy(pairs: Sequence[tuple[str, Sequence[str]]]) -> float:
    """Mean :func:`vqa_accuracy` over ``(prediction, gt_answers)`` pairs."""
    if not pairs:
        raise ValueError("no predictions to score")
    return sum(vqa_accuracy(p, gts) for p, gts in pairs) / len(pairs)


def answers_by_question_id(answers: Sequence[dict]) -> dict:
    return {a["question_id"]: a["text"] for a in answers}


def vizwiz_upload(questions: Sequence[dict], answers: Sequence[dict]) -> list[dict]:
    """The VizWiz EvalAI upload: ``[{"image", "answer"}]`` in question-file order, answers normalised."""
    by_id = answers_by_question_id(answers)
    missing = [q["question_id"] for q in questions if q["question_id"] not in by_id]
    if missing:
        raise KeyError(
            f"{len(missing)} VizWiz questions have no answer (first: {missing[:5]}); "
            "finish answer generation (it resumes) before converting"
        )
    return [{"image": q["image"], "answer": normalize_answer(by_id[q["question_id"]])} for q in questions]


def vqav2_upload(questions: Sequence[dict], answers: Sequence[dict]) -> tuple[list[dict], int]:
    """The VQAv2 EvalAI upload: one entry per test question (empty answer where none was generated).

    Returns the entries and how many questions had no answer (the test-dev answers cover only the
    test-dev subset of the full test split the server expects).
    """
    by_id = answers_by_question_id(answers)
    out, missing = [], 0
    for q in questions:
        qid = q["question_id"]
        if qid in by_id:
            out.append({"question_id": qid, "answer": normalize_answer(by_id[qid])})
        else:
            missing += 1
            out.append({"question_id": qid, "answer": ""})
    return out, missing
