"""From prediction rows to results: scores per benchmark, token means, tables and MLflow.

One results row per model x ablation x benchmark:

    model, paradigm, ablation, benchmark, protocol, primary, accuracy (= metrics[primary]), n, missing, unparsed,
    tokens {visual, prompt_text, latent, generated, crop_visual, total, inference}, latency_s, metrics (the full
    scoring dict of lare.eval.scoring), grounding {box_iou, box_hit, focus_in_box, focus_chance, rows}: where the
    answers looked against their traces' boxes (lare.eval.grounding; NaN where it does not apply)

`inference` tokens are the positions a paradigm adds after the prompt (latent + generated + crop_visual): the
prompt is the same for every paradigm, so this is where they differ, and what the paper's "inference tokens" count.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from lare.eval.grounding import mean_grounding
from lare.eval.readers import EvalItem
from lare.eval.scoring import PROTOCOLS, flatten_metrics, item_results, score
from lare.model import TOKEN_KEYS

TOKEN_SUMMARY = (*TOKEN_KEYS, "inference")
INFERENCE_KEYS = ("latent", "generated", "crop_visual")  # what a paradigm spends beyond the shared prompt
TABLE_COLUMNS = ("benchmark", "model", "paradigm", "ablation", "primary", "accuracy", "n", "missing", "unparsed",
                 *(f"tokens_{k}" for k in TOKEN_SUMMARY), "latency_ms", "box_iou", "focus_in_box", "focus_chance")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarize(label: str, paradigm: str, items_by_bench: dict[str, list[EvalItem]], rows: list[dict]
              ) -> tuple[list[dict], list[dict]]:
    """(results rows, per-item prediction rows) of one model: every benchmark x every ablation in `rows`."""
    by_key: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        by_key.setdefault((r["benchmark"], r["ablation"]), {})[r["id"]] = r
    ablations = list(dict.fromkeys(r["ablation"] for r in rows))
    results, predictions = [], []
    for bench, items in items_by_bench.items():
        for ablation in ablations:
            got = by_key.get((bench, ablation), {})
            texts = {i: r["text"] for i, r in got.items()}
            metrics = score(bench, items, texts)
            answered = list(got.values())
            tokens = {k: _mean([r[f"tok_{k}"] for r in answered]) for k in TOKEN_KEYS}
            tokens["inference"] = _mean([sum(r[f"tok_{k}"] for k in INFERENCE_KEYS) for r in answered])
            results.append({
                "model": label, "paradigm": paradigm, "ablation": ablation, "benchmark": bench,
                "protocol": metrics["protocol"], "primary": metrics["primary"], "accuracy": metrics[metrics["primary"]],
                "n": metrics["n"], "missing": metrics["missing"], "unparsed": metrics["unparsed"],
                "tokens": tokens, "latency_s": _mean([r["latency_s"] for r in answered]), "metrics": metrics,
                "grounding": mean_grounding([_grounding(r) for r in answered])})
            for it, judged in zip(items, item_results(items, texts)):
                r = got.get(it.id)
                predictions.append({
                    "model": label, "paradigm": paradigm, "ablation": ablation, "benchmark": bench, "id": it.id,
                    "question": it.question, "choices": it.choices, "gold": it.answer,
                    "prediction": judged["prediction"], "extracted": r["answer"] if r else None,
                    "parsed": judged["parsed"], "correct": judged["correct"],
                    "tokens": {k: r[f"tok_{k}"] for k in TOKEN_KEYS} if r else None,
                    "crop_boxes": json.loads(r["boxes"]) if r else None,
                    "grounding": _grounding(r) if r else None,
                    "latency_s": r["latency_s"] if r else None})
    return results, predictions


def _grounding(row: dict) -> dict | None:
    text = row.get("grounding") or ""
    return json.loads(text) if text else None


def table_rows(results: list[dict]) -> list[dict]:
    """The flat headline table (one dict per results row, TABLE_COLUMNS)."""
    out = []
    for r in results:
        row = {k: r[k] for k in ("benchmark", "model", "paradigm", "ablation", "primary", "accuracy", "n", "missing",
                                 "unparsed")}
        row.update({f"tokens_{k}": r["tokens"][k] for k in TOKEN_SUMMARY})
        row["latency_ms"] = 1000 * r["latency_s"]
        row.update({k: r["grounding"][k] for k in ("box_iou", "focus_in_box", "focus_chance")})
        out.append(row)
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.1f}"
    return str(v)


def markdown(results: list[dict], models: list[dict]) -> str:
    lines = ["# Evaluation results", "",
             "Accuracy is the benchmark's headline metric (`primary`), in %. Tokens are means per answer; "
             "`inference` = latent + generated + crop_visual (what a paradigm adds after the prompt). "
             "Latency is generation wall time per sample (batch time / batch rows). Box IoU: the boxes a model wrote "
             "against its traces' boxes; focus in box: the share of lare's refocus maps on the trace's box, against "
             "a uniform map's share (chance).", ""]
    head = ["benchmark", "model", "paradigm", "ablation", "metric", "accuracy", "n", "unparsed", "tokens total",
            "visual", "prompt", "latent", "generated", "crop", "inference", "ms/sample", "box IoU", "focus in box %",
            "(chance %)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table_rows(results):
        cells = [r["benchmark"], r["model"], r["paradigm"], r["ablation"], r["primary"], r["accuracy"], r["n"],
                 r["unparsed"], r["tokens_total"], r["tokens_visual"], r["tokens_prompt_text"], r["tokens_latent"],
                 r["tokens_generated"], r["tokens_crop_visual"], r["tokens_inference"], r["latency_ms"],
                 "–" if math.isnan(r["box_iou"]) else f"{r['box_iou']:.2f}", r["focus_in_box"], r["focus_chance"]]
        lines.append("| " + " | ".join(_fmt(c).replace("|", "\\|") for c in cells) + " |")
    lines += ["", "## Models", ""]
    for m in models:
        lines.append(f"- `{m['label']}`: paradigm `{m['paradigm']}`, from `{m['source']}`")
    lines += ["", "## Scoring protocols", ""]
    for bench in dict.fromkeys(r["benchmark"] for r in results):
        lines.append(f"- **{bench}**: {PROTOCOLS[bench]}")
    return "\n".join(lines) + "\n"


def _no_nan(value):
    """NaN (a mean over nothing) as null: strict JSON readers refuse NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return value


