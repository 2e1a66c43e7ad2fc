"""Evaluate LaRe models on the benchmarks: models in, results table, plots and an MLflow run out.

Two entry points:

    evaluate_model(model_or_dir, ["refocus", "pope"], "/data/benchmarks", limit=50)      # Python API, no files
    evaluate(["runs:/ID/model", "/exports/direct"], [...], "/data/benchmarks", out=...)  # what jobs/evaluate.py runs

Models are LaRe export directories (local, or s3://... downloaded first) or MLflow URIs (runs:/<id>/<path>,
models:/<name>/<version>). Each model keeps the paradigm it was trained with (its lare_config.json): the heads
of one paradigm do not fit another.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from lare.eval.inference import ModelNotFound, applicable, read_model_config, run_inference  # noqa: F401 (re-exported)
from lare.eval.readers import BENCHMARKS, EvalItem, MissingBenchmarkFiles, expand_circular, read_benchmark
from lare.eval.report import mlflow_metrics, summarize, write_reports
from lare.storage import redact  # URI user info, query-string and env credentials

log = logging.getLogger("lare.eval")

DEFAULT_BENCHMARKS = ("refocus", "pope", "mmbench", "scienceqa", "mmvp", "mmstar", "mmmu_pro")
EVAL_EXPERIMENT = "lare-eval"


class EvalError(ValueError):
    """A request the job cannot serve (no model matches --paradigm, an unknown --mlflow-run-id)."""


@dataclass
class ModelSpec:
    spec: str           # where the model is (shown redacted)
    paradigm: str       # from its lare_config.json
    run_id: str | None  # the MLflow run it came from (runs:/ID/...)
    label: str = ""


# ---------------------------------------------------------------------------------------------
# Models


def describe_model(spec: str, tracking_uri: str | None = None) -> ModelSpec:
    """Reads only the model's config (the weights are fetched where inference runs); a clear error when the
    location holds no LaRe export."""
    cfg = read_model_config(spec, tracking_uri)
    run_id = spec[len("runs:/"):].strip("/").split("/")[0] if spec.startswith("runs:/") else None
    return ModelSpec(spec, cfg["method"]["paradigm"], run_id)


def label_models(models: list[ModelSpec]) -> None:
    """Each model is named by its paradigm; a second model of the same paradigm gets -2, -3, ..."""
    seen: dict[str, int] = {}
    for m in models:
        seen[m.paradigm] = seen.get(m.paradigm, 0) + 1
        m.label = m.paradigm if seen[m.paradigm] == 1 else f"{m.paradigm}-{seen[m.paradigm]}"


# ---------------------------------------------------------------------------------------------
# Items


def load_items(benchmarks: Sequence[str], data_root: str | Path, limit: int | None = None,
               skip_missing: bool = False) -> dict[str, list[EvalItem]]:
    """benchmark -> items. MMBench gets VLMEvalKit's circular copies (the released files already hold them)."""
    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown:
        raise KeyError(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}")
    out = {}
    for name in benchmarks:
        try:
            items = read_benchmark(name, data_root, limit)
        except MissingBenchmarkFiles as e:
            if not skip_missing:
                raise
            log.warning("skipping %s: %s", name, e)
            continue
        out[name] = expand_circular(items) if name == "mmbench" else items
    if not out:
        raise MissingBenchmarkFiles(f"none of the benchmarks {list(benchmarks)} has files under {data_root}")
    return out


def heatmap_keys(items_by_bench: dict[str, list[EvalItem]], n: int) -> list[tuple[str, str]]:
    """The first n items, taken round-robin over the benchmarks so each gets its share."""
    keys, lists = [], [list(v) for v in items_by_bench.values()]
    for i in range(max((len(v) for v in lists), default=0)):
        for items in lists:
            if len(keys) < n and i < len(items):
                keys.append((items[i].benchmark, items[i].id))
    return keys


# ---------------------------------------------------------------------------------------------
# Python API


