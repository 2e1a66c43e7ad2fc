"""Visual-CoT: VQA over 12 datasets, each question with the box of the region that answers it.

Real data: the Visual-CoT dataset on the Hugging Face hub (deepcs233/Visual-CoT): `viscot_363k.json`
and the images of its source datasets (`cot/<dataset>/...`, see the Visual-CoT README), downloaded by
you; `image_root` is the folder the records' image paths are relative to.

Two record layouts are read, record by record:

viscot_363k.json (a JSON list; the training file):
  question_id, dataset, split
  image          [path, "path###[x1, y1, x2, y2]"]: the region to look at, in pixels of the original image
                 (Visual-CoT's own loader crops it from there)
  conversations  [{from: human, value: "<image>\\n<question> Please provide the bounding box coordinate ..."},
                  {from: gpt, value: "[...]"}, {from: human, value: "<image>"}, {from: gpt, value: <answer>}]
                 question = first human turn without the image tag and the box request; answer = last gpt turn

per-dataset metadata (JSON Lines, from the `viscot_dataset/` folder):
  question, answer, image (path), width, height (the frame of the boxes), bboxs ([[x1, y1, x2, y2], ...] pixels),
  dataset, split, and question_id when present

One step per box. Source id: `dataset/question_id`, or `dataset/<line number>` without a question_id.
Visual-CoT's own `split` is kept in meta; the trace split is the `split` option.
"""

import json
import re

from pipelines.validate import MAX_TEXT_CHARS, Reject

NOTE = "Hugging Face dataset deepcs233/Visual-CoT: viscot_363k.json (or its per-dataset JSONL) + source images, downloaded by you."

DEFAULTS = {
    "path": None,  # viscot_363k.json (JSON list) or a per-dataset .jsonl (required)
    "image_root": None,  # folder the records' image paths are relative to (required)
    "split": "train",  # trace split for every record
    "max_text_chars": MAX_TEXT_CHARS,  # longer question, answer or step texts are rejected (text_too_long)
}

BOX_REQUEST = re.compile(r"\s*Please provide the bounding box coordinate of the region.*$", re.S)


def _records(path):
    try:
        with open(path) as f:
            if path.endswith(".jsonl"):
                return [json.loads(line) if line.strip().startswith("{") else {"_error": f"line {n} is not a JSON object"}
                        for n, line in enumerate(f, start=1) if line.strip()]
            records = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"visual_cot: cannot read {path}: {e}") from None
    if not isinstance(records, list):
        raise ValueError(f"visual_cot: {path} must hold a JSON list of records")
    return records


def plan(opts: dict, seed: int) -> list[dict]:
    if not opts["path"] or not opts["image_root"]:
        raise ValueError("visual_cot needs options 'path' (viscot_363k.json or a .jsonl) and 'image_root'")
    rows = []
    for i, rec in enumerate(_records(opts["path"])):
        if not isinstance(rec, dict):
            rec = {"_error": f"record {i} is not an object"}
        qid = rec.get("question_id")
        sid = f"{rec.get('dataset', '')}/{qid if qid is not None else i}" if "_error" not in rec else f"#{i}"
        rows.append({"source_id": sid, "split": opts["split"], "raw": rec})
    return rows


def _question_answer(raw: dict):
    if "conversations" not in raw:
        return raw.get("question"), raw.get("answer")
    conv = raw["conversations"]
    if not conv:
        raise Reject("empty_field", "field 'conversations' is empty")
    human = [t.get("value", "") for t in conv if isinstance(t, dict) and t.get("from") == "human"]
    gpt = [t.get("value", "") for t in conv if isinstance(t, dict) and t.get("from") == "gpt"]
    if not human or not gpt:
        raise Reject("bad_field", "field 'conversations' needs a human question and a gpt answer")
    return BOX_REQUEST.sub("", human[0].replace("<image>", "")).strip(), (gpt[-1] or "").strip()


def _image_and_boxes(raw: dict):
    image = raw.get("image")
    entries = image if isinstance(image, list) else [image] if image else []
    if not entries or not entries[0]:
        raise Reject("missing_field", "field 'image' is missing")
    path = str(entries[0]).split("###")[0]
    if raw.get("bboxs") is not None:
        return path, raw["bboxs"]
    boxes = []
    for entry in entries[1:]:
        if "###" in str(entry):
            try:
                boxes.append(json.loads(str(entry).split("###", 1)[1]))
            except ValueError:
                raise Reject("bad_field", f"image entry {entry!r} has an unparsable box") from None
    if not boxes:
        raise Reject("missing_field", "no box: neither 'bboxs' nor an 'image' entry 'path###[x1, y1, x2, y2]'")
    return path, boxes


def convert(raw: dict, blob, opts: dict, seed: int) -> dict:
    if "_error" in raw:
        raise Reject("bad_field", raw["_error"])
    question, answer = _question_answer(raw)
    path, boxes = _image_and_boxes(raw)
    if not boxes:
        raise Reject("empty_field", "field 'bboxs' is empty")
    steps = [{"text": "Find the region that answers the question." if k == 0 else "Look also at this region.", "bbox_px": box}
             for k, box in enumerate(boxes)]
    frame = (float(raw["width"]), float(raw["height"])) if raw.get("width") and raw.get("height") else None
    return {"question": question, "answer": answer, "choices": [], "steps": steps,
            "image_path": path, "image_root": opts["image_root"], "box_frame": frame,
            "meta": {"question_id": raw.get("question_id"), "dataset": raw.get("dataset"), "source_split": raw.get("split")}}