def write_reports(out: Path, results: list[dict], predictions: list[dict], models: list[dict], settings: dict,
                  heatmaps: list[dict] = ()) -> dict[str, Path]:
    """results.json (everything), results.csv and results.md (headline table), predictions.jsonl (per item)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("results.json", "results.csv", "results.md", "predictions.jsonl")}
    doc = {"settings": settings, "models": models, "protocols": {b: PROTOCOLS[b] for b in
                                                                 dict.fromkeys(r["benchmark"] for r in results)},
           "results": results, "heatmaps": list(heatmaps)}
    paths["results.json"].write_text(json.dumps(_no_nan(doc), indent=1, default=str, allow_nan=False))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*TABLE_COLUMNS, "protocol"])
    writer.writeheader()
    for row, r in zip(table_rows(results), results):
        writer.writerow({**row, "protocol": r["protocol"]})
    paths["results.csv"].write_text(buf.getvalue())
    paths["results.md"].write_text(markdown(results, models))
    with paths["predictions.jsonl"].open("w") as f:
        for p in predictions:
            f.write(json.dumps(p, default=str) + "\n")
    return paths


def mlflow_metrics(results: list[dict], prefix_model: bool) -> dict[str, float]:
    """Metric name -> value: `[<model>/]<ablation>/<benchmark>/accuracy` (the headline), `.../tokens_<bucket>`,
    `.../latency_ms`, and every numeric leaf of the scoring dict under `.../score/`. Names are sanitised for
    MLflow (category names hold spaces, '&', parentheses)."""
    from lare.tracking import sanitize

    out = {}
    for r in results:
        base = f"{r['model']}/" if prefix_model else ""
        base += f"{r['ablation']}/{r['benchmark']}"
        values = {"accuracy": r["accuracy"], "latency_ms": 1000 * r["latency_s"],
                  **{f"tokens_{k}": v for k, v in r["tokens"].items()},
                  **{f"grounding_{k}": v for k, v in r["grounding"].items() if k != "rows"},
                  **{f"score/{k}": v for k, v in flatten_metrics(r["metrics"]).items()}}
        for k, v in values.items():
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                out[sanitize(f"{base}/{k}")] = float(v)
    return out