def evaluate_model(model_or_dir, benchmarks: Sequence[str], data_root: str | Path, *, limit: int | None = None,
                   batch_size: int = 8, ablation: str | Sequence[str] = "none", use_ray: bool = False,
                   max_new_tokens: int | None = None, concurrency: int = 1, num_gpus_per_actor: float = 0,
                   skip_missing: bool = False) -> dict:
    """Evaluate one model without files or MLflow: a LaReModel in memory (in-process; its train/eval mode is
    restored afterwards), or a location (export folder, s3://, runs:/, models:/ with $MLFLOW_TRACKING_URI).

    Returns {"paradigm", "results": one row per benchmark x ablation (see lare.eval.report), "predictions": one
    row per item and ablation}. use_ray=True: a Ray Data actor pool (Ray already up, $RAY_ADDRESS, or a local
    Ray started on 127.0.0.1); it needs a location, not an object."""
    ablations = [ablation] if isinstance(ablation, str) else list(ablation)
    if isinstance(model_or_dir, (str, Path)):
        paradigm = describe_model(str(model_or_dir)).paradigm
    else:
        paradigm = model_or_dir.paradigm
    bad = [a for a in ablations if not applicable(a, paradigm)]
    if bad:
        raise EvalError(f"ablation(s) {bad} do not apply to a {paradigm!r} model")
    items = load_items(benchmarks, data_root, limit, skip_missing)
    rows = run_inference(model_or_dir, [it for v in items.values() for it in v], ablations=ablations,
                         batch_size=batch_size, use_ray=use_ray, concurrency=concurrency, num_gpus=num_gpus_per_actor,
                         max_new_tokens=max_new_tokens)
    results, predictions = summarize(paradigm, paradigm, items, rows)
    return {"paradigm": paradigm, "results": results, "predictions": predictions}


# ---------------------------------------------------------------------------------------------
# The job


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:80]


def render_heatmaps(out: Path, items_by_bench: dict[str, list[EvalItem]], rows_by_model: dict[str, list[dict]]) -> list[dict]:
    from lare.eval.plots import refocus_heatmap

    index = {(it.benchmark, it.id): it for items in items_by_bench.values() for it in items}
    made = []
    for label, rows in rows_by_model.items():
        for r in rows:
            if not r["refocus"]:
                continue
            it = index[(r["benchmark"], r["id"])]
            rid = r["id"] if r["id"].startswith(r["benchmark"] + "/") else f"{r['benchmark']}/{r['id']}"
            name = f"{_safe(label)}_{r['ablation']}_{_safe(rid)}.png"
            maps = json.loads(r["refocus"])
            question = " ".join(it.question.split())  # hints hold tabs and newlines
            title = (f"{label} [{r['ablation']}] {r['id']}: {question[:90]}\n"
                     f"gold: {it.answer}   answer: {' '.join(r['answer'].split())[:40]}")
            refocus_heatmap(it.image, maps, out / "heatmaps" / name, title, r["regions"])
            made.append({"file": f"heatmaps/{name}", "model": label, "ablation": r["ablation"],
                         "benchmark": r["benchmark"], "id": r["id"], "steps": len(maps),
                         "regions": bool(r["regions"])})
    return made


def _existing_run(uri: str, run_id: str) -> None:
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).get_run(run_id)
    except Exception as e:
        raise EvalError(f"--mlflow-run-id {run_id}: no such run at {redact(uri)} ({type(e).__name__})") from None


