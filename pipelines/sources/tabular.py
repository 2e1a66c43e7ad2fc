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
                Unmapped fields use the same name, unless a mapping already claims that name for another
                field: {"image_path": "image"} reads paths from your column "image", and bytes from nowhere.
                `steps` is a list of {text, bbox}; a table with a single `bbox` column instead gets one step
                with `step_text`; without either a record has no steps (kept: a plain VQA record).
  split         split for every row when there is no split column
  image_root    folder (or URI) relative image paths are under; paths leaving it are rejected
                (image_outside_root). Empty: paths are used as given, relative to the working directory.
  bbox_format   xyxy_norm (default), xyxy_px or xywh_px
  answer_format text (default), letter (A, B, ...) or index (0-based) into choices. With text, an answer
                that is not itself a choice but a single capital letter (B, (B), B., B)) naming one is
                read as that choice.
  step_text     text of the single step made from a bbox column
  max_text_chars  longest question, answer, choice or step text kept (longer: text_too_long)

Text in the image (bytes) field: base64, with or without a data:image/...;base64, prefix. Text that
cannot be base64 and names an image file (an image extension, a URI, ./ or ../) is read as a path.
"""

import base64
import binascii
import glob
import json
import os
import re

import pyarrow.parquet as pq

from pipelines.validate import MAX_TEXT_CHARS, Reject

NOTE = "Your own JSON Lines or Parquet files, mapped to trace fields by the `columns` option."

DEFAULTS = {
    "path": None,
    "columns": {},
    "split": "train",
    "image_root": "",
    "bbox_format": "xyxy_norm",
    "answer_format": "text",
    "step_text": "Find the region that answers the question.",
    "max_text_chars": MAX_TEXT_CHARS,
}

FIELDS = ("id", "split", "question", "answer", "choices", "steps", "bbox", "image", "image_path", "meta")
BBOX_FORMATS = ("xyxy_norm", "xyxy_px", "xywh_px")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# "B", "(B)", "B." or "B)": how exports write an option letter. Capitals only: "a" is also an English answer.
LETTER_ANSWER = re.compile(r"^\(?([A-Z])[.)]?$")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,", re.I)
# Surrogate escapes in JSON text: a pair decodes to one character, a lone one cannot be stored as UTF-8.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _col(opts, field):
    """Your column for a trace field: the mapped one; else the field's own name, unless a mapping gave that
    name to another field (then the field has no column: None)."""
    mapping = opts["columns"] or {}
    if field in mapping:
        return mapping[field]
    return None if field in mapping.values() else field


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


def _jsonl_records(path: str) -> list[tuple[int, dict]]:
    """(line number, record) per non-blank line; a line that is not a JSON object, or whose text cannot be
    stored as UTF-8, becomes {"_error": ...} (a reject), never a failed file."""
    records = []
    # surrogateescape: a byte that is not UTF-8 fails its own line (below), not the whole file
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
                _check_unicode(line, rec)
            except UnicodeError as e:  # before ValueError, its base class
                rec = {"_error": f"line {n} of {path} holds text that is not valid Unicode: {e}"}
            except ValueError as e:
                rec = {"_error": f"line {n} of {path} is not a JSON object: {e}"}
            records.append((n, rec))
    return records


def _check_unicode(line: str, rec: dict):
    """Raise UnicodeError for bytes that are not UTF-8 or a lone surrogate escape (\\ud800 without its pair):
    neither can be written to Parquet. Cheap for the common line: the full check runs only after a hint."""
    if any("\udc80" <= c <= "\udcff" for c in line) or SURROGATE_ESCAPE.search(line):
        json.dumps(rec, ensure_ascii=False).encode("utf-8")


def read_unit(unit: dict, opts: dict, ids_only: bool = False) -> list[dict]:
    """Rows of one unit as raw rows; with ids_only, just enough to find duplicate ids cheaply."""
    id_col, split_col = _col(opts, "id"), _col(opts, "split")
    if opts["source_type"] == "jsonl":
        records = _jsonl_records(unit["file"])
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
            blob = _take_image(rec, opts)
            rec["_where"] = f"{unit['file']}:{'line ' if opts['source_type'] == 'jsonl' else 'row '}{n}"
            row.update(raw=_jsonable(rec), blob=blob)
        rows.append(row)
    return rows


def _take_image(rec: dict, opts: dict):
    """Remove the image (bytes) field from the record (bytes never travel in the raw JSON) and return its bytes.

    A Hugging Face Image struct gives its bytes, and its path when there are none; text is base64, or a
    path when it clearly is one (kept in the record as `_image_path_from_bytes`)."""
    image_col = _col(opts, "image")
    blob = rec.pop(image_col, None) if image_col is not None else None
    if isinstance(blob, dict):  # Hugging Face Image feature: {"bytes": ..., "path": ...}
        if blob.get("path") and not blob.get("bytes"):
            rec["_image_path_from_bytes"] = blob["path"]
        blob = blob.get("bytes")
    if isinstance(blob, str):
        try:
            blob, path = _image_text(blob, image_col)
        except ValueError as e:
            rec["_error"], blob, path = str(e), None, None
        if path is not None:
            rec["_image_path_from_bytes"] = path
    return blob


def _image_text(text: str, column: str) -> tuple[bytes | None, str | None]:
    """Text from the image (bytes) field -> (bytes, None) for base64, (None, path) for an evident path.

    A path is evident when it holds characters base64 never has: an image extension ('.'), a URI
    ('://'), or a leading ./ ../ ~. Anything else must be base64 (line breaks allowed)."""
    stripped = text.strip()
    if DATA_URI.match(stripped):
        stripped = DATA_URI.sub("", stripped)
    elif stripped.lower().endswith(IMAGE_EXTENSIONS) or "://" in stripped or stripped.startswith(("./", "../", "~")):
        return None, stripped
    try:
        return base64.b64decode("".join(stripped.split()), validate=True), None
    except (binascii.Error, ValueError):
        shown = stripped if len(stripped) <= 80 else stripped[:80] + "..."
        raise ValueError(f"field '{column}' is not valid base64 image bytes ({shown!r}); if that column holds file "
                         f"names, the column mapping reads paths as bytes: map your column to image_path "
                         f"(columns={{\"image_path\": \"{column}\"}})") from None


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


def _json_list(value, opts, field):
    """A list field may arrive as JSON text (CSV-born tables); anything unparsable names the column."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise Reject("bad_field", f"field '{_col(opts, field)}' is not a JSON list") from None


