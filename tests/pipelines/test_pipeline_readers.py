"""Each reader on its fixture (real file formats), through the Ray Data job: rows, boxes and every reject."""

import json
import os

import numpy as np
import pytest

from pipelines.build import build_traces
from pipelines.io import read_rejects_table, read_traces_table


def opts_for(source, F):
    return {
        "visual_cot": {"path": f"{F}/visual_cot/viscot_363k.json", "image_root": f"{F}/visual_cot/images"},
        "visual_cot_metadata": {"path": f"{F}/visual_cot/flickr30k_metadata.jsonl", "image_root": f"{F}/visual_cot/images"},
        "gqa": {"questions": f"{F}/gqa/train_balanced_questions.json", "scene_graphs": f"{F}/gqa/train_sceneGraphs.json",
                "image_root": f"{F}/gqa/images"},
        "vqav2": {"questions": f"{F}/vqav2/v2_OpenEnded_mscoco_val2014_questions.json", "annotations": f"{F}/vqav2/v2_mscoco_val2014_annotations.json",
                  "instances": f"{F}/vqav2/instances_val2014.json", "image_root": f"{F}/vqav2/val2014", "split": "val"},
        "jsonl": {"path": f"{F}/tabular/data.jsonl", "image_root": f"{F}/tabular/images", "name": "handmade"},
        "parquet": {"path": f"{F}/tabular/data.parquet", "bbox_format": "xywh_px",
                    "columns": {"id": "qid", "image": "img", "question": "q", "answer": "a", "bbox": "boxes", "split": "subset"}},
        "easy_vqa": {"root": f"{F}/easy_vqa"},
    }[source]


# source -> (rows out per split, {source_id: reject reason})
EXPECTED = {
    "visual_cot": ({"train": 3}, {"flickr30k/4": "image_unreadable", "flickr30k/5": "corrupt_image", "flickr30k/6": "corrupt_image",
                                  "flickr30k/7": "decompression_bomb", "flickr30k/8": "image_too_small", "flickr30k/9": "bbox_out_of_range",
                                  "flickr30k/10": "bbox_degenerate", "flickr30k/1": "duplicate_id", "flickr30k/11": "empty_field",
                                  "flickr30k/12": "missing_field"}),
    "visual_cot_metadata": ({"train": 1}, {"flickr30k/1": "image_size_mismatch", "flickr30k/2": "empty_field"}),
    "gqa": ({"train": 2}, {"05451386": "missing_field", "05451387": "empty_field"}),
    "vqav2": ({"val": 3}, {"73001": "missing_field"}),
    "jsonl": ({"train": 3, "val": 1}, {"data.jsonl:3": "bad_field", "q3": "answer_not_in_choices"}),  # q4 has no steps: kept
    "parquet": ({"train": 1, "test": 1}, {"p3": "corrupt_image", "p1": "duplicate_id"}),
    "easy_vqa": ({"train": 61, "test": 27}, {"train-61": "corrupt_image", "train-62": "bad_field", "train-63": "empty_field"}),
}


@pytest.fixture(scope="module")
def built(ray_session, fixtures_dir, tmp_path_factory):
    out = {}
    for source in EXPECTED:
        path = str(tmp_path_factory.mktemp(source) / "out")
        reader = "visual_cot" if source.startswith("visual_cot") else source
        manifest = build_traces(reader, path, options=opts_for(source, fixtures_dir))
        out[source] = (path, manifest)
    return out


@pytest.mark.parametrize("source", list(EXPECTED))
def test_reader_rows_and_rejects(built, source):
    path, manifest = built[source]
    splits, rejects = EXPECTED[source]
    c = manifest["counts"]
    assert c["splits"] == splits
    assert c["rows_in"] == c["rows_out"] + c["rejects"] == sum(splits.values()) + len(rejects)
    rej = read_rejects_table(path).to_pylist()
    assert {r["source_id"]: r["reason"] for r in rej} == rejects
    for r in rej:  # the reject names the problem and keeps the record, never the image bytes
        assert r["detail"] and r["record"] and r["source"] == manifest["source"]
        assert "\\x89PNG" not in r["record"] and len(r["record"]) <= 2100
    for split, n in splits.items():
        table = read_traces_table(path, split)
        assert table.num_rows == n and set(table["split"].to_pylist()) == {split}
        assert len(set(table["id"].to_pylist())) == n
        for row in table.to_pylist():
            assert row["image"][:8] == b"\x89PNG\r\n\x1a\n" and max(row["width"], row["height"]) <= 448
            json.loads(row["meta"])


def rows_by(path, split, key):
    return {json.loads(r["meta"])[key] if key in json.loads(r["meta"]) else r[key]: r for r in read_traces_table(path, split).to_pylist()}


