"""Records keep what the user gave: no steps is a valid record, letter answers pick their choice, texts stay exact
within documented limits, image paths stay inside their root, and the image column mapping is hard to get wrong."""

import base64
import io
import json
import os

import pytest
from PIL import Image

from pipelines import images
from pipelines.build import build_traces, resolve_options
from pipelines.io import read_rejects_table, read_traces_table
from pipelines.process import finish
from pipelines.sources import get_source
from pipelines.validate import MAX_TEXT_CHARS, REASONS, validate_trace
from tests.pipelines.test_fidelity_images import run_jsonl

UNICODE = "Qu'est-ce que c'est ? 日本語 😀 e\u0301"  # combining accent: must not be normalised to é


def png(w=64, h=48, colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def root(tmp_path):
    """tmp_path/images holds a.png (the root); tmp_path/outside.png is a good image outside it."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png())
    (tmp_path / "outside.png").write_bytes(png())
    return tmp_path


def rec(rid, **fields):
    return {"id": rid, "image_path": "a.png", "question": "What colour is it?", "answer": "red", **fields}


def jsonl(root, records, **options):
    """Rows by source id, read with image_root = root/images."""
    rows = run_jsonl(root, records, image_root=str(root / "images"), **options)
    return {r["source_id"]: r for r in rows}


# ---------------------------------------------------------------------------------------------
# 1. No steps; letter answers.


def test_a_record_without_steps_is_kept(root):
    rows = jsonl(root, [rec("absent"), rec("empty", steps=[]), rec("null", steps=None), rec("text", steps="[]"),
                        rec("one", steps=[{"text": "Look.", "bbox": [0.1, 0.1, 0.5, 0.5]}])])
    for sid in ("absent", "empty", "null", "text"):
        assert rows[sid]["reason"] is None, rows[sid]["detail"]
        assert rows[sid]["steps"] == []
    assert len(rows["one"]["steps"]) == 1


def test_validator_accepts_zero_steps_but_not_a_missing_list():
    good = {"id": "i", "source": "s", "split": "train", "image": b"png", "image_uri": None, "width": 64, "height": 48,
            "question": "What?", "choices": [], "answer": "red", "steps": [], "meta": "{}", "schema_version": 1}
    assert validate_trace(good) is None
    reason, detail = validate_trace(dict(good, steps=None))
    assert reason == "missing_field" and "'steps'" in detail


CHOICES = ["red", "green", "blue", "white"]


@pytest.mark.parametrize("answer, expected", [
    ("B", "green"), ("(C)", "blue"), ("D.", "white"), ("A)", "red"), (" B ", "green"),
    ("green", "green"),  # the option text itself
])
def test_letter_answers_pick_their_choice_under_the_default_format(root, answer, expected):
    (row,) = jsonl(root, [rec("q", answer=answer, choices=CHOICES)]).values()
    assert row["reason"] is None, row["detail"]
    assert row["answer"] == expected and row["choices"] == CHOICES


def test_a_letter_that_is_itself_a_choice_stays_that_choice(root):
    choices = ["B", "A"]  # options that are letters: "A" is the second option, not the first
    (row,) = jsonl(root, [rec("q", answer="A", choices=choices)]).values()
    assert row["reason"] is None and row["answer"] == "A"


@pytest.mark.parametrize("answer, names", [("E", "letter 5 but there are 4 choices"), ("b", "'b'"), ("purple", "'purple'")])
def test_answers_that_name_no_choice_are_rejected(root, answer, names):
    (row,) = jsonl(root, [rec("q", answer=answer, choices=CHOICES)]).values()
    assert row["reason"] == "answer_not_in_choices" and names in row["detail"]


def test_letter_format_reads_the_same_letter_spellings(root):
    rows = jsonl(root, [rec("l", answer="(B)", choices=CHOICES), rec("i", answer=2, choices=CHOICES)], answer_format="letter")
    assert rows["l"]["answer"] == "green"
    assert rows["i"]["reason"] == "answer_not_in_choices" and "not a letter" in rows["i"]["detail"]


# ---------------------------------------------------------------------------------------------
# 3. Text: exact, limited, no control characters.


def test_unicode_text_is_kept_exactly(root):
    steps = [{"text": UNICODE, "bbox": None}]
    (row,) = jsonl(root, [rec("u", question=UNICODE, answer=UNICODE, choices=[UNICODE, "non"], steps=steps)]).values()
    assert row["reason"] is None, row["detail"]
    assert row["question"] == UNICODE and row["answer"] == UNICODE and row["choices"][0] == UNICODE
    assert row["steps"][0]["text"] == UNICODE


def test_tab_newline_and_carriage_return_are_text(root):
    (row,) = jsonl(root, [rec("w", question="Line one\r\n\tline two?")]).values()
    assert row["reason"] is None and row["question"] == "Line one\r\n\tline two?"


LONG = "x" * (MAX_TEXT_CHARS + 1)


@pytest.mark.parametrize("fields, name", [
    ({"question": LONG}, "question"),
    ({"answer": LONG}, "answer"),
    ({"choices": ["red", LONG], "answer": "red"}, "choices[1]"),
    ({"steps": [{"text": "Look.", "bbox": None}, {"text": LONG, "bbox": None}]}, "steps[1].text"),
])
def test_text_over_max_text_chars_is_rejected_naming_the_field(root, fields, name):
    (row,) = jsonl(root, [rec("long", **fields)]).values()
    assert row["reason"] == "text_too_long"
    assert f"field '{name}'" in row["detail"] and str(MAX_TEXT_CHARS + 1) in row["detail"] and row["source_id"] == "long"


def test_max_text_chars_is_an_option_and_counts_characters(root):
    assert MAX_TEXT_CHARS == 4000 and resolve_options("jsonl", {"path": "x"})["max_text_chars"] == 4000
    for source in ("visual_cot", "gqa", "vqav2", "easy_vqa", "parquet"):
        assert resolve_options(source, {"max_text_chars": 10})["max_text_chars"] == 10
    rows = jsonl(root, [rec("ok", question="日本語😀" * 5), rec("long", question="日本語😀" * 5 + "?")], max_text_chars=20)
    assert rows["ok"]["reason"] is None  # 20 characters, though 70 bytes of UTF-8
    assert rows["long"]["reason"] == "text_too_long" and "21 characters, max_text_chars is 20" in rows["long"]["detail"]
    assert jsonl(root, [rec("exact", question="q" * 4000)])["exact"]["reason"] is None


@pytest.mark.parametrize("text", ["bell\x07", "nul\x00", "esc\x1b[31m", "del\x7f", "c1\x85", "vt\x0b"])
def test_control_characters_are_rejected(root, text):
    rows = jsonl(root, [rec("q", question=text), rec("s", steps=[{"text": text, "bbox": None}])])
    assert rows["q"]["reason"] == "control_characters" and "field 'question'" in rows["q"]["detail"]
    assert rows["s"]["reason"] == "control_characters" and "field 'steps[0].text'" in rows["s"]["detail"]
    assert f"U+{ord(text[-1] if text[-1] != 'm' else chr(27)):04X}" in rows["q"]["detail"]


def test_new_reasons_are_registered():
    for reason in ("text_too_long", "control_characters", "image_outside_root"):
        assert reason in REASONS


# ---------------------------------------------------------------------------------------------
# 4. Paths stay inside their root; the file is never opened.


@pytest.fixture
def opened(monkeypatch):
    """Every path images.read_bytes is asked for."""
    seen, real = [], images.read_bytes
    monkeypatch.setattr(images, "read_bytes", lambda path: seen.append(path) or real(path))
    return seen


def escaping_paths(root, ext=".png") -> dict:
    """The three ways out of root/images, each to a good image that exists outside it."""
    if ext != ".png":
        for name in ("outside", "images/a"):
            os.link(root / f"{name}.png", root / f"{name}{ext}")
    os.symlink(root / f"outside{ext}", root / "images" / f"link{ext}")
    if not (root / "images" / "up").exists():
        os.symlink(root, root / "images" / "up")  # a linked folder leads out too
    return {"dotdot": f"../outside{ext}", "absolute": str(root / f"outside{ext}"), "symlink": f"link{ext}",
            "folder_link": f"up/outside{ext}"}


def test_paths_leaving_the_root_are_rejected_unopened(root, opened):
    paths = escaping_paths(root)
    rows = jsonl(root, [rec(name, image_path=p) for name, p in paths.items()] + [rec("inside")])
    for name, path in paths.items():
        assert rows[name]["reason"] == "image_outside_root", (name, rows[name]["detail"])
        assert repr(path) in rows[name]["detail"] and "outside image_root" in rows[name]["detail"]
    assert rows["inside"]["reason"] is None
    assert opened == [str(root / "images" / "a.png")]  # only the one inside


def test_paths_inside_the_root_pass_even_through_links(root, tmp_path):
    (root / "images" / "sub").mkdir()
    os.symlink(root / "images" / "a.png", root / "images" / "sub" / "alias.png")  # a link that stays inside
    linked_root = tmp_path / "linked_root"
    os.symlink(root / "images", linked_root)  # the root itself may be a link
    assert images.path_in_root(str(linked_root), "sub/alias.png") == str(linked_root / "sub" / "alias.png")
    assert images.path_in_root(str(root / "images"), "sub/../a.png") == str(root / "images" / "sub/../a.png")
    assert images.path_in_root(str(root / "images"), str(root / "images" / "a.png")) == str(root / "images" / "a.png")
    assert images.path_in_root("", "/anywhere/x.png") == "/anywhere/x.png"  # no root: nothing to confine to


@pytest.mark.parametrize("path", ["../other/x.png", "/x.png", "s3://other-bucket/x.png", "a/../../x.png"])
def test_object_store_roots_confine_too(path):
    with pytest.raises(images.Reject) as e:
        images.path_in_root("s3://bucket/images", path)
    assert e.value.reason == "image_outside_root"
    assert images.path_in_root("s3://bucket/images/", "cot/a.png") == "s3://bucket/images/cot/a.png"


def drafts(root) -> dict:
    """One record per reader that takes paths, each naming `{path}` for its image."""
    return {
        "visual_cot": lambda p: {"question": "Q?", "answer": "a", "image": p, "bboxs": [[1, 1, 20, 20]], "dataset": "d"},
        "gqa": lambda p: {"qid": "1", "question": {"imageId": p[:-4], "question": "Q?", "answer": "a",
                                                    "semantic": [{"operation": "select", "argument": "cup (1)"}]},
                          "graph": {"width": 64, "height": 48, "objects": {"1": {"name": "cup", "x": 1, "y": 1, "w": 20, "h": 20}}}},
        "vqav2": lambda p: {"question": {"question": "Q?", "question_id": 1}, "answer": "a",
                            "image": {"file_name": p, "width": 64, "height": 48}, "objects": []},
    }


@pytest.mark.parametrize("source", ["visual_cot", "gqa", "vqav2"])
def test_every_path_reader_confines_to_its_root(root, opened, source):
    opts = resolve_options(source, {"image_root": str(root / "images")})
    src, make = get_source(source), drafts(root)[source]
    ext = ".jpg" if source == "gqa" else ".png"  # GQA names images <imageId>.jpg
    for name, path in escaping_paths(root, ext).items():
        draft = src.convert(make(path), None, opts, 0)
        with pytest.raises(images.Reject) as e:
            finish(draft, source=source, source_id=name, split="train", opts=opts)
        assert e.value.reason == "image_outside_root", (name, e.value.detail)
    rec_ok = finish(src.convert(make("a" + ext), None, opts, 0), source=source, source_id="ok", split="train", opts=opts)
    assert (rec_ok["width"], rec_ok["height"]) == (64, 48)
    assert opened == [str(root / "images" / f"a{ext}")]


def test_easy_vqa_confines_to_its_root(root):
    src = get_source("easy_vqa")
    opts = resolve_options("easy_vqa", {"root": str(root / "images")})
    with pytest.raises(images.Reject) as e:  # the split names a folder: one that leaves the root is refused
        src.convert({"entry": ["what shape?", "circle", 0], "split": "../.."}, None, opts, 0)
    assert e.value.reason == "image_outside_root"


# ---------------------------------------------------------------------------------------------
# 5. Paths vs bytes in the column mapping.


def test_mapping_image_path_to_a_column_named_image_reads_paths(root, opened):
    rows = jsonl(root, [{"id": "m", "image": "a.png", "question": "What colour?", "answer": "red"}],
                 columns={"image_path": "image"})
    assert rows["m"]["reason"] is None, rows["m"]["detail"]
    assert (rows["m"]["width"], rows["m"]["height"]) == (64, 48)
    assert opened == [str(root / "images" / "a.png")]


def test_a_path_in_the_bytes_field_is_read_as_a_path_under_the_root(root, opened):
    rows = jsonl(root, [{"id": "p", "image": "a.png", "question": "What colour?", "answer": "red"},
                        {"id": "out", "image": "../outside.png", "question": "What colour?", "answer": "red"}])
    assert rows["p"]["reason"] is None, rows["p"]["detail"]
    assert rows["out"]["reason"] == "image_outside_root"
    assert opened == [str(root / "images" / "a.png")]


def test_text_in_the_bytes_field_that_is_neither_base64_nor_a_file_name_says_how_to_map(root):
    rows = jsonl(root, [{"id": "x", "img": "photos/cat_01", "question": "What?", "answer": "red"}], columns={"image": "img"})
    assert rows["x"]["reason"] == "bad_field"
    detail = rows["x"]["detail"]
    assert "field 'img'" in detail and "not valid base64" in detail
    assert "the column mapping reads paths as bytes: map your column to image_path" in detail


def test_base64_bytes_still_work_plain_wrapped_or_as_a_data_uri(root):
    text = base64.b64encode(png(40, 30)).decode()
    wrapped = "\n".join(text[i:i + 76] for i in range(0, len(text), 76))  # MIME-style line breaks
    rows = jsonl(root, [{"id": k, "image": v, "question": "What?", "answer": "red"}
                        for k, v in (("plain", text), ("wrapped", wrapped), ("uri", "data:image/png;base64," + text))])
    for sid, row in rows.items():
        assert row["reason"] is None, (sid, row["detail"])
        assert (row["width"], row["height"]) == (40, 30)


# ---------------------------------------------------------------------------------------------
# The whole job: every fix above through Ray Data and Parquet, and a bad line never fails its file.


def test_job_keeps_and_rejects_as_documented(ray_session, root):
    lines = [json.dumps(r, ensure_ascii=False) for r in [
        rec("plain"),
        rec("unicode", question=UNICODE, answer="B", choices=["oui", UNICODE]),
        rec("nosteps", steps=[]),
        rec("long", question="q" * 31),
        rec("bell", answer="red\x07"),
        rec("dotdot", image_path="../outside.png"),
        {"id": "mapped", "image": "a.png", "question": "What colour?", "answer": "red"},
    ]]
    lines.insert(3, '{"id": "surrogate", "image_path": "a.png", "question": "bad \\ud800 text", "answer": "red"}')
    latin1 = b'{"id": "latin1", "image_path": "a.png", "question": "caf\xe9?", "answer": "red"}\n'  # not UTF-8
    (root / "data.jsonl").write_bytes(("\n".join(lines) + "\n").encode("utf-8") + latin1)
    out = str(root / "out")
    manifest = build_traces("jsonl", out, options={"path": str(root / "data.jsonl"), "image_root": str(root / "images"),
                                                   "max_text_chars": 30})
    assert manifest["counts"]["rows_in"] == 9
    # traces carry no source id: name them by their line ("where" in meta)
    names = {1: "plain", 2: "unicode", 3: "nosteps", 8: "mapped"}
    rows = {names[int(json.loads(r["meta"])["where"].rsplit(" ", 1)[1])]: r for r in read_traces_table(out, "train").to_pylist()}
    assert sorted(rows) == ["mapped", "nosteps", "plain", "unicode"]
    assert rows["unicode"]["question"] == UNICODE and rows["unicode"]["answer"] == UNICODE
    assert rows["nosteps"]["steps"] == []
    rejects = {r["source_id"]: (r["reason"], r["detail"]) for r in read_rejects_table(out).to_pylist()}
    assert {k: v[0] for k, v in rejects.items()} == {"long": "text_too_long", "bell": "control_characters",
                                                     "dotdot": "image_outside_root", "data.jsonl:4": "bad_field",
                                                     "data.jsonl:9": "bad_field"}
    assert "not valid Unicode" in rejects["data.jsonl:4"][1] and "not valid Unicode" in rejects["data.jsonl:9"][1]
    assert "max_text_chars is 30" in rejects["long"][1]
