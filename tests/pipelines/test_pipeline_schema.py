"""The trace schema is the contract with the model core; the validator is the one gate for data quality."""

import pyarrow as pa
import pytest

from pipelines.schema import REJECT_SCHEMA, SCHEMA_VERSION, TRACE_SCHEMA, markdown_table
from pipelines.validate import REASONS, validate_trace


def test_trace_schema_columns_types_and_descriptions():
    assert TRACE_SCHEMA.names == ["id", "source", "split", "image", "image_uri", "width", "height", "question",
                                  "choices", "answer", "steps", "meta", "schema_version"]
    assert TRACE_SCHEMA.field("image").type == pa.binary()
    assert TRACE_SCHEMA.field("width").type == pa.int32()
    assert TRACE_SCHEMA.field("choices").type == pa.list_(pa.string())
    step = TRACE_SCHEMA.field("steps").type.value_type
    assert step.field("text").type == pa.string() and step.field("bbox").type == pa.list_(pa.float32())
    assert step.field("bbox").nullable
    assert TRACE_SCHEMA.field("image").nullable and TRACE_SCHEMA.field("image_uri").nullable
    assert not TRACE_SCHEMA.field("id").nullable
    for f in list(TRACE_SCHEMA) + list(REJECT_SCHEMA):
        assert len(f.metadata[b"description"]) > 10, f.name
    assert TRACE_SCHEMA.metadata[b"lare.schema_version"] == str(SCHEMA_VERSION).encode()
    assert REJECT_SCHEMA.names == ["source", "source_id", "split", "reason", "detail", "record"]
    assert markdown_table().count("\n") == len(TRACE_SCHEMA) + 1


def good():
    return {"id": "abc", "source": "s", "split": "train", "image": b"png", "image_uri": None, "width": 64, "height": 48,
            "question": "What?", "choices": [], "answer": "red", "meta": "{}", "schema_version": 1,
            "steps": [{"text": "Find it.", "bbox": [0.1, 0.2, 0.5, 0.6]}, {"text": "Done.", "bbox": None}]}


@pytest.mark.parametrize("change, reason, names", [
    ({"question": None}, "missing_field", "question"),
    ({"answer": "  "}, "empty_field", "answer"),
    ({"image": None}, "missing_field", "image"),
    ({"width": 20}, "image_too_small", "20x48"),
    ({"steps": None}, "missing_field", "steps"),
    ({"steps": [{"text": "", "bbox": None}]}, "empty_field", "steps[0].text"),
    ({"steps": [{"text": "x", "bbox": [0.1, 0.2, 1.2, 0.6]}]}, "bbox_out_of_range", "steps[0].bbox"),
    ({"steps": [{"text": "x", "bbox": [-0.1, 0.2, 0.5, 0.6]}]}, "bbox_out_of_range", "steps[0].bbox"),
    ({"steps": [{"text": "x", "bbox": [0.5, 0.2, 0.5, 0.6]}]}, "bbox_degenerate", "steps[0].bbox"),
    ({"steps": [{"text": "x", "bbox": [0.5, 0.2, 0.505, 0.6]}]}, "bbox_degenerate", "under one pixel"),
    ({"steps": [{"text": "x", "bbox": [0.1, 0.2, 0.5]}]}, "bad_field", "steps[0].bbox"),
    ({"steps": [{"text": "x", "bbox": [0.1, 0.2, float("nan"), 0.6]}]}, "bad_field", "steps[0].bbox"),
    ({"choices": ["blue", "green"]}, "answer_not_in_choices", "'red'"),
    ({"choices": ["red", "red"]}, "bad_field", "duplicates"),
    ({"choices": ["red", ""]}, "empty_field", "choices[1]"),
])
def test_validate_names_the_problem(change, reason, names):
    rec = dict(good(), **change)
    got = validate_trace(rec, min_side=28)
    assert got is not None and got[0] == reason and names in got[1]
    assert reason in REASONS


def test_validate_accepts_good_records():
    assert validate_trace(good()) is None
    assert validate_trace(dict(good(), choices=["blue", "red", "green", "white"])) is None
    assert validate_trace(dict(good(), image=None, image_uri="s3://b/k.jpg")) is None


def test_image_guards_reject_with_the_right_reason():
    import io

    from PIL import Image

    from pipelines import images
    from pipelines.validate import Reject

    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 20, 30)).save(buf, format="JPEG")
    data = buf.getvalue()
    im = images.decode(data, max_pixels=10**6, min_side=28)
    assert im.size == (300, 200) and im.mode == "RGB"
    assert images.fit(im, 150).size == (150, 100) and images.fit(im, 448) is im  # downscale only
    for kwargs, blob, reason in [({"max_pixels": 50_000, "min_side": 28}, data, "decompression_bomb"),
                                 ({"max_pixels": 10**6, "min_side": 250}, data, "image_too_small"),
                                 ({"max_pixels": 10**6, "min_side": 28}, data[: len(data) // 2], "corrupt_image"),
                                 ({"max_pixels": 10**6, "min_side": 28}, b"", "corrupt_image"),
                                 ({"max_pixels": 10**6, "min_side": 28}, b"GIF89a garbage", "corrupt_image")]:
        with pytest.raises(Reject) as e:
            images.decode(blob, what="image x.jpg", **kwargs)
        assert e.value.reason == reason and "x.jpg" in e.value.detail
    with pytest.raises(Reject) as e:
        images.read_bytes("/nonexistent/dir/y.png")
    assert e.value.reason == "image_unreadable" and "y.png" in e.value.detail
