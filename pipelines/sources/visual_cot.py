"""Visual-CoT (viscot_363k.json): VQA over 12 datasets with the box of the region that answers each question.

Real data: the Visual-CoT dataset on the Hugging Face hub (deepcs233/Visual-CoT): `viscot_363k.json`
plus the images of its source datasets (`cot/<dataset>/...`, see the Visual-CoT README); download them
yourself and point `image_root` at the folder the record paths are relative to.

Fields read per record (a JSON list of objects):
  question_id          source id (with `dataset` when present, as ids repeat across datasets)
  image                path relative to image_root (a string, or a list whose first item is the path)
  conversations        [{from: human, value: "<image>\\n<question> Please provide the bounding box ..."},
                        {from: gpt, value: "[x1, y1, x2, y2]"}, {from: human, value: "<image>"},
                        {from: gpt, value: <answer>}]: question = first human turn without the image
                       tag and the box request, answer = last gpt turn
  bboxs                list of [x1, y1, x2, y2] in pixels of the original image: one step each
  width, height        the annotation frame of bboxs (checked against the image's aspect ratio)
  dataset, split       kept in meta; `split` is not the trace split (Visual-CoT marks everything train)
"""

import json
import os
import re

from pipelines.validate import Reject

NOTE = "Hugging Face dataset deepcs233/Visual-CoT: viscot_363k.json + source-dataset images, downloaded by you."

DEFAULTS = {
    "path": None,  # the viscot_363k.json file (required)
    "image_root": None,  # folder the records' image paths are relative to (required)
    "split": "train",  # trace split for every record
}

BOX_REQUEST = re.compile(r"\s*Please provide the bounding box coordinate of the region.*$", re.S)


def plan(opts: dict, seed: int) -> list[dict]:
    if not opts["path"] or not opts["image_root"]:
        raise ValueError("visual_cot needs options 'path' (viscot_363k.json) and 'image_root'")
    try:
        with open(opts["path"]) as f:
            records = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"visual_cot: cannot read {opts['path']}: {e}") from None
    if not isinstance(records, list):
        raise ValueError(f"visual_cot: {opts['path']} must hold a JSON list of records")
    rows = []
    for i, rec in enumerate(records):
        qid = rec.get("question_id") if isinstance(rec, dict) else None
        sid = f"{rec.get('dataset', '')}/{qid}" if qid is not None else ""
        rows.append({"source_id": sid, "split": opts["split"], "raw": rec if isinstance(rec, dict) else {"value": rec}})
    return rows


def convert(raw: dict, blob, opts: dict, seed: int) -> dict:
    conv = raw.get("conversations")
    if not conv:
        raise Reject("missing_field" if conv is None else "empty_field", "field 'conversations' is missing or empty")
    human = [t.get("value", "") for t in conv if t.get("from") == "human"]
    gpt = [t.get("value", "") for t in conv if t.get("from") == "gpt"]
    if not human or not gpt:
        raise Reject("bad_field", "field 'conversations' needs a human question and a gpt answer")
    question = BOX_REQUEST.sub("", human[0].replace("<image>", "")).strip()
    answer = (gpt[-1] or "").strip()
    image = raw.get("image")
    if isinstance(image, list):
        image = image[0] if image else None
    if not image:
        raise Reject("missing_field", "field 'image' is missing")
    image = image.split("###")[0]  # some records append "###[box]" to a second image entry
    bboxs = raw.get("bboxs")
    if bboxs is None:
        raise Reject("missing_field", "field 'bboxs' is missing")
    if not bboxs:
        raise Reject("empty_field", "field 'bboxs' is empty")
    steps = []
    for k, box in enumerate(bboxs):
        text = "Find the region that answers the question." if k == 0 else "Look also at this region."
        steps.append({"text": text, "bbox_px": box})
    frame = None
    if raw.get("width") and raw.get("height"):
        frame = (float(raw["width"]), float(raw["height"]))
    return {"question": question, "answer": answer, "choices": [], "steps": steps,
            "image_path": os.path.join(opts["image_root"], image), "box_frame": frame,
            "meta": {"question_id": raw.get("question_id"), "dataset": raw.get("dataset"), "source_split": raw.get("split")}}
