"""Small benchmark files in the real formats, written into a test's tmp dir.

- VLMEvalKit TSV: written the way VLMEvalKit dumps a table (pandas `to_csv(sep="\t", index=False)`; NaN cells
  empty, fields with tabs or newlines quoted); images as base64, later rows pointing at an earlier row's `index`.
- Hugging Face Parquet as `datasets` writes it (the files lmms-eval loads): image columns are
  struct<bytes: binary, path: string>, and the schema carries the `huggingface` features metadata.
- The refocus trace Parquet (pipelines' schema: id, source, split, image, ..., meta as JSON text).

Images are tiny PNGs with distinct colours, so tests can tell which image a row got.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

NAN = math.nan


def png(colour, size=(12, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_tsv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def write_hf_parquet(path: Path, columns: dict[str, list], image_columns=("image",)) -> Path:
    """A Parquet file like `datasets.Dataset.to_parquet`: images as {bytes, path} structs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays, features = {}, {}
    for name, values in columns.items():
        if name in image_columns:
            arrays[name] = pa.array([None if v is None else {"bytes": v, "path": None} for v in values], IMAGE_STRUCT)
            features[name] = {"_type": "Image"}
        else:
            arrays[name] = pa.array(values)
            features[name] = {"dtype": str(arrays[name].type), "_type": "Value"}
    table = pa.table(arrays)
    table = table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})
    pq.write_table(table, path)
    return path


# ---------------------------------------------------------------------------------------------
# Benchmark contents shared by the TSV and the Parquet version, so both formats must read the same.

RED, GREEN, BLUE, GREY = png("red"), png("green"), png("blue"), png("grey")

MMBENCH_QUESTIONS = [
    # index, hint, question, options, answer, category, l2-category, image
    (0, "The picture was taken\tat noon.\nIt shows a park.", "What is the main colour of the image?",
     ["red", "green", "blue", "yellow"], "A", "image_scene", "Coarse Perception", RED),
    (1, None, "Is the square left of the circle?", ["yes", "no"], "B", "spatial_relationship",
     "Fine-grained Perception (instance-level)", GREEN),
]


def mmbench_rows() -> list[dict]:
    """The released layout: each question followed by its circular copies at index + k * 10^6, whose image
    cell is the main row's index."""
    rows = []
    for index, hint, question, options, answer, cat, l2, image in MMBENCH_QUESTIONS:
        n = len(options)
        for k in range(n):
            rot = [options[(j + k) % n] for j in range(n)]
            gold = "ABCD"[("ABCD".index(answer) - k) % n]
            row = {"index": index + k * 1_000_000, "question": question, "hint": hint if hint else NAN}
            row.update({L: (rot[j] if j < n else NAN) for j, L in enumerate("ABCD")})
            row.update({"answer": gold, "category": cat, "image": b64(image) if k == 0 else str(index),
                        "source": "MMBench", "l2-category": l2, "comment": NAN, "split": "dev"})
            rows.append(row)
    return rows


def write_mmbench_parquet(path: Path) -> Path:
    """lmms-lab/MMBench (config en, split dev): every row has its image; missing hints/options are the text "nan"."""
    rows = mmbench_rows()
    images = {index: image for index, *_, image in MMBENCH_QUESTIONS}
    cols = {"index": [r["index"] for r in rows], "question": [r["question"] for r in rows],
            "hint": ["nan" if isinstance(r["hint"], float) else r["hint"] for r in rows],
            "answer": [r["answer"] for r in rows]}
    for L in "ABCD":
        cols[L] = ["nan" if isinstance(r[L], float) else r[L] for r in rows]
    cols.update({"category": [r["category"] for r in rows], "image": [images[r["index"] % 1_000_000] for r in rows],
                 "source": [r["source"] for r in rows], "L2-category": [r["l2-category"] for r in rows],
                 "comment": ["nan"] * len(rows), "split": [r["split"] for r in rows]})
    return write_hf_parquet(path, cols)


POPE_QUESTIONS = [
    # index, question, answer, category (VLMEvalKit merges questions shared by several splits), image
    (0, "Is there a dog in the image?", "Yes", "random", RED),
    (1, "Is there a cat in the image?", "No", "random", RED),
    (2, "Is there a car in the image?", "No", "popular,adversarial", GREEN),
    (3, "Is there a person in the image?", "Yes", "popular", GREEN),
    (4, "Is there a tree in the image?", "Yes", "adversarial", BLUE),
]


def pope_rows() -> list[dict]:
    first = {}
    rows = []
    for index, q, a, cat, image in POPE_QUESTIONS:
        ref = first.setdefault(image, index)
        rows.append({"index": index, "question": q, "answer": a, "category": cat,
                     "image": b64(image) if ref == index else str(ref), "image_source": f"COCO_val2014_{ref:012d}"})
    return rows


