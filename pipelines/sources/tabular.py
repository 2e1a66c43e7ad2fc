"""Generic JSON Lines and Parquet readers: any VQA-with-boxes table, mapped by a column mapping in the config.

Real data: whatever you have, e.g. an export of a Hugging Face dataset (`ds.to_parquet(...)`/`to_json(lines=True)`),
LLaVA-style JSONL, or the output of another pipeline.

Work is split into units, one per JSONL file or per Parquet row group, each read by a Ray task with
the Python json module (a broken line becomes a reject, not a failed file) or pyarrow.parquet.

Options:
  path          a file, a folder (all *.jsonl / *.parquet below it, sorted) or a glob (required)
  name          the source name written into rows and ids (default: jsonl / parquet)
  columns       mapping from trace fields to your column names; fields: id, split, question, answer,
                choices, steps, bbox, image (bytes, or base64 text in JSONL), image_path, meta.
                Unmapped fields use the same name. `steps` is a list of {text, bbox}; a table with a
                single `bbox` column instead gets one step with `step_text`.
  split         split for every row when there is no split column
  image_root    prefix for relative image paths
  bbox_format   xyxy_norm (default), xyxy_px or xywh_px
  answer_format text (default), letter (A, B, ...) or index (0-based) into choices
  step_text     text of the single step made from a bbox column
"""

import base64
import glob
import json
import os

import pyarrow.parquet as pq

from pipelines.validate import Reject

NOTE = "Your own JSON Lines or Parquet files, mapped to trace fields by the `columns` option."

DEFAULTS = {
    "path": None,
    "columns": {},
    "split": "train",
    "image_root": "",
    "bbox_format": "xyxy_norm",
    "answer_format": "text",
    "step_text": "Find the region that answers the question.",
}

FIELDS = ("id", "split", "question", "answer", "choices", "steps", "bbox", "image", "image_path", "meta")
BBOX_FORMATS = ("xyxy_norm", "xyxy_px", "xywh_px")


def _col(opts, field):
    return (opts["columns"] or {}).get(field, field)


def _files(opts) -> list[str]:
    path, ext = opts["path"], ".jsonl" if opts["source_type"] == "jsonl" else ".parquet"
    if not path:
        raise ValueError(f"{opts['source_type']} needs option 'path'")
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(ext) or (ext == ".jsonl" and f.endswith(".json")))
    else:
        files = sorted(glob.glob(path))
    if not files:
        raise ValueError(f"{opts['source_type']}: no {ext} files at {path}")
    return files


def units(opts: dict) -> list[dict]:
    unknown = set(opts["columns"] or {}) - set(FIELDS)
    if unknown:
        raise ValueError(f"{opts['source_type']} option 'columns' has unknown fields {sorted(unknown)}; known: {FIELDS}")
    if opts["bbox_format"] not in BBOX_FORMATS:
        raise ValueError(f"bbox_format must be one of {BBOX_FORMATS}, got {opts['bbox_format']!r}")
    out = []
    for f in _files(opts):
        if opts["source_type"] == "jsonl":
            out.append({"file": f, "row_group": -1})
        else:
            out += [{"file": f, "row_group": g} for g in range(pq.ParquetFile(f).num_row_groups)]
    return [dict(u, unit=i) for i, u in enumerate(out)]


