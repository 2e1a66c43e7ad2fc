"""GQA: compositional questions over Visual Genome scene graphs; the program names the objects it uses.

Real data: GQA from Stanford NLP (cs.stanford.edu/people/dorarad/gqa): `questions1.2/<split>_balanced_questions.json`,
`sceneGraphs/<split>_sceneGraphs.json` and `images/<imageId>.jpg`, downloaded by you.

Fields read:
  questions JSON   {qid: {imageId, question, answer, semantic: [{operation, argument, dependencies}], ...}}
                   object ids sit in the argument's parentheses, e.g. "table (2356)" or "_,on,s (1234)"
  scene graphs     {imageId: {width, height, objects: {objId: {name, x, y, w, h}}}}
Each program operation that refers to objects becomes a step whose box is the union of those objects;
a `select` whose object is absent from the image ("(-)") becomes a step with no box.
"""

import json
import re

from pipelines.validate import MAX_TEXT_CHARS, Reject

NOTE = "GQA (Stanford NLP): balanced questions JSON, scene graphs JSON and images, downloaded by you."

DEFAULTS = {
    "questions": None,  # <split>_balanced_questions.json (required)
    "scene_graphs": None,  # <split>_sceneGraphs.json (required)
    "image_root": None,  # folder with <imageId>.jpg (required)
    "split": "train",
    "max_text_chars": MAX_TEXT_CHARS,  # longer question or answer texts are rejected (text_too_long)
}

OBJECT_IDS = re.compile(r"\(([^()]*)\)\s*$")


def _load(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"gqa: cannot read {what} {path}: {e}") from None


def plan(opts: dict, seed: int) -> list[dict]:
    for key in ("questions", "scene_graphs", "image_root"):
        if not opts[key]:
            raise ValueError(f"gqa needs option '{key}'")
    questions, graphs = _load(opts["questions"], "questions"), _load(opts["scene_graphs"], "scene graphs")
    rows = []
    for qid, q in questions.items():
        graph = graphs.get(str(q.get("imageId"))) if isinstance(q, dict) else None
        raw = {"qid": qid, "question": q} if isinstance(q, dict) else {"qid": qid, "value": q}
        if graph is not None:  # carry only what the program refers to: keeps the raw rows small
            ids = {i for op in q.get("semantic") or [] for i in _ids(op.get("argument", ""))}
            raw["graph"] = {"width": graph.get("width"), "height": graph.get("height"),
                            "objects": {i: graph.get("objects", {})[i] for i in sorted(ids) if i in graph.get("objects", {})}}
        rows.append({"source_id": str(qid), "split": opts["split"], "raw": raw})
    return rows


def _ids(argument: str) -> list[str]:
    m = OBJECT_IDS.search(argument or "")
    return [i.strip() for i in m.group(1).split(",") if i.strip().isdigit()] if m else []


def _name(argument: str) -> str:
    return OBJECT_IDS.sub("", argument or "").strip()


def convert(raw: dict, blob, opts: dict, seed: int) -> dict:
    q = raw.get("question")
    if not isinstance(q, dict):
        raise Reject("bad_field", f"question {raw.get('qid')} is not an object")
    graph = raw.get("graph")
    if graph is None:
        raise Reject("missing_field", f"no scene graph for imageId {q.get('imageId')!r}")
    program = q.get("semantic")
    if not program:
        raise Reject("missing_field" if program is None else "empty_field", "field 'semantic' (the program) is missing or empty")
    objects = graph.get("objects") or {}
    steps = []
    for op in program:
        operation, argument = op.get("operation", ""), op.get("argument", "")
        ids = [i for i in _ids(argument) if i in objects]
        names = sorted({objects[i]["name"] for i in ids})
        label = " and ".join(names) if names else _name(argument).split(",")[0]
        if ids:
            boxes = [[objects[i]["x"], objects[i]["y"], objects[i]["x"] + objects[i]["w"], objects[i]["y"] + objects[i]["h"]] for i in ids]
            box = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
            if operation == "select":
                text = f"Find the {label}."
            elif operation == "relate":
                rel = argument.split(",")[1].strip() if argument.count(",") >= 2 else "related to"
                text = f"Follow '{rel}' to the {label}."
            else:
                text = f"{operation.split(' ')[0].capitalize()} the {label}."
            steps.append({"text": text, "bbox_px": box})
        elif operation == "select" and label and label != "_":
            steps.append({"text": f"Look for the {label}: it is not in the image.", "bbox_px": None})
    if not steps:
        raise Reject("empty_field", "the program refers to no objects")
    width, height = graph.get("width"), graph.get("height")
    return {"question": q.get("question"), "answer": q.get("answer"), "choices": [], "steps": steps,
            "image_path": f"{q.get('imageId')}.jpg", "image_root": opts["image_root"],
            "box_frame": (float(width), float(height)) if width and height else None,
            "meta": {"image_id": str(q.get("imageId")), "full_answer": q.get("fullAnswer"),
                     "types": q.get("types"), "program": [op.get("operation") for op in program]}}
