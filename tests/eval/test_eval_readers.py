"""Each reader on a small file in the real format (VLMEvalKit TSV, lmms-eval / Hugging Face Parquet, refocus traces)."""

import io
import json

import pytest
from benchfiles import (BLUE, GREEN, GREY, RED, TEN, b64, mmbench_rows, mmmu_pro_standard_rows, mmmu_pro_vision_rows,
                        mmstar_rows, mmvp_rows, pope_rows, scienceqa_rows, write_hf_parquet, write_mmbench_parquet,
                        write_mmmu_pro_parquet, write_mmstar_parquet, write_mmvp_parquet, write_pope_parquet,
                        write_refocus, write_scienceqa_parquet, write_tsv)
from PIL import Image

from lare.eval import BenchmarkFileError, MissingBenchmarkFiles, expand_circular, read_benchmark
from lare.eval.files import blank_image
from lare.eval.readers import BENCHMARKS, split_inline_options


def by_id(items):
    return {it.id: it for it in items}


def size(data: bytes):
    return Image.open(io.BytesIO(data)).size


# ---------------------------------------------------------------------------------------------
# MMBench


def test_mmbench_tsv_circular_rows_image_references_hint_and_two_options(tmp_path):
    write_tsv(tmp_path / "MMBench_DEV_EN.tsv", mmbench_rows())
    items = by_id(read_benchmark("mmbench", tmp_path))
    assert len(items) == 6  # 4 copies of a 4-option question, 2 of a 2-option one

    main, copy2 = items["mmbench/0"], items["mmbench/2000000"]
    assert main.question == "The picture was taken\tat noon.\nIt shows a park.\nWhat is the main colour of the image?"
    assert main.choices == ["red", "green", "blue", "yellow"] and main.answer == "A"
    assert copy2.choices == ["blue", "yellow", "red", "green"] and copy2.answer == "C"
    assert copy2.image == main.image == RED  # "0" in the copy's image cell is the main row's index
    assert (main.meta["circular_group"], main.meta["shift"]) == ("mmbench/0", 0)
    assert (copy2.meta["circular_group"], copy2.meta["shift"]) == ("mmbench/0", 2)
    assert main.meta["category"] == "image_scene" and main.meta["l2-category"] == "Coarse Perception"
    assert main.meta["split"] == "dev" and main.meta["source"] == "MMBench"

    two = items["mmbench/1"]
    assert two.question == "Is the square left of the circle?"  # no hint: nothing prepended
    assert two.choices == ["yes", "no"] and two.answer == "B" and two.image == GREEN
    assert items["mmbench/1000001"].choices == ["no", "yes"] and items["mmbench/1000001"].answer == "A"


def test_mmbench_parquet_reads_the_same_as_the_tsv(tmp_path):
    write_tsv(tmp_path / "tsv" / "MMBench_DEV_EN.tsv", mmbench_rows())
    write_mmbench_parquet(tmp_path / "hf" / "MMBench" / "en" / "dev-00000-of-00001.parquet")
    a, b = read_benchmark("mmbench", tmp_path / "tsv"), read_benchmark("mmbench", tmp_path / "hf")
    assert [(x.id, x.question, x.choices, x.answer, x.image) for x in a] == \
           [(x.id, x.question, x.choices, x.answer, x.image) for x in b]
    assert [x.meta for x in a] == [x.meta for x in b]  # "L2-category" and "nan" hints/options read like the TSV


def test_limit_keeps_whole_circular_groups(tmp_path):
    write_tsv(tmp_path / "MMBench_DEV_EN.tsv", mmbench_rows())
    items = read_benchmark("mmbench", tmp_path, limit=1)
    assert [it.id for it in items] == ["mmbench/0", "mmbench/1000000", "mmbench/2000000", "mmbench/3000000"]


def test_expand_circular_rotates_options_and_remaps_gold():
    from lare.eval import EvalItem

    item = EvalItem("mmbench", "q", "Which?", ["cat", "dog", "bird", "fish"], "C", RED, {"category": "x"})
    copies = expand_circular([item])
    assert [c.id for c in copies] == ["q", "q@c1", "q@c2", "q@c3"]
    assert [c.answer for c in copies] == ["C", "B", "A", "D"]
    for c in copies:  # the gold letter always points at the gold option's text
        assert c.choices["ABCD".index(c.answer)] == "bird"
        assert c.meta["circular_group"] == "q" and c.meta["category"] == "x"
    assert copies[1].choices == ["dog", "bird", "fish", "cat"]
    assert [c.meta["shift"] for c in copies] == [0, 1, 2, 3]
    assert expand_circular(copies) == copies  # already expanded: unchanged
    yes_no = EvalItem("pope", "p", "Is it?", [], "yes", RED, {})
    assert [c.id for c in expand_circular([yes_no])] == ["p"]