def write_pope_parquet(path: Path) -> Path:
    """lmms-lab/POPE default config: one row per (question, category), lower-case answers."""
    rows = [(i, q, a.lower(), c, im) for i, q, a, cats, im in POPE_QUESTIONS for c in cats.split(",")]
    return write_hf_parquet(path, {
        "id": [str(n) for n in range(len(rows))], "question_id": [str(i) for i, *_ in rows],
        "question": [q for _, q, *_ in rows], "answer": [a for _, _, a, *_ in rows],
        "image_source": [f"COCO_val2014_{i:012d}" for i, *_ in rows], "image": [im for *_, im in rows],
        "category": [c for *_, c, _ in rows]})


SCIENCEQA_QUESTIONS = [
    # question, hint, options, answer index, image, subject
    ("Which animal is a mammal?", "Look at the animals.", ["frog", "dog", "eagle"], 1, RED, "natural science"),
    ("Which word is a noun?", "", ["run", "table"], 1, None, "language science"),
    ("Which state is farthest north?", "", ["Texas", "Maine", "Ohio", "Utah"], 1, BLUE, "social science"),
]


def scienceqa_rows() -> list[dict]:
    rows = []
    for i, (q, hint, options, ans, image, subject) in enumerate(SCIENCEQA_QUESTIONS):
        row = {"index": i, "question": q, "hint": hint or NAN}
        row.update({L: (options[j] if j < len(options) else NAN) for j, L in enumerate("ABCDE")})
        row.update({"answer": "ABCDE"[ans], "image": b64(image) if image else NAN, "category": "closed choice",
                    "subject": subject, "split": "test"})
        rows.append(row)
    return rows


def write_scienceqa_parquet(path: Path) -> Path:
    """lmms-lab/ScienceQA: a `choices` list, a 0-based `answer`, a null image for text-only questions."""
    qs = SCIENCEQA_QUESTIONS
    return write_hf_parquet(path, {
        "image": [im for *_, im, _ in qs], "question": [q for q, *_ in qs], "choices": [o for _, _, o, *_ in qs],
        "answer": [a for _, _, _, a, *_ in qs], "hint": [h for _, h, *_ in qs], "task": ["closed choice"] * len(qs),
        "grade": ["grade5"] * len(qs), "subject": [s for *_, s in qs], "topic": ["t"] * len(qs),
        "category": ["c"] * len(qs), "skill": ["s"] * len(qs), "lecture": [""] * len(qs), "solution": [""] * len(qs)})


MMVP_QUESTIONS = [
    # Index (1-based), question, (a), (b), correct, image
    (1, "Is the door open or closed?", "Open", "Closed", "a", RED),
    (2, "Is the door open or closed?", "Open", "Closed", "b", GREEN),
    (3, "Is the dog facing left or right?", "Left", "Right", "b", BLUE),
    (4, "Is the dog facing left or right?", "Left", "Right", "a", GREY),
]


def mmvp_rows() -> list[dict]:
    # Written out of order on purpose: pairs follow the index, not the row order.
    order = [2, 0, 3, 1]
    return [{"index": MMVP_QUESTIONS[i][0], "question": MMVP_QUESTIONS[i][1], "A": MMVP_QUESTIONS[i][2],
             "B": MMVP_QUESTIONS[i][3], "answer": MMVP_QUESTIONS[i][4].upper(), "image": b64(MMVP_QUESTIONS[i][5]),
             "category": "state"} for i in order]


def write_mmvp_parquet(path: Path) -> Path:
    """lmms-lab-eval/MMVP: 'Options' as "(a) Open (b) Closed", 'Correct Answer' as "(a)"."""
    qs = MMVP_QUESTIONS
    return write_hf_parquet(path, {"Index": [i for i, *_ in qs], "Question": [q for _, q, *_ in qs],
                                   "Options": [f"(a) {a} (b) {b}" for _, _, a, b, *_ in qs],
                                   "Correct Answer": [f"({c})" for *_, c, _ in qs], "image": [im for *_, im in qs]})


MMSTAR_QUESTIONS = [
    # index, question, options, answer, category, l2-category, image
    (0, "Which option describe the object relationship in the image correctly?",
     ["The suitcase is on the book.", "The suitcase is beneath the cat.", "The cat, the dog and the book.",
      "The suitcase is beneath the book."], "A", "coarse perception", "image scene and topic", RED),
    (1, "How many shapes are there?", ["1", "2", "3", "4"], "C", "fine-grained perception", "object counting", BLUE),
]


def mmstar_rows() -> list[dict]:
    rows = []
    for index, q, options, answer, cat, l2, image in MMSTAR_QUESTIONS:
        row = {"index": index, "question": q, "answer": answer, "category": cat, "l2-category": l2, "bench": "MMBench"}
        row.update(dict(zip("ABCD", options)))
        row["image"] = b64(image)
        rows.append(row)
    return rows


