"""Scores per benchmark, as the harnesses compute them.

    metrics = score("pope", items, predictions)   # predictions: {item id: the model's raw generated text}

Every scorer returns a dict: accuracies and rates in [0, 100], counts as ints, groups nested under "by_<field>",
plus `benchmark`, `protocol` (the harness convention followed, in words), `primary` (the key of the headline
number) and `missing` (items without a prediction: they count as wrong). `flatten_metrics` turns it into
"a/b/c" -> float pairs for a tracker. `item_results` gives the per-item reading (parsed answer, right or wrong).

Harnesses differ (docs/benchmarks.md has the details); what is implemented, per benchmark, is PROTOCOLS[name].
Answers are read from free text by lare.eval.extract, rule-based: no LLM judge, no random fallback.
"""

from __future__ import annotations

from collections import defaultdict

from lare.eval.extract import LETTERS, answer_span, extract_choice, extract_yes_no, normalize_answer
from lare.eval.readers import EvalItem

PROTOCOLS = {
    "pope": "VLMEvalKit POPE_rating: accuracy, precision, recall and F1 with 'yes' as the positive class, per "
            "category (random, popular, adversarial) and over all question-category pairs (a question shared by "
            "several categories counts in each); plus LLaVA eval_pope's yes-ratio (share of replies read as yes). "
            "Replies read by extract_yes_no (LLaVA first-sentence rule; a reply that is neither counts as wrong "
            "and as not-yes, VLMEvalKit's 'Unknown').",
    "mmbench": "VLMEvalKit MMBench CircularEval, exact-matching mode (no GPT judge): a question is right only if "
               "every circular copy (options rotated) is answered right; accuracy over questions, per category "
               "and l2-category. Vanilla accuracy (copy 0 only, VLMEvalKit's PRINT_VANILLA 'vanilla_0') alongside. "
               "Letters read by extract_choice.",
    "scienceqa": "VLMEvalKit / lmms-eval multiple-choice accuracy (option letter read by extract_choice); overall "
                 "and on the image subset (ScienceQA-IMG, the number papers report).",
    "mmvp": "MMVP pair accuracy as in VLMEvalKit report_acc_MMVP and lmms-eval: a pair (two images, same question) "
            "counts only when both are right; per-question accuracy alongside.",
    "mmstar": "VLMEvalKit multiple-choice accuracy (report_acc): overall (micro), per category and l2-category; "
              "lmms-eval's macro average over l2-categories alongside.",
    "mmmu_pro": "MMMU-Pro as its paper and lmms-eval report it: accuracy on the standard setting (10 options) and "
                "on the vision setting (question and options only in the screenshot); the MMMU-Pro score is their "
                "mean. Letters read by extract_choice (no random guess for unreadable replies, unlike MMMU's parser).",
    "refocus": "This project's refocus benchmark: exact match after normalize_answer for open answers, the POPE "
               "reading (extract_yes_no) for yes/no answers, option letter or option text (extract_choice) for "
               "multiple choice; accuracy overall, per question family and per split (test, hard).",
}
PROTOCOLS["scienceqa_val"] = PROTOCOLS["scienceqa"]


def _pct(hits: int, n: int) -> float:
    return 100.0 * hits / n if n else 0.0


def _options(item: EvalItem) -> list[str]:
    """The options an answer is matched against; MMMU-Pro vision shows them only in the image."""
    return item.choices or item.meta.get("options", [])


def judge(item: EvalItem, text: str | None) -> tuple[str | None, bool]:
    """(what the reply was read as, whether that is right) for one item of any benchmark."""
    if text is None:
        return None, False
    if item.benchmark == "pope":
        parsed = extract_yes_no(text)
        return parsed, parsed == item.answer
    if item.benchmark == "refocus":
        if item.choices:
            parsed = extract_choice(text, item.choices)
            gold = item.meta.get("answer_letter") or LETTERS[item.choices.index(item.answer)]
            return parsed, parsed == gold
        gold = normalize_answer(item.answer)
        if gold in ("yes", "no"):
            parsed = extract_yes_no(text)
        else:
            parsed = normalize_answer(answer_span(text))
        return parsed, parsed == gold
    parsed = extract_choice(text, _options(item))
    return parsed, parsed == item.answer


def item_results(items: list[EvalItem], predictions: dict[str, str]) -> list[dict]:
    """Per item: id, the raw prediction (None if missing), what it was read as, and whether it is right."""
    rows = []
    for it in items:
        raw = predictions.get(it.id)
        parsed, correct = judge(it, raw)
        rows.append({"id": it.id, "prediction": raw, "parsed": parsed, "answer": it.answer, "correct": correct})
    return rows


