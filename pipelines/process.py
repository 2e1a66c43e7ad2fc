"""Raw source records -> trace rows or reject rows, one Arrow batch at a time.

This is the stateless function Ray Data maps over the raw records (and the bench's plain loop
calls, so both measure the same work). Every raw row leaves as exactly one output row: a trace
(reason is null) or a reject (reason set, trace columns null). Nothing is dropped silently.

A raw row is (source_id, split, pos, raw JSON, optional blob). `pos` is the row's position in
the input, used to keep the first of duplicated ids and to order output files.
"""

import hashlib
import json

import pyarrow as pa
from PIL import Image

from pipelines import images
from pipelines.schema import SCHEMA_VERSION, TRACE_SCHEMA
from pipelines.sources import get_source
from pipelines.validate import MAX_TEXT_CHARS, Reject, validate_trace

RAW_SCHEMA = pa.schema(
    [
        pa.field("source_id", pa.string()),
        pa.field("split", pa.string()),
        pa.field("pos", pa.int64()),
        pa.field("raw", pa.string()),  # the source's record as JSON text (small: no image bytes)
        pa.field("blob", pa.binary()),  # image bytes when the source embeds them (parquet), else null
    ]
)

REJECT_COLUMNS = [pa.field("source_id", pa.string()), pa.field("pos", pa.int64()), pa.field("reason", pa.string()),
                  pa.field("detail", pa.string()), pa.field("record", pa.string())]
# Trace columns made nullable (a reject row has none of them) plus what a reject needs.
OUT_SCHEMA = pa.schema([f.with_nullable(True) for f in TRACE_SCHEMA] + REJECT_COLUMNS)

RECORD_SNIPPET_CHARS = 2000


def stable_id(source: str, source_id: str) -> str:
    return hashlib.sha1(f"{source}\x1f{source_id}".encode()).hexdigest()[:16]


def raw_table(rows: list[dict]) -> pa.Table:
    """rows of {source_id, split, pos, raw (dict), blob?} -> a RAW_SCHEMA table."""
    return pa.Table.from_pylist(
        [{"source_id": r["source_id"], "split": r["split"], "pos": r["pos"],
          "raw": json.dumps(r["raw"], sort_keys=True, ensure_ascii=False), "blob": r.get("blob")} for r in rows],
        schema=RAW_SCHEMA,
    )


def normalise_box(step: dict, frame_w: float, frame_h: float, idx: int) -> list[float] | None:
    """A draft step's box -> [x1, y1, x2, y2] in [0, 1]. Coordinates within one pixel outside the frame
    are clipped (annotation rounding); further out is bbox_out_of_range, raised by validate_trace."""
    if step.get("bbox_px") is not None:
        box = step["bbox_px"]
        scale = (frame_w, frame_h, frame_w, frame_h)
        tol = (1.0 / frame_w, 1.0 / frame_h) * 2
    elif step.get("bbox") is not None:
        box, scale, tol = step["bbox"], (1, 1, 1, 1), (1e-3,) * 4
    else:
        return None
    try:
        if len(box) != 4:
            raise ValueError
        out = [float(v) / s for v, s in zip(box, scale)]
    except (TypeError, ValueError):
        raise Reject("bad_field", f"steps[{idx}].bbox must be 4 numbers, got {box!r}") from None
    return [min(1.0, max(0.0, v)) if -t <= v <= 1 + t else v for v, t in zip(out, tol)]


def load_image(draft: dict, opts: dict) -> tuple[Image.Image, list[str], str | None]:
    """The draft's image as displayed (RGB), the decoding notes, and the checked path of its file (or None).

    A path is always checked against the draft's image_root before the file is opened; readers that
    take paths set both (image_root "" when their format has none)."""
    min_side, max_pixels = opts["min_side"], opts["max_pixels"]
    if draft.get("image_pil") is not None:  # generated images skip decoding
        im = draft["image_pil"]
        images.check_size(*im.size, min_side=min_side)
        return im, [], None
    path = None
    if draft.get("image_bytes") is not None:
        data, what = draft["image_bytes"], "embedded image"
    elif draft.get("image_path"):
        path = images.path_in_root(draft["image_root"], draft["image_path"])
        data, what = images.read_bytes(path), f"image {path}"
    else:
        raise Reject("missing_field", "field 'image' is missing (no bytes and no path)")
    im, notes = images.decode_displayed(data, max_pixels=max_pixels, min_side=min_side, what=what)
    return im, notes, path


