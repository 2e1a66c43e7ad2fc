"""One validator for a finished trace record, plus the list of reject reasons.

`validate_trace` is the single place that decides whether a trace row is good data; the
pipeline calls it on every row just before writing, whatever the source. It is about data
quality (the model core re-checks shapes and tokens at training time on its own).
Image-level problems (unreadable, corrupt, bomb, outside the root) are found while locating and
decoding the image, in pipelines/images.py, and use the same reason codes.
"""

import math
import re

# Stable codes: they are what dashboards and the manifest count, so never rename one.
REASONS = {
    "image_unreadable": "the image file is missing or cannot be opened",
    "image_outside_root": "the image path resolves outside image_root (../, an absolute path, a symlink leaving it); never opened",
    "corrupt_image": "the image bytes do not decode (corrupt, truncated, unknown format)",
    "decompression_bomb": "the image header declares more pixels than max_pixels",
    "image_too_small": "the image's shorter side is below min_side",
    "image_size_mismatch": "the annotation's width/height disagree with the image's aspect ratio",
    "missing_field": "a required field is absent or null",
    "empty_field": "a required field is present but empty",
    "bad_field": "a field has the wrong type or an unparsable value",
    "text_too_long": "a question, answer, choice or step text is longer than max_text_chars characters",
    "control_characters": "a text holds control characters other than tab, newline and carriage return",
    "bbox_out_of_range": "a box lies outside the image (beyond a 1-pixel tolerance)",
    "bbox_degenerate": "a box has x1 >= x2 or y1 >= y2, or covers less than one stored pixel",
    "duplicate_id": "the id (source + source id) was already seen earlier in the input",
    "answer_not_in_choices": "choices are given and the answer is not one of them",
    "region_not_found": "the reader derives regions from the image and found none",
    "source_error": "the source's converter failed on this record (see detail)",
}

REQUIRED_TEXT = ("id", "source", "split", "question", "answer")

# Longest question, answer, choice or step text kept, in characters (code points). Real VQA texts are far
# shorter; a longer one is nearly always a broken export (a whole document, base64 in the wrong column).
MAX_TEXT_CHARS = 4000
# C0 controls, DEL and C1 controls, except \t \n \r: they render as nothing or garbage and break tokenisers.
# Format characters (zero-width joiner in emoji, bidi marks) are meaningful text and are kept.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def validate_trace(rec: dict, *, min_side: int = 28, max_text_chars: int = MAX_TEXT_CHARS) -> tuple[str, str] | None:
    """Return (reason, detail) for the first problem found in a trace record, or None if it is good.

    `rec` has the TRACE_SCHEMA columns. Boxes must already be normalised to the stored image.
    `steps` may be empty: a plain VQA record without reasoning is good data.
    """
    return (_check_required(rec) or _check_image(rec, min_side)
            or _check_texts(rec, max_text_chars) or _check_choices(rec) or _check_steps(rec))


def _check_required(rec: dict):
    for name in REQUIRED_TEXT:
        value = rec.get(name)
        if value is None:
            return "missing_field", f"field '{name}' is missing"
        if not isinstance(value, str):
            return "bad_field", f"field '{name}' must be a string, got {type(value).__name__}"
        if not value.strip():
            return "empty_field", f"field '{name}' is empty"
    for name, empty in (("choices", "use [] for open questions"), ("steps", "use [] for a record without reasoning")):
        if rec.get(name) is None:
            return "missing_field", f"field '{name}' is missing ({empty})"
    return None


def _check_image(rec: dict, min_side: int):
    if rec.get("image") is None and not rec.get("image_uri"):
        return "missing_field", "field 'image' is missing (and no 'image_uri')"
    for name in ("width", "height"):
        if not isinstance(rec.get(name), int):
            return "missing_field", f"field '{name}' is missing"
    if min(rec["width"], rec["height"]) < min_side:
        return "image_too_small", f"stored image is {rec['width']}x{rec['height']}, min_side is {min_side}"
    return None


def check_text(name: str, text: str, max_text_chars: int = MAX_TEXT_CHARS):
    """(reason, detail) when one text is too long or holds control characters, else None. Text is never altered."""
    if len(text) > max_text_chars:
        return "text_too_long", f"field '{name}' has {len(text)} characters, max_text_chars is {max_text_chars}"
    bad = CONTROL_CHARACTERS.search(text)
    if bad:
        return "control_characters", f"field '{name}' holds control character U+{ord(bad.group()):04X} at position {bad.start()}"
    return None


def _texts(rec: dict):
    """(field name, text) of every text the model reads; non-strings are left to the type checks."""
    yield "question", rec["question"]
    yield "answer", rec["answer"]
    for i, choice in enumerate(rec["choices"]):
        yield f"choices[{i}]", choice
    for i, step in enumerate(rec["steps"]):
        yield f"steps[{i}].text", step.get("text") if isinstance(step, dict) else None


def _check_texts(rec: dict, max_text_chars: int):
    for name, text in _texts(rec):
        problem = check_text(name, text, max_text_chars) if isinstance(text, str) else None
        if problem:
            return problem
    return None


def _check_choices(rec: dict):
    choices = rec["choices"]
    for i, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice.strip():
            return "empty_field", f"choices[{i}] is empty"
    if len(set(choices)) != len(choices):
        return "bad_field", f"choices contain duplicates: {choices}"
    if choices and rec["answer"] not in choices:
        return "answer_not_in_choices", f"answer {rec['answer']!r} is not among choices {choices}"
    return None


def _check_steps(rec: dict):
    width, height = rec["width"], rec["height"]
    for i, step in enumerate(rec["steps"]):
        text = step.get("text")
        if not isinstance(text, str) or not text.strip():
            return "empty_field", f"steps[{i}].text is empty"
        bbox = step.get("bbox")
        if bbox is None:
            continue
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
            return "bad_field", f"steps[{i}].bbox must be 4 finite numbers, got {bbox}"
        x1, y1, x2, y2 = bbox
        if min(x1, y1, x2, y2) < 0.0 or max(x1, y1, x2, y2) > 1.0:
            return "bbox_out_of_range", f"steps[{i}].bbox {list(bbox)} is outside [0, 1]"
        if x1 >= x2 or y1 >= y2 or (x2 - x1) * width < 1.0 or (y2 - y1) * height < 1.0:
            return "bbox_degenerate", f"steps[{i}].bbox {list(bbox)} is empty or under one pixel on a {width}x{height} image"
    return None


class Reject(Exception):
    """Raised by readers and image handling for one bad record; the pipeline turns it into a reject row."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def require(raw: dict, name: str, kind=str):
    """Fetch a required field from a raw record, raising a Reject that names it when absent or empty."""
    if name not in raw or raw[name] is None:
        raise Reject("missing_field", f"field '{name}' is missing")
    value = raw[name]
    if kind is not None and not isinstance(value, kind):
        raise Reject("bad_field", f"field '{name}' must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    if isinstance(value, (str, list, dict)) and len(value.strip() if isinstance(value, str) else value) == 0:
        raise Reject("empty_field", f"field '{name}' is empty")
    return value
