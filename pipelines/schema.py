"""The trace record: what the pipelines write and what training and evaluation read.

One row per question (see ../shared/lare-method.md §4). Every column carries a one-line
description in its field metadata, and the schema carries its version, so a Parquet file
explains itself: `pq.read_schema(path).field("steps").metadata[b"description"]`.
Bump SCHEMA_VERSION on any change a reader could notice.
"""

import pyarrow as pa

SCHEMA_VERSION = 1

BBOX_TYPE = pa.list_(pa.float32())
STEP_TYPE = pa.struct([pa.field("text", pa.string(), nullable=False), pa.field("bbox", BBOX_TYPE)])


def _field(name, type_, description, nullable=False):
    return pa.field(name, type_, nullable=nullable, metadata={"description": description})


TRACE_FIELDS = [
    _field("id", pa.string(), "Stable id: sha1 hex[:16] of source name and source id; unique in a build."),
    _field("source", pa.string(), "Source name the row came from (refocus, easy_vqa, visual_cot, gqa, vqav2, or the jsonl/parquet name)."),
    _field("split", pa.string(), "Split the row belongs to (train, val, test, hard, ...); also the folder it is stored in."),
    _field("image", pa.binary(), "Encoded image bytes (PNG) of the stored, possibly downscaled image; null only when image_uri is used.", nullable=True),
    _field("image_uri", pa.string(), "Where the image lives when its bytes are not embedded; null when image is set.", nullable=True),
    _field("width", pa.int32(), "Width in pixels of the stored image (after resizing)."),
    _field("height", pa.int32(), "Height in pixels of the stored image (after resizing)."),
    _field("question", pa.string(), "Question text, without answer options."),
    _field("choices", pa.list_(pa.string()), "Answer options for multiple-choice questions; empty for open questions."),
    _field("answer", pa.string(), "Ground-truth answer: a short string; for multiple choice the option text itself."),
    _field("steps", pa.list_(STEP_TYPE), "Reasoning steps in order: text (no coordinates) and bbox [x1, y1, x2, y2] normalised to [0, 1] on the stored image, or null."),
    _field("meta", pa.string(), "JSON object with source-specific extras (question family, pope_type, hard, original ids, ...)."),
    _field("schema_version", pa.int32(), "Version of this schema the row was written with."),
]

TRACE_SCHEMA = pa.schema(TRACE_FIELDS, metadata={"lare.schema_version": str(SCHEMA_VERSION), "lare.table": "traces"})

REJECT_SCHEMA = pa.schema(
    [
        _field("source", pa.string(), "Source name."),
        _field("source_id", pa.string(), "The record's id in the source dataset (or its position when it has none)."),
        _field("split", pa.string(), "Split the record was meant for.", nullable=True),
        _field("reason", pa.string(), "Short stable reject code, e.g. corrupt_image, bbox_out_of_range (see pipelines.validate.REASONS)."),
        _field("detail", pa.string(), "Human explanation naming the field and the offending value."),
        _field("record", pa.string(), "JSON text of the raw record, truncated; never image bytes."),
    ],
    metadata={"lare.schema_version": str(SCHEMA_VERSION), "lare.table": "rejects"},
)


def describe(schema: pa.Schema = TRACE_SCHEMA) -> list[tuple[str, str, str]]:
    """(name, type, description) per column: used to generate the table in docs/data.md."""
    return [(f.name, str(f.type), (f.metadata or {}).get(b"description", b"").decode()) for f in schema]


def markdown_table(schema: pa.Schema = TRACE_SCHEMA) -> str:
    rows = ["| column | type | nullable | description |", "| --- | --- | --- | --- |"]
    for f in schema:
        desc = (f.metadata or {}).get(b"description", b"").decode()
        rows.append(f"| `{f.name}` | `{f.type}` | {'yes' if f.nullable else 'no'} | {desc} |")
    return "\n".join(rows)
