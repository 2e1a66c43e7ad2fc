"""What a reply answers, and when two answers are the same: one rule for training's validation, generation and
the evaluation's scorers.

- `answer_span`: the part of a reply that holds the answer. LaRe models end with "Answer: X" (lare/processor.py):
  only what follows the last "Answer:" (any case) counts, before the end marker, special tokens removed.
- `normalize_answer`: open answers, VQA-style (lower case, no punctuation or articles, number words as digits).
"""

from __future__ import annotations

import re
import string

_SPECIAL = re.compile(r"<\|[a-z_]+\|>")
_ANSWER_MARK = re.compile(r"\banswer\s*:", re.IGNORECASE)


def answer_span(text: str | None) -> str:
    """What follows the last "Answer:" (any case), before <|im_end|>, special tokens removed."""
    if not text:
        return ""
    text = text.split("<|im_end|>")[0]
    marks = list(_ANSWER_MARK.finditer(text))
    if marks:
        text = text[marks[-1].end():]
    return _SPECIAL.sub(" ", text).strip()


_ARTICLES = {"a", "an", "the"}
NUMBER_WORDS = {
    "zero": "0", "none": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13",
    "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19",
    "twenty": "20",
}


def normalize_answer(text: str | None) -> str:
    """Lower case; punctuation, articles and extra spaces dropped; number words as digits ("Two." -> "2").

    Decimal points and thousands separators inside numbers survive ("3.5", "1,000" -> "1000"), so numbers
    compare as numbers; every other punctuation mark becomes a space ("top-left" -> "top left")."""
    text = (text or "").lower()
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)
    text = "".join(" " if ch in string.punctuation and ch != "." else ch for ch in text)
    words = [NUMBER_WORDS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def answers_match(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)
