"""Each scorer on cases whose numbers were worked out by hand."""

import pytest
from benchfiles import (RED, mmbench_rows, mmmu_pro_standard_rows, mmmu_pro_vision_rows, mmstar_rows, mmvp_rows,
                        pope_rows, scienceqa_rows, write_refocus, write_tsv)

from lare.eval import EvalItem, expand_circular, flatten_metrics, item_results, read_benchmark, score
from lare.eval.scoring import PROTOCOLS, SCORERS, judge, score_mmbench, score_pope


def item(bench, iid, answer, choices=(), **meta):
    return EvalItem(bench, iid, f"question {iid}?", list(choices), answer, RED, meta)


def test_pope_confusion_matrix_by_hand():
    items = [
        item("pope", "r1", "yes", categories=["random"]), item("pope", "r2", "yes", categories=["random"]),
        item("pope", "r3", "yes", categories=["random"]), item("pope", "r4", "no", categories=["random"]),
        item("pope", "r5", "no", categories=["random"]), item("pope", "r6", "no", categories=["random"]),
        item("pope", "p1", "yes", categories=["popular"]), item("pope", "p2", "no", categories=["popular"]),
        item("pope", "s", "no", categories=["popular", "adversarial"]),  # one question in two splits
        item("pope", "a1", "yes", categories=["adversarial"]),
    ]
    preds = {"r1": "Yes", "r2": "Answer: yes, there is", "r3": "No", "r4": "Yes", "r5": "no.",
             "r6": "There is a cat.",  # neither yes nor no: wrong, and not a yes
             "p1": "Yes", "p2": "No, there is not.", "s": "Yes, there is a car."}  # a1: no prediction
    m = score_pope(items, preds)
    # random: TP 2 (r1 r2), FN 1 (r3), FP 1 (r4), TN 1 (r5), r6 unread -> acc 3/6, P 2/3, R 2/3, yes 3/6
    r = m["by_category"]["random"]
    assert r["acc"] == pytest.approx(50.0) and r["precision"] == pytest.approx(200 / 3)
    assert r["recall"] == pytest.approx(200 / 3) and r["f1"] == pytest.approx(200 / 3)
    assert r["yes_ratio"] == pytest.approx(50.0) and r["n"] == 6 and r["unparsed"] == 1
    # popular: TP p1, TN p2, FP s -> acc 2/3, P 1/2, R 1/1, F1 2/3, yes 2/3
    p = m["by_category"]["popular"]
    assert (p["acc"], p["precision"], p["recall"]) == (pytest.approx(200 / 3), 50.0, 100.0)
    assert p["f1"] == pytest.approx(200 / 3) and p["yes_ratio"] == pytest.approx(200 / 3)
    # adversarial: FP s, FN a1 (missing) -> everything 0, yes 1/2
    a = m["by_category"]["adversarial"]
    assert (a["acc"], a["precision"], a["recall"], a["f1"], a["yes_ratio"]) == (0.0, 0.0, 0.0, 0.0, 50.0)
    # overall over the 11 question-category pairs: TP 3, FP 3, FN 2, right 5, yes 6
    assert m["n"] == 10 and m["n_pairs"] == 11 and m["missing"] == 1 and m["unparsed"] == 1
    assert m["acc"] == pytest.approx(500 / 11) and m["precision"] == pytest.approx(50.0)
    assert m["recall"] == pytest.approx(60.0) and m["f1"] == pytest.approx(600 / 11)
    assert m["yes_ratio"] == pytest.approx(600 / 11)
    assert m["f1_mean"] == pytest.approx((200 / 3 + 200 / 3 + 0) / 3)
    assert m["acc_mean"] == pytest.approx((50 + 200 / 3 + 0) / 3)
    assert m["primary"] == "f1" and "POPE_rating" in m["protocol"]


def _mmbench_groups():
    q1 = item("mmbench", "q1", "A", ["red", "green", "blue", "yellow"], category="scene", **{"l2-category": "CP"})
    q2 = item("mmbench", "q2", "C", ["one", "two", "three", "four"], category="count", **{"l2-category": "FP"})
    return expand_circular([q1, q2])


def _right(it):
    return f"Answer: {it.answer}"


def _wrong(it):
    return "Answer: " + next(L for L in "ABCD" if L != it.answer)


