"""VQAv2 on COCO: open questions; regions from the annotated COCO objects whose category the question names.

Real data: visualqa.org (VQAv2 questions and annotations, e.g. v2_OpenEnded_mscoco_train2014_questions.json,
v2_mscoco_train2014_annotations.json) and cocodataset.org (instances_train2014.json, train2014/ images),
downloaded by you.

Fields read:
  questions     {"questions": [{question_id, image_id, question}]}
  annotations   {"annotations": [{question_id, multiple_choice_answer, answer_type, question_type}]}
  instances     {"images": [{id, file_name, width, height}], "annotations": [{image_id, category_id, bbox: [x, y, w, h], iscrowd}],
                 "categories": [{id, name}]}
One step per category named in the question (word match, simple plurals and person words), its box the
union of that category's instances in the image. When no category matches, the record keeps one step
with bbox = null: it is not rejected.
"""

import json
import re
from collections import defaultdict

from pipelines.validate import MAX_TEXT_CHARS, Reject

NOTE = "VQAv2 (visualqa.org) questions + annotations and COCO 2014 instances + images, downloaded by you."

DEFAULTS = {
    "questions": None,  # v2_OpenEnded_mscoco_<split>_questions.json (required)
    "annotations": None,  # v2_mscoco_<split>_annotations.json (required)
    "instances": None,  # COCO instances_<split>.json (required)
    "image_root": None,  # folder with the COCO images named by file_name (required)
    "split": "train",
    "max_steps": 3,
    "max_text_chars": MAX_TEXT_CHARS,  # longer question or answer texts are rejected (text_too_long)
}

# Words a question uses for a COCO category besides the name and its plural.
SYNONYMS = {"person": ["people", "man", "men", "woman", "women", "boy", "boys", "girl", "girls", "child",
                       "children", "kid", "kids", "player", "players", "persons"]}


def _load(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"vqav2: cannot read {what} {path}: {e}") from None


def plan(opts: dict, seed: int) -> list[dict]:
    for key in ("questions", "annotations", "instances", "image_root"):
        if not opts[key]:
            raise ValueError(f"vqav2 needs option '{key}'")
    questions = _load(opts["questions"], "questions").get("questions", [])
    answers = {a["question_id"]: a for a in _load(opts["annotations"], "annotations").get("annotations", [])}
    inst = _load(opts["instances"], "instances")
    categories = {c["id"]: c["name"] for c in inst.get("categories", [])}
    images = {im["id"]: im for im in inst.get("images", [])}
    objects = defaultdict(list)
    for a in inst.get("annotations", []):
        objects[a["image_id"]].append({"category": categories.get(a["category_id"]), "bbox": a["bbox"]})
    rows = []
    for q in questions:
        qid = q.get("question_id")
        ann = answers.get(qid, {})
        im = images.get(q.get("image_id"))
        raw = {"question": q, "answer": ann.get("multiple_choice_answer"), "answer_type": ann.get("answer_type"),
               "image": im, "objects": objects.get(q.get("image_id"), [])}
        rows.append({"source_id": "" if qid is None else str(qid), "split": opts["split"], "raw": raw})
    return rows


def _mentions(question: str, category: str) -> int:
    """Position of the category's first mention in the question, or -1."""
    words = [category, category + "s", category + "es"] + SYNONYMS.get(category, [])
    if category.endswith("y"):
        words.append(category[:-1] + "ies")
    hits = [m.start() for w in words for m in re.finditer(rf"\b{re.escape(w)}\b", question.lower())]
    return min(hits) if hits else -1


def convert(raw: dict, blob, opts: dict, seed: int) -> dict:
    q, im = raw.get("question") or {}, raw.get("image")
    if im is None:
        raise Reject("missing_field", f"image_id {q.get('image_id')!r} is not in the COCO instances file")
    question = q.get("question")
    if raw.get("answer") is None:
        raise Reject("missing_field", "field 'answer' is missing (no annotation for this question)")
    by_category = defaultdict(list)
    for o in raw.get("objects") or []:
        by_category[o["category"]].append(o["bbox"])
    mentioned = sorted((pos, cat) for cat in by_category if (pos := _mentions(question or "", cat)) >= 0)
    steps = []
    for _, cat in mentioned[: int(opts["max_steps"])]:
        boxes = [[x, y, x + w, y + h] for x, y, w, h in by_category[cat]]
        box = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
        n = len(boxes)
        steps.append({"text": f"Find the {cat}." if n == 1 else f"Find the {n} {cat} instances.", "bbox_px": box})
    if not steps:
        steps = [{"text": "Look at the whole image.", "bbox_px": None}]
    return {"question": question, "answer": raw["answer"], "choices": [], "steps": steps,
            "image_path": im["file_name"], "image_root": opts["image_root"],
            "box_frame": (float(im["width"]), float(im["height"])) if im.get("width") and im.get("height") else None,
            "meta": {"question_id": q.get("question_id"), "image_id": q.get("image_id"), "answer_type": raw.get("answer_type"),
                     "matched_categories": [c for _, c in mentioned]}}