def _answer(answer, choices: list[str], opts: dict):
    """The answer as the option text. answer_format letter/index picks a choice by position; with text, a
    number becomes its text, and a capital letter that is not itself a choice picks one (see LETTER_ANSWER)."""
    fmt = opts["answer_format"]
    if isinstance(answer, (int, float)) and not isinstance(answer, bool) and fmt == "text":
        answer = str(answer)  # numeric answers ("how many") are common in real tables
    if not choices or answer is None or (fmt == "text" and answer in choices):
        return answer
    if fmt == "index":
        try:
            return choices[int(answer)]
        except (ValueError, TypeError, IndexError):
            raise Reject("answer_not_in_choices", f"answer {answer!r} is not a valid index for {len(choices)} choices") from None
    letter = LETTER_ANSWER.match(str(answer).strip())
    if letter is None:
        if fmt == "letter":
            raise Reject("answer_not_in_choices", f"answer {answer!r} is not a letter A-Z (answer_format letter)")
        return answer  # text that is no choice: validate_trace names it (answer_not_in_choices)
    k = LETTERS.index(letter.group(1))
    if k >= len(choices):
        raise Reject("answer_not_in_choices", f"answer {answer!r} is letter {k + 1} but there are {len(choices)} choices {choices}")
    return choices[k]


def _steps(get, opts) -> list[dict]:
    """Draft steps: the steps column, else one step from a bbox column, else none (a plain VQA record)."""
    steps = _json_list(get("steps"), opts, "steps")
    if steps is None and get("bbox") is not None:
        steps = [{"text": opts["step_text"], "bbox": get("bbox")}]
    if steps is None:
        return []
    if not isinstance(steps, list):
        raise Reject("bad_field", f"field '{_col(opts, 'steps')}' must be a list of {{text, bbox}}, got {type(steps).__name__}")
    return [dict(text=s.get("text"), **_box(s.get("bbox"), opts["bbox_format"])) if isinstance(s, dict)
            else {"text": None} for s in steps]


def convert(raw: dict, blob, opts: dict, seed: int) -> dict:
    if "_error" in raw:
        raise Reject("bad_field", raw["_error"])
    get = lambda field: raw.get(_col(opts, field))  # noqa: E731  (an unmapped field's column None is never a key)
    choices = _json_list(get("choices"), opts, "choices") or []
    if not isinstance(choices, list):
        raise Reject("bad_field", f"field '{_col(opts, 'choices')}' must be a list, got {type(choices).__name__}")
    answer = _answer(get("answer"), [str(c) for c in choices], opts)
    image_path = get("image_path") or raw.get("_image_path_from_bytes")
    if image_path is not None and not isinstance(image_path, str):
        raise Reject("bad_field", f"field '{_col(opts, 'image_path')}' must be a path (text), got {type(image_path).__name__}")
    if blob is None and not image_path:
        image_col, path_col = _col(opts, "image"), _col(opts, "image_path")
        raise Reject("missing_field", f"neither image bytes ({f'column {image_col!r}' if image_col else 'no column'}) "
                                      f"nor an image path (column {path_col!r}) is set")
    meta = get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            meta = {"meta": meta}
    meta = dict(meta or {}, where=raw.get("_where"))
    return {"question": get("question"), "answer": answer, "choices": [str(c) for c in choices], "steps": _steps(get, opts),
            "image_bytes": blob, "image_path": image_path if blob is None else None, "image_root": opts["image_root"],
            "meta": meta}