def test_mmbench_circular_one_question_right_everywhere_one_wrong_in_one_shift():
    items = _mmbench_groups()
    forms = [lambda it: it.answer, lambda it: f"({it.answer})", lambda it: f"The answer is {it.answer}.",
             lambda it: it.choices["ABCD".index(it.answer)]]  # every way of saying it, including the option text
    preds = {it.id: forms[it.meta["shift"]](it) for it in items}
    q2_shift2 = next(it for it in items if it.meta["circular_group"] == "q2" and it.meta["shift"] == 2)
    preds[q2_shift2.id] = _wrong(q2_shift2)
    m = score_mmbench(items, preds)
    assert m["circular_acc"] == 50.0           # q2 fails one copy, so q2 is wrong
    assert m["vanilla_acc"] == 100.0           # both copy-0 answers are right
    assert m["vanilla_all_acc"] == 87.5        # 7 of 8 copies
    assert m["by_category"] == {"count": {"acc": 0.0, "n": 1}, "scene": {"acc": 100.0, "n": 1}}
    assert m["by_l2-category"]["CP"]["acc"] == 100.0 and m["by_l2-category"]["FP"]["acc"] == 0.0
    assert (m["n"], m["n_questions"], m["groups_not_expanded"], m["primary"]) == (8, 2, 0, "circular_acc")

    preds = {it.id: _right(it) for it in items}
    q2_shift0 = next(it for it in items if it.id == "q2")
    preds[q2_shift0.id] = _wrong(q2_shift0)
    m = score_mmbench(items, preds)
    assert (m["circular_acc"], m["vanilla_acc"]) == (50.0, 50.0)  # vanilla reads copy 0 only

    del preds["q1@c3"]
    m = score_mmbench(items, preds)
    assert m["circular_acc"] == 0.0 and m["missing"] == 1  # a missing copy fails its question


def test_mmbench_without_expansion_says_so():
    items = [item("mmbench", "q1", "A", ["x", "y"])]
    m = score_mmbench(items, {"q1": "A"})
    assert m["circular_acc"] == m["vanilla_acc"] == 100.0 and m["groups_not_expanded"] == 1


def test_scienceqa_accuracy_and_image_subset():
    items = [item("scienceqa", "i1", "B", ["x", "y"], has_image=True),
             item("scienceqa", "t1", "A", ["x", "y"], has_image=False),
             item("scienceqa", "i2", "C", ["x", "y", "z"], has_image=True)]
    m = score("scienceqa", items, {"i1": "B.", "t1": "x", "i2": "A"})
    assert m["acc"] == pytest.approx(200 / 3) and m["img_acc"] == 50.0 and m["n_img"] == 2
    assert m["primary"] == "img_acc"


def test_mmvp_pairs_count_only_when_both_are_right():
    items = [item("mmvp", f"m{i}", "AB"[i % 2], ["left", "right"], pair=f"p{i // 2}") for i in range(6)]
    preds = {"m0": "A", "m1": "B",            # pair 0: both right
             "m2": "A", "m3": "A",            # pair 1: one wrong
             "m4": "right", "m5": "left"}     # pair 2: both wrong (option texts, swapped)
    m = score("mmvp", items, preds)
    assert m["pair_acc"] == pytest.approx(100 / 3) and m["acc"] == 50.0
    assert m["n_pairs"] == 3 and m["incomplete_pairs"] == 0
    m = score("mmvp", items[:5], preds)  # pair 2 lost a member: it is not a pair any more
    assert m["n_pairs"] == 2 and m["incomplete_pairs"] == 1 and m["pair_acc"] == 50.0


def test_mmstar_per_category_and_l2():
    kw = lambda c, l2: {"category": c, "l2-category": l2}  # noqa: E731
    items = [item("mmstar", "1", "A", "wxyz", **kw("c1", "a")), item("mmstar", "2", "B", "wxyz", **kw("c1", "a")),
             item("mmstar", "3", "C", "wxyz", **kw("c1", "b")), item("mmstar", "4", "D", "wxyz", **kw("c2", "c"))]
    m = score("mmstar", items, {"1": "A", "2": "x", "3": "D", "4": "(D)"})
    assert m["acc"] == 75.0
    assert m["by_category"]["c1"]["acc"] == pytest.approx(200 / 3) and m["by_category"]["c2"]["acc"] == 100.0
    assert {k: v["acc"] for k, v in m["by_l2-category"].items()} == {"a": 100.0, "b": 0.0, "c": 100.0}
    assert m["macro_l2_acc"] == pytest.approx(200 / 3)