def _judged(items, predictions):
    if not items:
        raise ValueError("no items to score")
    results = item_results(items, predictions)
    missing = sum(r["prediction"] is None for r in results)
    unparsed = sum(r["prediction"] is not None and r["parsed"] is None for r in results)
    return [r["correct"] for r in results], [r["parsed"] for r in results], missing, unparsed


def _header(benchmark: str, primary: str, n: int, missing: int, unparsed: int) -> dict:
    return {"benchmark": benchmark, "protocol": PROTOCOLS[benchmark], "primary": primary, "n": n,
            "missing": missing, "unparsed": unparsed}


def _acc_by(items, hits, key: str) -> dict:
    """{value of meta[key]: {"acc", "n"}} over the items that have that key."""
    groups = defaultdict(list)
    for it, h in zip(items, hits):
        if key in it.meta:
            groups[str(it.meta[key])].append(h)
    return {k: {"acc": _pct(sum(v), len(v)), "n": len(v)} for k, v in sorted(groups.items())}


# ---------------------------------------------------------------------------------------------


def _yes_no_block(golds: list[str], preds: list[str | None]) -> dict:
    tp = sum(g == "yes" and p == "yes" for g, p in zip(golds, preds))
    fp = sum(g == "no" and p == "yes" for g, p in zip(golds, preds))
    fn = sum(g == "yes" and p != "yes" for g, p in zip(golds, preds))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"acc": _pct(sum(g == p for g, p in zip(golds, preds)), len(golds)), "precision": 100 * precision,
            "recall": 100 * recall, "f1": 100 * f1, "yes_ratio": _pct(sum(p == "yes" for p in preds), len(preds)),
            "n": len(golds), "unparsed": sum(p is None for p in preds)}


def score_pope(items: list[EvalItem], predictions: dict[str, str]) -> dict:
    _, parsed, missing, unparsed = _judged(items, predictions)
    pairs = [(cat, it.answer, p) for it, p in zip(items, parsed) for cat in it.meta.get("categories", ["all"])]
    out = _header("pope", "f1", len(items), missing, unparsed)
    out.update({k: v for k, v in _yes_no_block([g for _, g, _ in pairs], [p for _, _, p in pairs]).items()
                if k not in ("n", "unparsed")})
    out["n_pairs"] = len(pairs)
    by = defaultdict(lambda: ([], []))
    for cat, g, p in pairs:
        by[cat][0].append(g)
        by[cat][1].append(p)
    out["by_category"] = {cat: _yes_no_block(g, p) for cat, (g, p) in sorted(by.items())}
    # LLaVA-1.5 and most papers report POPE as the mean over the three categories.
    out["f1_mean"] = sum(b["f1"] for b in out["by_category"].values()) / len(out["by_category"])
    out["acc_mean"] = sum(b["acc"] for b in out["by_category"].values()) / len(out["by_category"])
    return out


def score_mmbench(items: list[EvalItem], predictions: dict[str, str]) -> dict:
    hits, _, missing, unparsed = _judged(items, predictions)
    groups = defaultdict(list)
    for it, h in zip(items, hits):
        groups[it.meta.get("circular_group", it.id)].append((it, h))
    mains, group_hits, not_expanded = [], [], 0
    for members in groups.values():
        main = min(members, key=lambda m: m[0].meta.get("shift", 0))[0]
        mains.append(main)
        group_hits.append(all(h for _, h in members))
        not_expanded += len(members) < len(main.choices)
    vanilla = [h for it, h in zip(items, hits) if it.meta.get("shift", 0) == 0]
    out = _header("mmbench", "circular_acc", len(items), missing, unparsed)
    out.update({
        "circular_acc": _pct(sum(group_hits), len(group_hits)),
        "vanilla_acc": _pct(sum(vanilla), len(vanilla)),
        "vanilla_all_acc": _pct(sum(hits), len(hits)),
        "n_questions": len(groups),
        "groups_not_expanded": not_expanded,  # fewer copies than options: circular = vanilla for those
        "by_category": _acc_by(mains, group_hits, "category"),
        "by_l2-category": _acc_by(mains, group_hits, "l2-category"),
    })
    return out


def score_scienceqa(items: list[EvalItem], predictions: dict[str, str]) -> dict:
    hits, _, missing, unparsed = _judged(items, predictions)
    img = [h for it, h in zip(items, hits) if it.meta.get("has_image", True)]
    out = _header("scienceqa", "img_acc", len(items), missing, unparsed)
    out.update({"acc": _pct(sum(hits), len(hits)), "img_acc": _pct(sum(img), len(img)), "n_img": len(img)})
    for key in ("subject", "category"):
        if any(key in it.meta for it in items):
            out[f"by_{key}"] = _acc_by(items, hits, key)
    return out