def test_expand_circular_keeps_the_copies_a_file_already_has(tmp_path):
    write_tsv(tmp_path / "MMBench_DEV_EN.tsv", mmbench_rows())
    items = read_benchmark("mmbench", tmp_path)
    assert [(it.id, it.answer, it.choices) for it in expand_circular(items)] == \
           [(it.id, it.answer, it.choices) for it in items]
    mains = [it for it in items if it.meta["shift"] == 0]
    regenerated = expand_circular([type(it)(**{**it.__dict__, "meta": {}}) for it in mains])
    assert sorted((it.answer, tuple(it.choices)) for it in regenerated) == \
           sorted((it.answer, tuple(it.choices)) for it in items)  # same rotations as the released copies


def test_mmbench_errors_name_file_row_and_column(tmp_path):
    with pytest.raises(MissingBenchmarkFiles, match=r"MMBench_DEV_EN\.tsv.*opencompass"):
        read_benchmark("mmbench", tmp_path)

    rows = mmbench_rows()
    rows[1]["image"] = "77"  # a reference to a row that does not exist
    write_tsv(tmp_path / "a" / "MMBench_DEV_EN.tsv", rows)
    with pytest.raises(BenchmarkFileError, match=r"MMBench_DEV_EN\.tsv row index=1000000: column 'image'"):
        read_benchmark("mmbench", tmp_path / "a")

    rows = mmbench_rows()
    rows[0]["C"] = float("nan")  # options A, B, D: a gap
    write_tsv(tmp_path / "b" / "MMBench_DEV_EN.tsv", rows)
    with pytest.raises(BenchmarkFileError, match=r"row index=0: option columns .* skip column 'C'"):
        read_benchmark("mmbench", tmp_path / "b")

    rows = mmbench_rows()
    rows[4]["answer"] = "C"  # a 2-option question
    write_tsv(tmp_path / "c" / "MMBench_DEV_EN.tsv", rows)
    with pytest.raises(BenchmarkFileError, match=r"row index=1: column 'answer': gold 'C' is not one of"):
        read_benchmark("mmbench", tmp_path / "c")

    rows = mmbench_rows()
    rows[0]["image"] = "this is not base64 of an image" * 4
    write_tsv(tmp_path / "d" / "MMBench_DEV_EN.tsv", rows)
    with pytest.raises(BenchmarkFileError, match=r"row index=0: column 'image'"):
        read_benchmark("mmbench", tmp_path / "d")


# ---------------------------------------------------------------------------------------------
# POPE


def test_pope_tsv_categories_references_and_answers(tmp_path):
    write_tsv(tmp_path / "POPE.tsv", pope_rows())
    items = by_id(read_benchmark("pope", tmp_path))
    assert len(items) == 5
    assert items["pope/0"].answer == "yes" and items["pope/1"].answer == "no"
    assert items["pope/0"].choices == [] and items["pope/0"].question == "Is there a dog in the image?"
    assert items["pope/1"].image == RED and items["pope/3"].image == GREEN  # by reference
    assert items["pope/2"].meta["categories"] == ["popular", "adversarial"]
    assert items["pope/4"].meta["categories"] == ["adversarial"]


def test_pope_parquet_lmms_eval_layouts(tmp_path):
    write_pope_parquet(tmp_path / "POPE" / "data" / "test-00000-of-00001.parquet")
    items = read_benchmark("pope", tmp_path)
    assert len(items) == 6  # one row per (question, category) in lmms-eval's file
    cats = sorted(c for it in items for c in it.meta["categories"])
    assert cats == ["adversarial", "adversarial", "popular", "popular", "random", "random"]
    assert {it.question for it in items if it.image == BLUE} == {"Is there a tree in the image?"}
    assert {"pope/popular-2", "pope/adversarial-2"} <= {it.id for it in items}  # question_id counts per category

    # The "Full" config: a file per category, no category column.
    write_hf_parquet(tmp_path / "full" / "POPE" / "Full" / "adversarial-00000-of-00001.parquet", {
        "question_id": ["1", "2"], "question": ["Is there a car?", "Is there a bus?"], "answer": ["no", "yes"],
        "image": [RED, GREEN]})
    full = read_benchmark("pope", tmp_path / "full")
    assert [(it.id, it.meta["categories"]) for it in full] == [("pope/adversarial-1", ["adversarial"]),
                                                               ("pope/adversarial-2", ["adversarial"])]