def test_mmmu_pro_is_the_mean_of_standard_and_vision():
    ten = [f"choice {i}" for i in range(10)]
    std = [item("mmmu_pro", "s1", "C", ten, setting="standard", subject="Math"),
           item("mmmu_pro", "s2", "J", ten, setting="standard", subject="Art")]
    vis = [item("mmmu_pro", f"v{i}", a, [], setting="vision", options=[""] * 10, subject="Art")
           for i, a in enumerate("BADE")]
    preds = {"s1": "C", "s2": "I", "v0": "B", "v1": "Answer: A", "v2": "(d)", "v3": "F"}
    m = score("mmmu_pro", std + vis, preds)
    assert (m["standard_acc"], m["vision_acc"], m["overall"]) == (50.0, 75.0, 62.5)
    assert m["standard_by_subject"]["Math"]["acc"] == 100.0 and m["primary"] == "overall"
    m = score("mmmu_pro", std, preds)
    assert "overall" not in m and m["settings_missing"] == ["vision"] and m["primary"] == "standard_acc"


def test_refocus_per_family_and_split(tmp_path):
    items = read_benchmark("refocus", write_refocus(tmp_path))
    preds = {"r-cnt": "Find the blue shapes.\nAnswer: Two.", "r-att": "Answer: Red.", "r-exi": "No, there is none.",
             "r-mc": "Answer: C",                  # wrong: the gold is option B, "blue"
             "h-cnt": "There are 3"}               # exact match after normalisation: wrong; h-exi missing
    m = score("refocus", items, preds)
    assert m["acc"] == 50.0 and m["missing"] == 1
    assert {k: v["acc"] for k, v in m["by_family"].items()} == {
        "attribute": 100.0, "counting": 50.0, "existence": 50.0, "multiple_choice": 0.0}
    assert m["by_split"]["test"]["acc"] == 75.0 and m["by_split"]["hard"]["acc"] == 0.0
    assert m["by_split"]["hard"]["by_family"]["counting"] == {"acc": 0.0, "n": 1}
    assert m["existence_by_pope_type"] == {"adversarial": {"acc": 100.0, "n": 1}, "random": {"acc": 0.0, "n": 1}}
    mc = next(it for it in items if it.id == "r-mc")
    assert judge(mc, "B")[1] and judge(mc, "blue")[1] and judge(mc, "Answer: (b) blue")[1] and not judge(mc, "red")[1]


@pytest.mark.parametrize("name, write", [
    ("mmbench", lambda d: write_tsv(d / "MMBench_DEV_EN.tsv", mmbench_rows())),
    ("pope", lambda d: write_tsv(d / "POPE.tsv", pope_rows())),
    ("scienceqa", lambda d: write_tsv(d / "ScienceQA_TEST.tsv", scienceqa_rows())),
    ("mmvp", lambda d: write_tsv(d / "MMVP.tsv", mmvp_rows())),
    ("mmstar", lambda d: write_tsv(d / "MMStar.tsv", mmstar_rows())),
    ("mmmu_pro", lambda d: (write_tsv(d / "MMMU_Pro_10c.tsv", mmmu_pro_standard_rows()),
                            write_tsv(d / "MMMU_Pro_V.tsv", mmmu_pro_vision_rows()))),
    ("refocus", write_refocus),
])
def test_read_then_score_gold_replies_score_100_and_silence_scores_0(tmp_path, name, write):
    write(tmp_path)
    items = read_benchmark(name, tmp_path)
    gold = {it.id: f"Let me look.\nAnswer: {it.answer}" for it in items}
    m = score(name, items, gold)
    assert m[m["primary"]] == 100.0 and m["missing"] == 0 and m["unparsed"] == 0
    m = score(name, items, {})
    assert m[m["primary"]] == 0.0 and m["missing"] == len(items)
    assert all(v == 0.0 for k, v in flatten_metrics(m).items() if k.endswith("acc"))


def test_item_results_flatten_and_dispatch():
    items = [item("pope", "x", "yes", categories=["random"])]
    assert item_results(items, {"x": "Yes, there is."}) == [
        {"id": "x", "prediction": "Yes, there is.", "parsed": "yes", "answer": "yes", "correct": True}]
    flat = flatten_metrics(score("pope", items, {"x": "yes"}))
    assert flat["by_category/random/f1"] == 100.0 and "protocol" not in flat and flat["n"] == 1.0
    assert set(SCORERS) <= set(PROTOCOLS)
    with pytest.raises(KeyError, match="no scorer"):
        score("mme", items, {})
    with pytest.raises(ValueError, match="no items"):
        score("pope", [], {})