def write_mmstar_parquet(path: Path) -> Path:
    """Lin-Chen/MMStar: the options live inside the question text ("\\nOptions: A: ..., B: ...")."""
    qs = MMSTAR_QUESTIONS
    inline = [q + "\nOptions: " + ", ".join(f"{L}: {o}" for L, o in zip("ABCD", opts)) for _, q, opts, *_ in qs]
    return write_hf_parquet(path, {"index": [i for i, *_ in qs], "question": inline, "image": [im for *_, im in qs],
                                   "answer": [a for _, _, _, a, *_ in qs], "category": [c for *_, c, _, _ in qs],
                                   "l2_category": [l2 for *_, l2, _ in qs], "meta_info": [{"source": "x"}] * len(qs)})


TEN = [f"option {i}" for i in range(10)]


def mmmu_pro_standard_rows() -> list[dict]:
    rows = [{"index": 0, "question": "<image 1> <image 2> Which image shows the larger angle?", "answer": "C",
             "image": str([b64(RED), b64(png("blue", (20, 16)))]), "category": "Math"},
            {"index": 1, "question": "<image 1> What is shown?", "answer": "J", "image": b64(GREEN),
             "category": "Art"}]
    for r in rows:
        r.update(dict(zip("ABCDEFGHIJ", TEN)))
    return rows


def mmmu_pro_vision_rows() -> list[dict]:
    rows = [{"index": i, "question": "placeholder", "answer": a, "image": b64(im), "category": s}
            for i, (a, im, s) in enumerate([("B", RED, "Math"), ("A", GREEN, "Art"), ("D", BLUE, "Art"),
                                            ("E", GREY, "Math")])]
    for r in rows:
        r.update(dict(zip("ABCDEFGHIJ", TEN)))
    return rows


def write_mmmu_pro_parquet(root: Path) -> Path:
    """MMMU/MMMU_Pro: 'standard (10 options)' with image_1..image_7 and an `options` string; 'vision' with
    one screenshot."""
    write_hf_parquet(root / "standard (10 options)" / "test-00000-of-00001.parquet", {
        "id": ["validation_Math_1", "validation_Art_2"],
        "question": ["<image 1> <image 2> Which image shows the larger angle?", "<image 1> What is shown?"],
        "options": [str(TEN), str(TEN)], "explanation": ["", ""],
        "image_1": [RED, GREEN], "image_2": [png("blue", (20, 16)), None], "image_3": [None, None],
        "img_type": ["['Diagrams']", "['Paintings']"], "answer": ["C", "J"], "topic_difficulty": ["Easy", "Hard"],
        "subject": ["Math", "Art"]}, image_columns=("image_1", "image_2", "image_3"))
    vision = mmmu_pro_vision_rows()
    write_hf_parquet(root / "vision" / "test-00000-of-00001.parquet", {
        "id": [f"test_{r['category']}_{r['index']}" for r in vision],
        "image": [base64.b64decode(r["image"]) for r in vision], "options": [str(TEN)] * len(vision),
        "answer": [r["answer"] for r in vision], "subject": [r["category"] for r in vision]})
    return root


def write_refocus(root: Path) -> Path:
    """<root>/refocus/{test,hard}/part-0.parquet in the trace schema; one row of another source is mixed in."""
    rows = {
        "test": [
            ("r-cnt", "refocus", "How many blue shapes are in the top-left quarter?", [], "2", "counting", {}),
            ("r-att", "refocus", "What colour is the star?", [], "red", "attribute", {}),
            ("r-exi", "refocus", "Is there a red circle in the image?", [], "no", "existence",
             {"pope_type": "adversarial"}),
            ("r-mc", "refocus", "What colour is the star?", ["green", "blue", "red", "white"], "blue",
             "multiple_choice", {"base_family": "attribute"}),
            ("other", "easy_vqa", "What shape is this?", [], "circle", "", {}),
        ],
        "hard": [
            ("h-cnt", "refocus", "How many red shapes are in the bottom-left quarter?", [], "3", "counting", {}),
            ("h-exi", "refocus", "Is there a green star in the image?", [], "yes", "existence", {"pope_type": "random"}),
        ],
    }
    for split, rs in rows.items():
        d = root / "refocus" / split
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({
            "id": [r[0] for r in rs], "source": [r[1] for r in rs], "split": [split] * len(rs),
            "image": [RED] * len(rs), "image_uri": pa.array([None] * len(rs), pa.string()),
            "width": pa.array([12] * len(rs), pa.int32()), "height": pa.array([8] * len(rs), pa.int32()),
            "question": [r[2] for r in rs], "choices": pa.array([r[3] for r in rs], pa.list_(pa.string())),
            "answer": [r[4] for r in rs],
            "steps": pa.array([[{"text": "Look.", "bbox": [0.1, 0.1, 0.5, 0.5]}]] * len(rs),
                              pa.list_(pa.struct([("text", pa.string()), ("bbox", pa.list_(pa.float32()))]))),
            "meta": [json.dumps(dict(r[6], family=r[5], hard=split == "hard", objects=[["star", "red", 0, 0, 1, 1]]))
                     for r in rs],
            "schema_version": pa.array([1] * len(rs), pa.int32())}), d / "part-00000.parquet")
    return root