def test_pope_limit_is_per_category_and_bad_answers_fail(tmp_path):
    write_tsv(tmp_path / "POPE.tsv", pope_rows())
    items = read_benchmark("pope", tmp_path, limit=1)
    assert [it.id for it in items] == ["pope/0", "pope/2", "pope/4"]  # first of random, popular, adversarial

    rows = pope_rows()
    rows[3]["answer"] = "Maybe"
    write_tsv(tmp_path / "bad" / "POPE.tsv", rows)
    with pytest.raises(BenchmarkFileError, match=r"POPE\.tsv row index=3: column 'answer'"):
        read_benchmark("pope", tmp_path / "bad")


# ---------------------------------------------------------------------------------------------
# ScienceQA, MMVP, MMStar


def test_scienceqa_tsv_and_parquet_context_and_text_only_questions(tmp_path):
    write_tsv(tmp_path / "tsv" / "ScienceQA_TEST.tsv", scienceqa_rows())
    write_scienceqa_parquet(tmp_path / "hf" / "ScienceQA" / "ScienceQA-FULL" / "test-00000-of-00001.parquet")
    for root in (tmp_path / "tsv", tmp_path / "hf"):
        items = read_benchmark("scienceqa", root)
        assert [it.answer for it in items] == ["B", "B", "B"]
        assert items[0].question == "Context: Look at the animals.\nWhich animal is a mammal?"
        assert items[1].question == "Which word is a noun?" and items[1].choices == ["run", "table"]
        assert [it.meta["has_image"] for it in items] == [True, False, True]
        assert items[1].image == blank_image() and items[0].image == RED
        assert items[2].meta["subject"] == "social science"
    # VAL is the fallback file name when TEST is absent
    write_tsv(tmp_path / "val" / "ScienceQA_VAL.tsv", scienceqa_rows())
    assert len(read_benchmark("scienceqa", tmp_path / "val")) == 3


def test_mmvp_pairs_follow_the_index_in_both_formats(tmp_path):
    write_tsv(tmp_path / "tsv" / "MMVP.tsv", mmvp_rows())
    write_mmvp_parquet(tmp_path / "hf" / "MMVP" / "data" / "train-00000-of-00001.parquet")
    for root in (tmp_path / "tsv", tmp_path / "hf"):
        items = read_benchmark("mmvp", root)
        assert [(it.id, it.answer, it.meta["pair"]) for it in items] == [
            ("mmvp/1", "A", "mmvp/pair0"), ("mmvp/2", "B", "mmvp/pair0"),
            ("mmvp/3", "B", "mmvp/pair1"), ("mmvp/4", "A", "mmvp/pair1")]
        assert items[0].choices == ["Open", "Closed"] and items[2].image == BLUE
    assert [it.id for it in read_benchmark("mmvp", tmp_path / "tsv", limit=1)] == ["mmvp/1", "mmvp/2"]

    rows = mmvp_rows()
    rows[0]["question"] = "Something else?"  # index 3, paired with index 4
    write_tsv(tmp_path / "bad" / "MMVP.tsv", rows)
    with pytest.raises(BenchmarkFileError, match=r"index=3 and index=4 should form an MMVP pair"):
        read_benchmark("mmvp", tmp_path / "bad")


def test_split_inline_options_keeps_commas_inside_options():
    q = "What is it?\nOptions: A: a cat, a dog, B: a bird., C: 3,5, D: none"
    assert split_inline_options(q) == ("What is it?", ["a cat, a dog", "a bird.", "3,5", "none"])
    assert split_inline_options("What is it?") is None


def test_mmstar_columns_and_inline_options_read_alike(tmp_path):
    write_tsv(tmp_path / "tsv" / "MMStar.tsv", mmstar_rows())
    write_mmstar_parquet(tmp_path / "hf" / "MMStar" / "mmstar.parquet")
    a, b = read_benchmark("mmstar", tmp_path / "tsv"), read_benchmark("mmstar", tmp_path / "hf")
    for items in (a, b):
        assert items[0].question == "Which option describe the object relationship in the image correctly?"
        assert items[0].choices[2] == "The cat, the dog and the book." and len(items[0].choices) == 4
        assert [it.answer for it in items] == ["A", "C"]
        assert items[1].meta["category"] == "fine-grained perception"
        assert items[1].meta["l2-category"] == "object counting"
    assert [x.choices for x in a] == [x.choices for x in b]


# ---------------------------------------------------------------------------------------------
# MMMU-Pro