def read_unit(unit: dict, opts: dict, ids_only: bool = False) -> list[dict]:
    """Rows of one unit as raw rows; with ids_only, just enough to find duplicate ids cheaply."""
    id_col, split_col, image_col = _col(opts, "id"), _col(opts, "split"), _col(opts, "image")
    if opts["source_type"] == "jsonl":
        records = []
        with open(unit["file"], encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise ValueError("not a JSON object")
                except ValueError as e:
                    rec = {"_error": f"line {n} of {unit['file']} is not a JSON object: {e}"}
                records.append((n, rec))
    else:
        pf = pq.ParquetFile(unit["file"])
        names = pf.schema_arrow.names
        columns = [c for c in (id_col, split_col) if c in names] if ids_only else None
        table = pf.read_row_group(unit["row_group"], columns=columns)
        records = list(enumerate(table.to_pylist()))
    rows = []
    for k, (n, rec) in enumerate(records):
        sid = rec.get(id_col)
        split = rec.get(split_col) or opts["split"]
        if sid is None and "_error" in rec:  # a broken line has no id: name it by its place so the reject is findable
            sid = f"{os.path.basename(unit['file'])}:{n}"
        row = {"source_id": "" if sid is None else str(sid), "split": str(split),
               "pos": (unit["unit"] << 32) | k}
        if not ids_only:
            blob = rec.pop(image_col, None)
            if isinstance(blob, dict):  # Hugging Face Image feature: {"bytes": ..., "path": ...}
                rec.setdefault(_col(opts, "image_path"), blob.get("path"))
                blob = blob.get("bytes")
            if isinstance(blob, str):  # JSONL carries bytes as base64 text
                try:
                    blob = base64.b64decode(blob, validate=True)
                except ValueError:
                    rec["_error"] = f"field '{image_col}' is not valid base64"
                    blob = None
            rec["_where"] = f"{unit['file']}:{'line ' if opts['source_type'] == 'jsonl' else 'row '}{n}"
            row.update(raw=_jsonable(rec), blob=blob)
        rows.append(row)
    return rows


def _jsonable(rec: dict) -> dict:
    return {k: (f"<{len(v)} bytes>" if isinstance(v, (bytes, bytearray)) else v) for k, v in rec.items()}


def _box(box, fmt):
    if box is None or fmt == "xyxy_norm":
        return {"bbox": box}
    if fmt == "xywh_px":
        try:
            x, y, w, h = box
            return {"bbox_px": [x, y, x + w, y + h]}
        except (TypeError, ValueError):
            return {"bbox_px": box}  # let the common check name the bad value
    return {"bbox_px": box}


def convert(raw: dict, blob, opts: dict, seed: int) -> dict:
    if "_error" in raw:
        raise Reject("bad_field", raw["_error"])
    get = lambda field: raw.get(_col(opts, field))  # noqa: E731
    choices = get("choices") or []
    if isinstance(choices, str):
        try:
            choices = json.loads(choices)
        except ValueError:
            raise Reject("bad_field", f"field '{_col(opts, 'choices')}' is not a JSON list") from None
    answer = get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool) and opts["answer_format"] == "text":
        answer = str(answer)  # numeric answers ("how many") are common in real tables
    if choices and answer is not None and opts["answer_format"] != "text":
        try:
            k = "ABCDEFGHIJKLMNOPQRSTUVWXYZ".index(str(answer).strip()) if opts["answer_format"] == "letter" else int(answer)
            answer = choices[k]
        except (ValueError, IndexError):
            raise Reject("answer_not_in_choices", f"answer {answer!r} is not a valid {opts['answer_format']} for {len(choices)} choices") from None
    steps = get("steps")
    if isinstance(steps, str):
        try:
            steps = json.loads(steps)
        except ValueError:
            raise Reject("bad_field", f"field '{_col(opts, 'steps')}' is not a JSON list") from None
    if steps is None and get("bbox") is not None:
        steps = [{"text": opts["step_text"], "bbox": get("bbox")}]
    if steps is None:
        raise Reject("missing_field", f"field '{_col(opts, 'steps')}' is missing (and no '{_col(opts, 'bbox')}' column)")
    draft_steps = [dict(text=s.get("text"), **_box(s.get("bbox"), opts["bbox_format"])) if isinstance(s, dict)
                   else {"text": None} for s in steps]
    image_path = get("image_path")
    if blob is None and not image_path:
        raise Reject("missing_field", f"neither '{_col(opts, 'image')}' bytes nor '{_col(opts, 'image_path')}' is set")
    meta = get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            meta = {"meta": meta}
    meta = dict(meta or {}, where=raw.get("_where"))
    return {"question": get("question"), "answer": answer, "choices": [str(c) for c in choices], "steps": draft_steps,
            "image_bytes": blob, "image_path": os.path.join(opts["image_root"], image_path) if image_path and blob is None else None,
            "meta": meta}