def test_visual_cot_boxes_follow_the_annotation_frame_and_resizing(built):
    path, _ = built["visual_cot"]
    rows = rows_by(path, "train", "question_id")
    assert rows[1]["question"] == "What colour is the box?" and rows[1]["answer"] == "red"
    np.testing.assert_allclose(rows[1]["steps"][0]["bbox"], [20 / 200, 10 / 100, 80 / 200, 60 / 100], atol=1e-6)
    assert len(rows[2]["steps"]) == 1
    big = rows[3]  # 900x600 stored as 448x299: the normalised box is unchanged
    assert (big["width"], big["height"]) == (448, 299)
    np.testing.assert_allclose(big["steps"][0]["bbox"], [0.5, 0.5, 600 / 900, 0.75], atol=1e-6)


def test_visual_cot_metadata_layout(built):
    meta_path, _ = built["visual_cot_metadata"]
    (meta_row,) = read_traces_table(meta_path, "train").to_pylist()
    assert meta_row["question"] == "What is on the left?" and len(meta_row["steps"]) == 2
    np.testing.assert_allclose(meta_row["steps"][1]["bbox"], [0.75, 0.4, 199.6 / 200, 1.0], atol=1e-6)  # 0.4 px past the edge: clipped


def test_gqa_program_objects_become_steps(built):
    path, _ = built["gqa"]
    rows = {r["question"]: r for r in read_traces_table(path, "train").to_pylist()}
    rel = rows["What is the red object on the table?"]
    assert [s["text"] for s in rel["steps"]] == ["Find the table.", "Follow 'on' to the cup."]
    np.testing.assert_allclose(rel["steps"][0]["bbox"], [200 / 500, 100 / 333, 300 / 500, 180 / 333], atol=1e-6)
    np.testing.assert_allclose(rel["steps"][1]["bbox"], [10 / 500, 20 / 333, 110 / 500, 120 / 333], atol=1e-6)
    absent = rows["Is there a cat in the picture?"]
    assert absent["answer"] == "no" and absent["steps"][0]["bbox"] is None


def test_vqav2_regions_from_named_categories_or_null(built):
    path, _ = built["vqav2"]
    rows = {r["question"]: r for r in read_traces_table(path, "val").to_pylist()}
    dogs = rows["How many dogs are next to the person?"]
    assert dogs["answer"] == "2" and len(dogs["steps"]) == 2
    np.testing.assert_allclose(dogs["steps"][0]["bbox"], [100 / 640, 100 / 480, 200 / 640, 300 / 480], atol=1e-6)  # union of both dogs
    np.testing.assert_allclose(dogs["steps"][1]["bbox"], [400 / 640, 50 / 480, 500 / 640, 150 / 480], atol=1e-6)  # "person"
    weather = rows["What is the weather like?"]
    assert len(weather["steps"]) == 1 and weather["steps"][0]["bbox"] is None


def test_tabular_mapping_formats(built):
    path, manifest = built["jsonl"]
    assert manifest["source"] == "handmade"
    rows = {r["question"]: r for r in read_traces_table(path, "train").to_pylist() + read_traces_table(path, "val").to_pylist()}
    assert rows["Which corner?"]["choices"] == ["bottom right", "top left", "centre"]
    assert (rows["Which corner?"]["width"], rows["Which corner?"]["height"]) == (64, 64)  # base64 image bytes
    assert rows["How many boxes?"]["answer"] == "1" and rows["How many boxes?"]["split"] == "val"
    ppath, _ = built["parquet"]
    prow = read_traces_table(ppath, "train").to_pylist()[0]
    np.testing.assert_allclose(prow["steps"][0]["bbox"], [30 / 120, 20 / 90, 90 / 120, 70 / 90], atol=1e-6)  # xywh px


def test_easy_vqa_regions_match_the_shape(built):
    path, _ = built["easy_vqa"]
    for row in read_traces_table(path, "train").to_pylist():
        meta = json.loads(row["meta"])
        q, a = row["question"], row["answer"]
        if q.startswith("what color"):
            assert meta["derived"]["colour"] == a
        x1, y1, x2, y2 = row["steps"][0]["bbox"]
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1 and (x2 - x1) * 64 >= 5


def test_easy_vqa_derived_shape_and_colour_agree_with_the_real_dataset():
    """Over the package's real train images, the region finder names the same colour and shape as the answers."""
    from PIL import Image

    from pipelines.sources import easy_vqa

    root = easy_vqa.default_root()
    with open(os.path.join(root, "train", "questions.json")) as f:
        questions = json.load(f)
    truth = {}
    for q, a, image_id in questions:
        if image_id < 600 and a in easy_vqa.COLOURS and "color" in q:
            truth.setdefault(image_id, {})["colour"] = a
        if image_id < 600 and a in ("circle", "rectangle", "triangle"):
            truth.setdefault(image_id, {})["shape"] = a
    agree = total = 0
    for image_id, t in truth.items():
        im = np.asarray(Image.open(os.path.join(root, "train", "images", f"{image_id}.png")).convert("RGB"))
        box, colour, shape = easy_vqa.find_shape(im)
        for key, got in (("colour", colour), ("shape", shape)):
            if key in t:
                agree += t[key] == got
                total += 1
    assert total > 500 and agree / total > 0.99