def test_mmmu_pro_standard_and_vision_tsv(tmp_path):
    write_tsv(tmp_path / "MMMU_Pro_10c.tsv", mmmu_pro_standard_rows())
    write_tsv(tmp_path / "MMMU_Pro_V.tsv", mmmu_pro_vision_rows())
    items = by_id(read_benchmark("mmmu_pro", tmp_path))
    std, vis = items["mmmu_pro/standard/0"], items["mmmu_pro/vision/0"]
    assert std.choices == TEN and std.answer == "C" and std.meta["setting"] == "standard"
    assert size(std.image) == (12 + 8 + 20, 16)  # two images stitched side by side
    assert vis.choices == [] and vis.meta["options"] == TEN and vis.answer == "B"  # options only in the image
    assert vis.question.startswith("Answer the following multiple-choice question in the image")
    assert vis.meta["subject"] == "Math"
    assert len(read_benchmark("mmmu_pro", tmp_path, limit=1)) == 2  # one per setting


def test_mmmu_pro_parquet_picks_the_images_the_question_names(tmp_path):
    write_mmmu_pro_parquet(tmp_path / "MMMU_Pro")
    items = by_id(read_benchmark("mmmu_pro", tmp_path))
    assert len(items) == 6
    std = items["mmmu_pro/standard/validation_Math_1"]
    assert std.choices == TEN and std.answer == "C" and size(std.image) == (40, 16)
    assert size(items["mmmu_pro/standard/validation_Art_2"].image) == (12, 8)
    assert items["mmmu_pro/vision/test_Art_2"].answer == "D" and items["mmmu_pro/vision/test_Art_2"].image == BLUE

    only_standard = tmp_path / "std"
    write_tsv(only_standard / "MMMU_Pro_10c.tsv", mmmu_pro_standard_rows())
    assert {it.meta["setting"] for it in read_benchmark("mmmu_pro", only_standard)} == {"standard"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingBenchmarkFiles, match=r"MMMU_Pro_10c\.tsv.*MMMU_Pro_V\.tsv.*MMMU/MMMU_Pro"):
        read_benchmark("mmmu_pro", tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# refocus, records, registry


def test_refocus_reads_test_and_hard_keeps_family_and_drops_other_sources(tmp_path):
    write_refocus(tmp_path)
    items = by_id(read_benchmark("refocus", tmp_path))
    assert sorted(items) == ["h-cnt", "h-exi", "r-att", "r-cnt", "r-exi", "r-mc"]
    mc = items["r-mc"]
    assert mc.choices == ["green", "blue", "red", "white"] and mc.answer == "blue" and mc.meta["answer_letter"] == "B"
    assert items["r-exi"].meta["pope_type"] == "adversarial" and items["r-exi"].meta["family"] == "existence"
    assert items["h-cnt"].meta["split"] == "hard" and items["r-cnt"].meta["split"] == "test"
    assert "objects" not in items["r-att"].meta
    # the trace's boxes stay, for the crop oracle (the gold_boxes ablation)
    assert [[round(v, 4) for v in b] for b in items["r-att"].meta["step_boxes"]] == [[0.1, 0.1, 0.5, 0.5]]
    assert items["r-att"].image == RED
    assert len(read_benchmark("refocus", tmp_path / "refocus" / "hard")) == 2  # a folder of one split
    assert [it.id for it in read_benchmark("refocus", tmp_path, limit=1)] == ["r-cnt", "h-cnt"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingBenchmarkFiles, match=r"refocus/\{test,hard\}/\*\.parquet"):
        read_benchmark("refocus", tmp_path / "empty")


def test_to_record_is_a_trace_record_the_model_accepts(tmp_path):
    from lare.batch import example_from_record

    write_tsv(tmp_path / "MMBench_DEV_EN.tsv", mmbench_rows())
    write_refocus(tmp_path)
    for item in read_benchmark("mmbench", tmp_path)[:2] + read_benchmark("refocus", tmp_path)[:2]:
        rec = item.to_record()
        ex = example_from_record(rec, max_steps=4, source=item.benchmark)
        assert ex.id == item.id and ex.choices == item.choices and ex.answer == item.answer and ex.steps == []
        assert ex.image.size == (12, 8)
        assert ex.meta == json.loads(rec["meta"]) == item.meta


def test_unknown_benchmark_and_missing_root_are_clear(tmp_path):
    with pytest.raises(KeyError, match="unknown benchmark 'mme'"):
        read_benchmark("mme", tmp_path)
    with pytest.raises(MissingBenchmarkFiles, match="does not exist"):
        read_benchmark("pope", tmp_path / "nope")
    assert {"refocus", "pope", "mmbench", "scienceqa", "mmvp", "mmstar", "mmmu_pro"} <= set(BENCHMARKS)


def test_duplicate_ids_are_refused(tmp_path):
    rows = pope_rows()
    rows.append(dict(rows[0], image=b64(GREY)))
    write_tsv(tmp_path / "POPE.tsv", rows)
    with pytest.raises(BenchmarkFileError, match="same id 'pope/0'"):
        read_benchmark("pope", tmp_path)