def finish(draft: dict, *, source: str, source_id: str, split: str, opts: dict) -> dict:
    """A source's draft (question, answer, steps with pixel or normalised boxes, an image in some form)
    -> a validated trace row. Raises Reject.

    Pixel boxes are in the displayed frame (EXIF orientation applied), which is also the stored one."""
    im, notes, path = load_image(draft, opts)
    orig_w, orig_h = im.size
    frame_w, frame_h = draft.get("box_frame") or (orig_w, orig_h)
    if draft.get("box_frame") and abs(frame_w / frame_h - orig_w / orig_h) > 0.02 * (orig_w / orig_h):
        raise Reject("image_size_mismatch", f"annotation says {frame_w}x{frame_h} but the image is {orig_w}x{orig_h}")
    steps = [{"text": s.get("text"), "bbox": normalise_box(s, frame_w, frame_h, i)} for i, s in enumerate(draft.get("steps") or [])]

    meta = dict(draft.get("meta") or {})
    # image_uri hands the original file to the consumer, which decodes it plainly: when that would show
    # another image (rotated, clipped to white, black behind transparency), store the pixels instead.
    if opts["embed_images"] or path is None or notes:
        if path is not None and not opts["embed_images"]:
            meta["image_embedded_because"] = notes
        im = images.fit(im, opts["max_side"])
        image, image_uri = images.encode_png(im, opts["png_compress_level"]), None
    else:
        image, image_uri = None, path
    rec = {
        "id": stable_id(source, source_id), "source": source, "split": split,
        "image": image, "image_uri": image_uri, "width": im.size[0], "height": im.size[1],
        "question": draft.get("question"), "choices": draft.get("choices", []), "answer": draft.get("answer"),
        "steps": steps, "meta": json.dumps(meta, sort_keys=True, ensure_ascii=False),
        "schema_version": SCHEMA_VERSION,
    }
    # refocus (generated, short texts) has no max_text_chars option: it gets the default limit.
    problem = validate_trace(rec, min_side=opts["min_side"], max_text_chars=opts.get("max_text_chars", MAX_TEXT_CHARS))
    if problem:
        raise Reject(*problem)
    return rec


def reject_row(source: str, source_id: str, split: str, pos: int, reason: str, detail: str, raw: str) -> dict:
    record = raw if len(raw) <= RECORD_SNIPPET_CHARS else raw[:RECORD_SNIPPET_CHARS] + "...(truncated)"
    return {"source": source, "source_id": source_id, "split": split, "pos": pos,
            "reason": reason, "detail": detail, "record": record}


def process_batch(batch: pa.Table, *, opts: dict, seed: int, duplicates: dict | None = None) -> pa.Table:
    """Map a RAW_SCHEMA batch to an OUT_SCHEMA batch: one output row per input row.

    opts are the resolved build options (pipelines.build.resolve_options): they name the source
    type (the reader) and the source name written into rows and ids."""
    src, source = get_source(opts["source_type"]), opts["name"]
    duplicates = duplicates or {}
    out = []
    for row in batch.to_pylist():
        sid, split, pos, raw_text = row["source_id"], row["split"], row["pos"], row["raw"]
        try:
            if not sid:
                raise Reject("missing_field", "the record has no source id")
            if pos in duplicates:
                raise Reject("duplicate_id", f"source id {sid!r} (id {stable_id(source, sid)}) first seen at input position {duplicates[pos]}")
            draft = src.convert(json.loads(raw_text), row["blob"], opts, seed)
            rec = finish(draft, source=source, source_id=sid, split=split, opts=opts)
            rec.update(source_id=sid, pos=pos)
            out.append(rec)
        except Reject as r:
            out.append(reject_row(source, sid or f"#{pos}", split, pos, r.reason, r.detail, raw_text))
        except Exception as e:  # a converter bug must not kill a million-row job: record it, loudly
            out.append(reject_row(source, sid or f"#{pos}", split, pos, "source_error", f"{type(e).__name__}: {e}", raw_text))
    return pa.Table.from_pylist(out, schema=OUT_SCHEMA)


def row_digest(row: dict) -> str:
    """Content hash of one stored trace row (image bytes hashed separately so the JSON stays small)."""
    content = {k: row[k] for k in TRACE_SCHEMA.names if k != "image"}
    content["image_sha1"] = hashlib.sha1(row["image"]).hexdigest() if row.get("image") is not None else None
    return hashlib.sha1(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