def score_mmvp(items: list[EvalItem], predictions: dict[str, str]) -> dict:
    hits, _, missing, unparsed = _judged(items, predictions)
    pairs = defaultdict(list)
    for it, h in zip(items, hits):
        pairs[it.meta.get("pair", it.id)].append(h)
    complete = [all(v) for v in pairs.values() if len(v) == 2]
    out = _header("mmvp", "pair_acc", len(items), missing, unparsed)
    out.update({"pair_acc": _pct(sum(complete), len(complete)), "acc": _pct(sum(hits), len(hits)),
                "n_pairs": len(complete), "incomplete_pairs": sum(len(v) != 2 for v in pairs.values())})
    return out


def score_mmstar(items: list[EvalItem], predictions: dict[str, str]) -> dict:
    hits, _, missing, unparsed = _judged(items, predictions)
    out = _header("mmstar", "acc", len(items), missing, unparsed)
    out["acc"] = _pct(sum(hits), len(hits))
    out["by_category"] = _acc_by(items, hits, "category")
    out["by_l2-category"] = _acc_by(items, hits, "l2-category")
    if out["by_l2-category"]:
        out["macro_l2_acc"] = sum(g["acc"] for g in out["by_l2-category"].values()) / len(out["by_l2-category"])
    return out


def score_mmmu_pro(items: list[EvalItem], predictions: dict[str, str]) -> dict:
    hits, _, missing, unparsed = _judged(items, predictions)
    out = _header("mmmu_pro", "overall", len(items), missing, unparsed)
    for setting in ("standard", "vision"):
        part = [(it, h) for it, h in zip(items, hits) if it.meta.get("setting") == setting]
        if part:
            out[f"{setting}_acc"] = _pct(sum(h for _, h in part), len(part))
            out[f"n_{setting}"] = len(part)
            out[f"{setting}_by_subject"] = _acc_by([it for it, _ in part], [h for _, h in part], "subject")
    if "standard_acc" not in out and "vision_acc" not in out:
        raise ValueError("mmmu_pro items need meta['setting'] = 'standard' or 'vision' (read_benchmark sets it)")
    if "standard_acc" in out and "vision_acc" in out:
        out["overall"] = (out["standard_acc"] + out["vision_acc"]) / 2
    else:  # the MMMU-Pro score needs both settings; report what there is and say what is not
        out["settings_missing"] = [s for s in ("standard", "vision") if f"{s}_acc" not in out]
        out["primary"] = "standard_acc" if "standard_acc" in out else "vision_acc"
    return out


def score_refocus(items: list[EvalItem], predictions: dict[str, str]) -> dict:
    hits, _, missing, unparsed = _judged(items, predictions)
    out = _header("refocus", "acc", len(items), missing, unparsed)
    out["acc"] = _pct(sum(hits), len(hits))
    out["by_family"] = _acc_by(items, hits, "family")
    out["by_split"] = {}
    for split in sorted({str(it.meta.get("split", "")) for it in items}):
        part = [(it, h) for it, h in zip(items, hits) if str(it.meta.get("split", "")) == split]
        sub_items, sub_hits = [it for it, _ in part], [h for _, h in part]
        out["by_split"][split] = {"acc": _pct(sum(sub_hits), len(sub_hits)), "n": len(part),
                                  "by_family": _acc_by(sub_items, sub_hits, "family")}
    existence = [(it, h) for it, h in zip(items, hits) if it.meta.get("family") == "existence"]
    if existence:
        out["existence_by_pope_type"] = _acc_by([it for it, _ in existence], [h for _, h in existence], "pope_type")
    return out


SCORERS = {"pope": score_pope, "mmbench": score_mmbench, "scienceqa": score_scienceqa,
           "scienceqa_val": score_scienceqa, "mmvp": score_mmvp, "mmstar": score_mmstar,
           "mmmu_pro": score_mmmu_pro, "refocus": score_refocus}


def score(benchmark: str, items: list[EvalItem], predictions: dict[str, str]) -> dict:
    if benchmark not in SCORERS:
        raise KeyError(f"no scorer for benchmark {benchmark!r}; known: {sorted(SCORERS)}")
    return SCORERS[benchmark](items, predictions)


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves as {"by_category/random/f1": 87.1, ...} (strings and lists are left out)."""
    flat = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten_metrics(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[key] = float(v)
    return flat
