"""One validator for a finished trace record, plus the list of reject reasons.

`validate_trace` is the single place that decides whether a trace row is good data; the
pipeline calls it on every row just before writing, whatever the source. It is about data
quality (the model core re-checks shapes and tokens at training time on its own).
Image-level problems (unreadable, corrupt, bomb) are found while decoding, in
pipelines/images.py, and use the same reason codes.
"""

import math

# Stable codes: they are what dashboards and the manifest count, so never rename one.
REASONS = {
    "image_unreadable": "the image file is missing or cannot be opened",
    "corrupt_image": "the image bytes do not decode (corrupt, truncated, unknown format)",
    "decompression_bomb": "the image header declares more pixels than max_pixels",
    "image_too_small": "the image's shorter side is below min_side",
    "image_size_mismatch": "the annotation's width/height disagree with the image's aspect ratio",
    "missing_field": "a required field is absent or null",
    "empty_field": "a required field is present but empty",
    "bad_field": "a field has the wrong type or an unparsable value",
    "bbox_out_of_range": "a box lies outside the image (beyond a 1-pixel tolerance)",
    "bbox_degenerate": "a box has x1 >= x2 or y1 >= y2, or covers less than one stored pixel",
    "duplicate_id": "the id (source + source id) was already seen earlier in the input",
    "answer_not_in_choices": "choices are given and the answer is not one of them",
    "region_not_found": "the reader derives regions from the image and found none",
    "source_error": "the source's converter failed on this record (see detail)",
}

REQUIRED_TEXT = ("id", "source", "split", "question", "answer")


def validate_trace(rec: dict, *, min_side: int = 28) -> tuple[str, str] | None:
    """Return (reason, detail) for the first problem found in a trace record, or None if it is good.

    `rec` has the TRACE_SCHEMA columns. Boxes must already be normalised to the stored image.
    """
    for name in REQUIRED_TEXT:
        value = rec.get(name)
        if value is None:
            return "missing_field", f"field '{name}' is missing"
        if not isinstance(value, str):
            return "bad_field", f"field '{name}' must be a string, got {type(value).__name__}"
        if not value.strip():
            return "empty_field", f"field '{name}' is empty"

    if rec.get("image") is None and not rec.get("image_uri"):
        return "missing_field", "field 'image' is missing (and no 'image_uri')"
    for name in ("width", "height"):
        if not isinstance(rec.get(name), int):
            return "missing_field", f"field '{name}' is missing"
    width, height = rec["width"], rec["height"]
    if min(width, height) < min_side:
        return "image_too_small", f"stored image is {width}x{height}, min_side is {min_side}"

    choices = rec.get("choices")
    if choices is None:
        return "missing_field", "field 'choices' is missing (use [] for open questions)"
    for i, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice.strip():
            return "empty_field", f"choices[{i}] is empty"
    if len(set(choices)) != len(choices):
        return "bad_field", f"choices contain duplicates: {choices}"
    if choices and rec["answer"] not in choices:
        return "answer_not_in_choices", f"answer {rec['answer']!r} is not among choices {choices}"

    steps = rec.get("steps")
    if steps is None:
        return "missing_field", "field 'steps' is missing"
    if len(steps) == 0:
        return "empty_field", "field 'steps' is empty (a trace needs at least one step)"
    for i, step in enumerate(steps):
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
