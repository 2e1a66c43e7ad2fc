"""easy-VQA: 64x64 images with one coloured shape, about 48k templated questions (the `easy-vqa` PyPI package).

Files read (the package's own layout, `<root>/<split>/questions.json` and `<root>/<split>/images/<id>.png`):
questions.json is a JSON list of [question, answer, image_id]. The dataset has no boxes, so the region
is derived from the image itself: the background is flat (the corner colour), the shape is every
pixel far from it; its bounding box is the step's box, its median colour names the colour and its
fill ratio (area / box area) names the shape. A test checks that the derived colour and shape agree
with the dataset's own answers.
"""

import functools
import json
import os

import numpy as np

from pipelines import images
from pipelines.validate import MAX_TEXT_CHARS, Reject

NOTE = "PyPI package `easy-vqa` (MIT): installed with the project, read from its data/ folder; no download."

DEFAULTS = {
    "root": None,  # folder holding <split>/questions.json and <split>/images/; default: the installed easy_vqa package's data
    "splits": "train,test",
    "max_text_chars": MAX_TEXT_CHARS,  # longer question or answer texts are rejected (text_too_long)
}

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
           "black": (0, 0, 0), "gray": (128, 128, 128), "teal": (0, 128, 128), "brown": (165, 42, 42)}
BACKGROUND_DIFF = 40  # per-channel difference from the corner colour that counts as "shape"


def default_root() -> str:
    import easy_vqa

    return os.path.join(os.path.dirname(easy_vqa.__file__), "data")


def plan(opts: dict, seed: int) -> list[dict]:
    root = opts["root"] or default_root()
    rows = []
    for split in [s.strip() for s in opts["splits"].split(",") if s.strip()]:
        path = os.path.join(root, split, "questions.json")
        try:
            with open(path) as f:
                entries = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"easy_vqa: cannot read {path}: {e}") from None
        if not isinstance(entries, list):
            raise ValueError(f"easy_vqa: {path} must hold a JSON list of [question, answer, image_id]")
        for i, entry in enumerate(entries):
            rows.append({"source_id": f"{split}-{i}", "split": split, "raw": {"entry": entry, "split": split}})
    return rows


def find_shape(rgb: np.ndarray):
    """(x1, y1, x2, y2) pixel box, colour name, shape name of the single shape on a flat background, or None."""
    a = rgb.astype(np.int16)
    mask = np.abs(a - a[0, 0]).max(axis=-1) > BACKGROUND_DIFF
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    x1, x2, y1, y2 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    fill = mask[y1:y2, x1:x2].mean()
    shape = "rectangle" if fill > 0.95 else "circle" if fill > 0.72 else "triangle"
    median = np.median(a[mask], axis=0)
    colour = min(COLOURS, key=lambda c: float(((median - COLOURS[c]) ** 2).sum()))
    return (x1, y1, x2, y2), colour, shape


@functools.lru_cache(maxsize=256)
def _image_and_shape(path: str, max_pixels: int, min_side: int):
    """About ten questions share each image and arrive together: decode and analyse it once per worker.
    (A Reject is raised again for every question of a bad image: exceptions are not cached.)"""
    im = images.decode(images.read_bytes(path), max_pixels=max_pixels, min_side=min_side, what=f"image {path}")
    return im, find_shape(np.asarray(im))


def convert(raw: dict, blob, opts: dict, seed: int) -> dict:
    entry = raw.get("entry")
    if not isinstance(entry, list) or len(entry) != 3:
        raise Reject("bad_field", f"entry must be [question, answer, image_id], got {entry!r}")
    question, answer, image_id = entry
    for name, value in (("question", question), ("answer", answer)):
        if value is None:
            raise Reject("missing_field", f"field '{name}' is missing")
        if not isinstance(value, str) or not value.strip():
            raise Reject("empty_field", f"field '{name}' is empty")
    if not isinstance(image_id, int):
        raise Reject("bad_field", f"field 'image_id' must be an integer, got {image_id!r}")
    root = opts["root"] or default_root()
    path = images.path_in_root(root, os.path.join(raw["split"], "images", f"{image_id}.png"))  # decoded here, not in finish
    im, found = _image_and_shape(path, opts["max_pixels"], opts["min_side"])
    if found is None:
        raise Reject("region_not_found", f"no shape found on the flat background of {path}")
    box, colour, shape = found
    steps = [{"text": "Find the shape.", "bbox_px": box},
             {"text": f"It is a {colour} {shape}.", "bbox_px": box}]
    return {"question": question, "answer": answer, "choices": [], "steps": steps, "image_pil": im,
            "meta": {"image_id": image_id, "derived": {"colour": colour, "shape": shape}}}


def clear_caches():
    """Forget decoded images (the bench calls it so every timed run starts cold, like a fresh worker)."""
    _image_and_shape.cache_clear()