def open_eval_run(uri: str, models: list[ModelSpec], run_id: str | None, name: str) -> tuple[str, bool]:
    """(run id, whether it existed before). An explicit run id is used as it is; a single source run
    (runs:/ID) gets a nested evaluation run; otherwise a new run in experiment `lare-eval`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if run_id:
        _existing_run(uri, run_id)
        return run_id, True
    tags = {"lare.evaluation": "true", "lare.paradigms": ",".join(m.paradigm for m in models)}
    parents = sorted({m.run_id for m in models if m.run_id})
    if len(parents) == 1:
        exp_id = client.get_run(parents[0]).info.experiment_id
        tags["mlflow.parentRunId"] = parents[0]
    else:
        from lare.tracking import experiment_id

        exp_id = experiment_id(client, uri, EVAL_EXPERIMENT)
    return client.create_run(exp_id, run_name=name, tags=tags).info.run_id, False


def log_to_mlflow(uri: str, run_id: str, existed: bool, out: Path, results: list[dict], settings: dict,
                  models: list[ModelSpec]) -> None:
    from mlflow.entities import Param

    from lare.tracking import RunLogger, sanitize

    logger = RunLogger(uri, run_id, system_metrics=False)
    if not existed:  # an existing run may hold these names already, and MLflow refuses to change a param
        params = {sanitize(k): redact(str(v))[:6000] for k, v in settings.items()}
        for m in models:
            params[sanitize(f"model/{m.label}/paradigm")] = m.paradigm
            params[sanitize(f"model/{m.label}/source")] = redact(m.spec)[:6000]
        logger.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    logger.metrics(0, {f"eval/{k}": v for k, v in mlflow_metrics(results, len(models) > 1).items()})
    logger.artifacts(out, f"evaluation/{out.name}" if existed else None)
    if not logger.flush():
        raise RuntimeError(f"MLflow at {redact(uri)}: metrics could not be logged to run {run_id}")
    if not existed:
        logger.close()


def evaluate(model_specs: Sequence[str], benchmarks: Sequence[str], data_root: str | Path, *, out: Path,
             paradigms: Sequence[str] | None = None, limit: int | None = None, batch_size: int = 8,
             concurrency: int = 1, num_gpus_per_actor: float = 0, ablations: Sequence[str] = ("none",),
             max_new_tokens: int | None = None, heatmaps: int = 4, use_ray: bool = True,
             tracking_uri: str | None = None, track: bool = True, mlflow_run_id: str | None = None,
             skip_missing: bool = False) -> dict:
    """Everything jobs/evaluate.py does once its arguments are parsed (Ray, when used, is up already).
    tracking_uri: the MLflow server runs:/ and models:/ come from, and where results are logged when `track`."""
    t0 = time.time()
    out = Path(out)
    if track and tracking_uri and mlflow_run_id:  # an unknown run is an error now, not after the inference
        _existing_run(tracking_uri, mlflow_run_id)
    # Everything that can be wrong with the request fails here, before any model is loaded.
    items = load_items(benchmarks, data_root, limit, skip_missing)
    models = [describe_model(s, tracking_uri) for s in model_specs]
    if paradigms:
        kept = [m for m in models if m.paradigm in paradigms]
        for m in models:
            if m not in kept:
                log.info("skipping %s: its paradigm is %s, not one of %s", redact(m.spec), m.paradigm, list(paradigms))
        if not kept:
            raise EvalError(f"--paradigm {','.join(paradigms)} matches none of the models: "
                            + ", ".join(f"{redact(m.spec)} is {m.paradigm}" for m in models))
        models = kept
    label_models(models)
    log.info("items: %s", {b: len(v) for b, v in items.items()})
    flat = [it for v in items.values() for it in v]
    keys = heatmap_keys(items, heatmaps)

    results, predictions, rows_by_model, skipped = [], [], {}, []
    for m in models:
        wanted = [a for a in ablations if applicable(a, m.paradigm)]
        skipped += [f"{m.label}: {a}" for a in ablations if a not in wanted]
        log.info("model %s (%s): %d items x %s", m.label, redact(m.spec), len(flat), wanted)
        t_model = time.time()
        rows = run_inference(m.spec, flat, ablations=wanted, batch_size=batch_size, use_ray=use_ray,
                             concurrency=concurrency, num_gpus=num_gpus_per_actor, max_new_tokens=max_new_tokens,
                             heatmap_keys=keys, tracking_uri=tracking_uri)
        log.info("model %s: %d generations in %.1fs", m.label, len(rows), time.time() - t_model)
        res, preds = summarize(m.label, m.paradigm, items, rows)
        results += res
        predictions += preds
        rows_by_model[m.label] = [r for r in rows if r["refocus"]]
    if skipped:
        log.info("ablations that do not apply (no latents / no refocus), skipped: %s", skipped)

    from lare.eval.plots import accuracy_vs_tokens

    heatmap_index = render_heatmaps(out, items, rows_by_model)
    accuracy_vs_tokens(results, out / "accuracy_vs_tokens.png")
    model_info = [{"label": m.label, "paradigm": m.paradigm, "source": redact(m.spec)} for m in models]
    settings = {"benchmarks": ",".join(items), "data_root": redact(str(data_root)), "limit": limit,
                "batch_size": batch_size, "concurrency": concurrency, "num_gpus_per_actor": num_gpus_per_actor,
                "ablations": ",".join(ablations), "max_new_tokens": max_new_tokens, "heatmaps": heatmaps,
                "ray": use_ray, "skipped_ablations": ";".join(skipped)}
    write_reports(out, results, predictions, model_info, settings, heatmap_index)

    run_id = None
    if track and tracking_uri:
        run_id, existed = open_eval_run(tracking_uri, models, mlflow_run_id, f"eval-{out.name}")
        log_to_mlflow(tracking_uri, run_id, existed, out, results, settings, models)
    summary = {"out": str(out), "mlflow_run_id": run_id, "wall_s": round(time.time() - t0, 1),
               "results": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                            for k, v in r.items() if k not in ("metrics", "protocol")} for r in results]}
    return summary
