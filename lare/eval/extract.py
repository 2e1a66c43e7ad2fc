"""Answers from free text, the way evaluation harnesses read them.

A model's reply rarely is just "B" or "yes": it says "(B)", "B. a red star", "The answer is B", "No, there is
none", or the option text itself. These rules turn such replies into what a scorer compares with the gold answer.

- `answer_span` and `normalize_answer` (lare/answers.py, shared with training's validation): the part of a reply
  after its last "Answer:", and open answers VQA-style (lower case, no punctuation or articles, number words as digits).
- `extract_choice`: a multiple-choice letter. VLMEvalKit's rule-based matcher (`can_infer`: a lone option letter,
  else a unique option text) extended with the explicit forms harnesses' regexes accept ("(C)", "C.", "Answer: C",
  "the answer is C", "option C"), lower-case letters where they cannot be an English word, and ambiguity -> None.
  No LLM judge and no random fallback: an unreadable reply is wrong.
- `extract_yes_no`: POPE. See the function for the convention.
"""

from __future__ import annotations

import re
import string

from lare.answers import NUMBER_WORDS, answer_span, normalize_answer  # noqa: F401  (the eval API names them)

# ---------------------------------------------------------------------------------------------
# Yes / no (POPE)

_NEGATIONS = {"no", "not", "none", "nothing", "nobody", "neither", "nor", "never", "cannot"}


def extract_yes_no(text: str | None) -> str | None:
    """"yes", "no", or None when the reply says neither.

    Convention (LLaVA's eval_pope.py, made explicit where it is silent), on the answer span's first sentence:
      1. its first word is "yes" or "no" -> that ("Yes, but it is not red" -> yes; LLaVA alone would say no);
      2. otherwise a negation word -> "no": LLaVA's "no"/"not", plus "none", "nothing", "never", "cannot" and any
         "n't" contraction ("I don't see any" -> no; LLaVA splits on spaces and would miss it);
      3. otherwise "yes" anywhere in it -> "yes";
      4. otherwise None. LLaVA counts such a reply as "yes"; we follow VLMEvalKit's `YOrN_Extraction`, which
         calls it Unknown: it scores as wrong and is not a "yes" in precision, recall or the yes-ratio.
    """
    span = answer_span(text).lower()
    sentences = [s for s in re.split(r"[.!?\n]", span) if s.strip()]
    if not sentences:
        return None
    words = re.findall(r"[a-z]+(?:'[a-z]+)?", sentences[0].replace("’", "'"))
    if not words:
        return None
    if words[0] in ("yes", "no"):
        return words[0]
    if any(w in _NEGATIONS or w.endswith("n't") for w in words):
        return "no"
    if "yes" in words:
        return "yes"
    return None


# ---------------------------------------------------------------------------------------------
# Multiple choice

LETTERS = string.ascii_uppercase


def _letters(choices) -> str:
    return LETTERS[:len(choices)]


def _only(found: set[str]) -> str | None:
    return next(iter(found)) if len(found) == 1 else None


# Explicit statements. "The answer is B" outranks "option B" ("Option A is wrong; the answer is C" -> C).
_LETTER = r"[\s*_\"'`]*[(\[]?([A-Za-z])[)\]]?(?![A-Za-z0-9])"  # "B", "(b)", "**C**", "[D]"
_ANSWER_IS = re.compile(r"\banswer(?:\s+(?:is|would be|should be))?\s*:?" + _LETTER, re.IGNORECASE)
_OPTION_IS = re.compile(r"\b(?:option|choice)(?:\s+is)?\s*:?" + _LETTER, re.IGNORECASE)
# The whole reply is a letter: "B", "(b)", "c.", "**D**", "[A]".
_BARE = re.compile(r"[\s*_\"'`]*[(\[]?([A-Za-z])[)\]]?[\s*_\"'`.:)]*")
# The reply starts with a letter and a delimiter: "A. the cat", "(B) dog", "c) ...", "D: ...".
_LEADING = re.compile(r"[\s*_\"'`]*(?:[(\[]([A-Za-z])[)\]]|([A-Z])[.:)](?=\s|$)|([a-z])\)(?=\s|$))")
# A capital letter standing alone as a token.
_TOKEN = re.compile(r"(?<![A-Za-z0-9])(?<![A-Za-z]['’])([A-Z])(?![A-Za-z0-9])(?!['’][A-Za-z])")


def _is_word_use(text: str, m: re.Match) -> bool:
    """The article "A" opening a sentence ("A cat sits") and the pronoun "I" ("I think"): a lower-case word follows
    (not "or"/"and": "either A or D" names options)."""
    nxt = re.match(r"\s+([a-z]+)", text[m.end():])
    if m.group(1) not in "AI" or not nxt or nxt.group(1) in ("or", "and", "nor"):
        return False
    return m.group(1) == "I" or re.search(r"(^|[.!?\n])[\s*\"'`]*$", text[:m.start()]) is not None


def _stated(pattern: re.Pattern, span: str, valid: str) -> set[str]:
    """Letters an explicit statement names. A lower-case one counts only when no word follows it
    ("the answer is c." yes; "the answer is a cat" no)."""
    found = set()
    for m in pattern.finditer(span):
        letter = m.group(1)
        if letter.islower() and re.match(r"\s+[a-z]", span[m.end():]):
            continue
        if letter.upper() in valid:
            found.add(letter.upper())
    return found


def _match_option_text(span: str, choices) -> str | None:
    """The one option whose text the reply gives; options contained in a longer matched option yield to it."""
    reply = normalize_answer(span)
    if not reply:
        return None
    texts = {L: normalize_answer(str(c)) for L, c in zip(_letters(choices), choices) if str(c).strip()}
    exact = {L for L, t in texts.items() if t and t == reply}
    if exact:
        return _only(exact)
    hits = {L for L, t in texts.items() if t and re.search(rf"(?<![\w.]){re.escape(t)}(?![\w])", reply)}
    hits = {L for L in hits if not any(o != L and texts[L] != texts[o] and texts[L] in texts[o] for o in hits)}
    return _only(hits)


def extract_choice(text: str | None, choices) -> str | None:
    """The option letter a reply picks among `choices` (option texts in letter order), or None.

    In order, the first rule that decides wins:
      1. the answer span is a valid letter alone: "B", "(b)", "c." (an invalid one may still be an option's text);
      2. it starts with a letter and a delimiter: "A. The cat", "(C) a dog", "D: ...";
      3. an explicit statement: "the answer is B", "Answer: (C)", "option D" (several different letters -> None);
      4. capital letters standing alone, skipping a sentence-opening article "A" and the pronoun "I":
         exactly one valid option letter -> it; two or more ("B and C") -> None;
      5. the option text: the reply equals one option's text, or contains exactly one (after normalize_answer).
    Letters outside the options never count; an empty option text (unknown, e.g. MMMU-Pro vision) only
    matches by letter.
    """
    valid = _letters(choices)
    span = answer_span(text)
    if not span or not valid:
        return None

    m = _BARE.fullmatch(span)
    if m and m.group(1).upper() in valid:
        return m.group(1).upper()

    m = _LEADING.match(span)
    if m:
        letter = next(g for g in m.groups() if g).upper()
        if letter in valid:
            return letter

    for pattern in (_ANSWER_IS, _OPTION_IS):
        stated = _stated(pattern, span, valid)
        if stated:
            return _only(stated)

    tokens = {m.group(1) for m in _TOKEN.finditer(span) if not _is_word_use(span, m)} & set(valid)
    if tokens:
        return _only(tokens)

    return _match_option_text(span, choices)
