"""The paradigm comparison: every variant trained from the same backbone on the same rows with the same budget, as
one Ray Tune grid (variant x seed, a few trials at a time; an MLflow parent run with a child per trial; the same name
resumes), each trial evaluating its export on the held-out splits; then intervals and paired differences.

Used by bench/paradigms.py (the full comparison) and jobs/demo.py (a small one).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

BASELINES = ("direct", "text_cot", "crop", "latent")
# name -> (paradigm, config overrides)
VARIANTS = {
    "direct": ("direct", []),
    "text_cot": ("text_cot", []),
    "crop": ("crop", []),
    "latent": ("latent", ["method.recon_weight=0"]),
    "lare": ("lare", []),
    "lare_no_refocus": ("latent", []),
    "lare_no_recon": ("lare", ["method.recon_weight=0"]),
    "lare_no_forcing": ("lare", ["method.focus_forcing=0"]),  # boxes through the focus loss only
    "lare_no_focus": ("lare", ["method.focus_weight=0", "method.focus_forcing=0"]),  # no box supervision at all
}
# evaluation-time, of `lare` only; gold_focus is an oracle (each slot looks at its step's box), crop's gold_boxes twin
LARE_ABLATIONS = ["none", "zero_latents", "shuffle_refocus", "uniform_refocus", "gold_focus"]
SPLITS = ("test", "hard")
GROUNDING_KEYS = ("box_iou", "box_hit", "focus_in_box", "focus_chance")  # lare.eval.grounding, logged per trial


@dataclass
class Comparison:
    """What to compare and how; bench/paradigms.py fills it from its command line."""

    config: Path
    name: str = "paradigms"
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    seeds: int = 3
    rows: int = 0                  # training rows per run (0 = the config's data.num_train_samples)
    epochs_per_stage: int = 0      # 0 = the config's
    eval_limit: int = 0            # rows per split evaluated (0 = all)
    eval_batch: int = 32
    max_concurrent: int = 2
    traces: str = ""               # default: the config's data.traces_dir, built if missing
    storage: str = "runs"
    bootstrap: int = 2000
    lare_ablations: list[str] = field(default_factory=lambda: list(LARE_ABLATIONS))  # how lare is also evaluated
    crop_ablations: list[str] = field(default_factory=lambda: ["gold_boxes"])  # how crop is also evaluated (an oracle)
    input_ablations: list[str] = field(default_factory=lambda: ["other_image"])  # how every variant is also evaluated
    overrides: list[str] = field(default_factory=list)
    on_change: str = "error"       # a folder of this name built from another config or backbone: "error" or "restart"


def run_overrides(args, traces: str) -> list[str]:
    extra = [f"data.traces_dir={traces}"]
    if args.traces:  # traces built elsewhere: the config's build options do not describe them
        extra.append("data.source_options={}")
    if args.rows:
        extra.append(f"data.num_train_samples={args.rows}")
    if args.epochs_per_stage:
        extra.append(f"train.epochs_per_stage={args.epochs_per_stage}")
    return [*extra, *args.overrides]


def make_trial(args, base_overrides: list[str], root: str, uri: str, parent: str, dataset, num_rows: int, manifest: dict,
               traces: str, board=None):
    """The Tune trainable: train one (variant, seed) with the training job's trainer, evaluate its export, report."""
    config_path, driver_cwd = str(args.config.resolve()), os.getcwd()

    def trial(params: dict) -> None:
        import torch
        from ray import tune

        from lare.config import load_config
        from lare.eval.run import evaluate_model
        from lare.train.launch import make_plan, make_trainer, storage
        from lare.tracking import RunLogger, open_run

        torch.set_num_threads(1)
        variant, seed = params["run"]["variant"], params["run"]["seed"]
        paradigm, extra = VARIANTS[variant]
        experiment = f"{args.name}-{variant}-s{seed}"
        cfg = load_config(config_path, [*base_overrides, f"method.paradigm={paradigm}", *extra, f"train.seed={seed}",
                                        f"model.seed={seed}", f"train.experiment={experiment}",
                                        f"train.storage_path={root}/trials", f"tracking.run_name={experiment}"]
                          ).with_absolute_paths(driver_cwd)
        run_id = open_run(cfg, uri, f"{storage(cfg)[2]}/mlflow_run_id", parent_run_id=parent, experiment=args.name) if uri else ""
        plan = make_plan(cfg, num_rows, manifest=manifest, mlflow_uri=uri, mlflow_run_id=run_id, validate=False,
                         progress=board)
        t0 = time.time()
        result = make_trainer(plan, dataset, controller_failure_limit=0).fit()
        train_s = time.time() - t0
        evaluation = evaluate_model(plan.export_uri, ["refocus"], traces, limit=args.eval_limit or None,
                                    batch_size=args.eval_batch, ablation=trial_ablations(args, variant))
        path = Path(storage(cfg)[2]) / "predictions.json"
        path.write_text(json.dumps(prediction_rows(evaluation)))
        metrics = {"steps": result.metrics.get("step"), "train_s": round(train_s), "eval_s": round(time.time() - t0 - train_s),
                   **eval_metrics(evaluation)}
        if run_id:  # the test result beside the training curves
            logger = RunLogger(uri, run_id, system_metrics=False)
            logger.metrics(int(metrics["steps"] or 0), {f"eval/{k}": float(v) for k, v in metrics.items() if v is not None})
            logger.artifacts(path, "eval")
            logger.close()
        summary = {**metrics, "predictions": str(path), "variant": variant, "seed": seed}
        (path.parent / "trial.json").write_text(json.dumps(summary))  # what finished_trials() reads back
        tune.report(summary)

    return trial


def trial_ablations(args: Comparison, variant: str) -> list[str]:
    """How a variant's export is evaluated: lare also with its latents and refocus ablated and with its refocus
    given the trace's boxes, crop also with the trace's boxes given (the oracles), every variant also about another
    image."""
    own = {"lare": args.lare_ablations, "crop": ["none", *args.crop_ablations]}.get(variant, ["none"])
    return [*own, *args.input_ablations]


def prediction_rows(evaluation: dict) -> list[dict]:
    return [{"id": p["id"], "ablation": p["ablation"], "correct": bool(p["correct"]), "tokens": p["tokens"],
             "grounding": p.get("grounding")} for p in evaluation["predictions"]]


def eval_metrics(evaluation: dict) -> dict[str, float]:
    """Per ablation and split the accuracy, and the tokens: what a trial reports and logs beside its curves."""
    metrics = {}
    for r in evaluation["results"]:
        tag = "" if r["ablation"] == "none" else f"{r['ablation']}/"
        for split, m in r["metrics"]["by_split"].items():
            metrics[f"{tag}{split}_acc"] = m["acc"]
        metrics[f"{tag}tokens_total"] = r["tokens"]["total"]
        metrics[f"{tag}tokens_inference"] = r["tokens"]["inference"]
        metrics.update({f"{tag}{k}": v for k, v in r.get("grounding", {}).items()
                        if k in GROUNDING_KEYS and v == v})  # NaN: the paradigm neither writes boxes nor refocuses
    return metrics


def add_ablations(args: Comparison, ablations: list[str]) -> list[str]:
    """Evaluate the finished trials' exports again with more evaluation-time ablations (those that apply to each
    trial's paradigm) and merge them into their predictions, so a finished comparison gains an ablation without
    training anything. Returns the trials re-evaluated."""
    from lare.eval.inference import applicable
    from lare.eval.run import evaluate_model

    _, traces, _, root, _ = resolve(args)
    done = []
    for trial in finished_trials(root, args):
        wanted = [a for a in ablations if applicable(a, VARIANTS[trial["variant"]][0])]
        if not wanted:
            continue
        path = Path(trial["predictions"])
        evaluation = evaluate_model(str(path.parent / "export"), ["refocus"], traces, limit=args.eval_limit or None,
                                    batch_size=args.eval_batch, ablation=wanted)
        rows = [r for r in json.loads(path.read_text()) if r["ablation"] not in wanted] + prediction_rows(evaluation)
        path.write_text(json.dumps(rows))
        trial.update(eval_metrics(evaluation))
        (path.parent / "trial.json").write_text(json.dumps(trial))
        done.append(f"{trial['variant']}-s{trial['seed']}: {', '.join(wanted)}")
        print(f"re-evaluated {done[-1]}", flush=True)
    return done


def row_index(traces: str) -> dict[str, dict]:
    """id -> {split, family, answer, question} of the evaluated splits, from the traces' own Parquet reader."""
    from pipelines.io import read_traces_table

    out = {}
    for split in SPLITS:
        try:
            table = read_traces_table(traces, split).select(["id", "question", "answer", "meta"]).to_pylist()
        except (FileNotFoundError, OSError):
            continue
        for r in table:
            out[r["id"]] = {"split": split, "family": json.loads(r["meta"] or "{}").get("family", "unknown"),
                            "answer": r["answer"], "question": r["question"]}
    return out


def question_only(traces: str, index: dict[str, dict]) -> dict[str, dict]:
    """Per family: chance (1 / distinct answers in train) and a question-only majority baseline, scored on the same
    evaluated rows (the most common train answer of the same question text, else of the family)."""
    from pipelines.io import read_traces_table

    train = read_traces_table(traces, "train").select(["question", "answer", "meta"]).to_pylist()
    by_q, by_f = defaultdict(Counter), defaultdict(Counter)
    for r in train:
        by_q[r["question"]][r["answer"]] += 1
        by_f[json.loads(r["meta"] or "{}").get("family", "unknown")][r["answer"]] += 1
    hits, total = Counter(), Counter()
    for r in index.values():
        guess = (by_q.get(r["question"]) or by_f[r["family"]] or Counter({"": 1})).most_common(1)[0][0]
        for key in (r["family"], "overall"):
            hits[key] += guess == r["answer"]
            total[key] += 1
    return {f: {"chance": (100 / len(by_f[f]) if by_f.get(f) else None), "question_only": 100 * hits[f] / total[f]}
            for f in total}


def analyse(trials: list[dict], index: dict[str, dict], n_boot: int) -> dict:
    """Accuracy intervals per variant x ablation, per family and overall; paired differences; tokens."""
    import numpy as np

    from lare.eval.stats import bootstrap_ci, paired_diff_ci

    by_key: dict[str, dict[int, dict]] = defaultdict(dict)  # "variant[ablation]" -> seed -> {id: row}
    for t in trials:
        for r in json.loads(Path(t["predictions"]).read_text()):
            key = t["variant"] if r["ablation"] == "none" else f"{t['variant']}[{r['ablation']}]"
            by_key[key].setdefault(t["seed"], {})[r["id"]] = r
    seeds = sorted({t["seed"] for t in trials})
    ids = sorted(set.intersection(*(set(rows) for per_seed in by_key.values() for rows in per_seed.values())))
    families = sorted({index[i]["family"] for i in ids if i in index})
    groups = {"overall": ids, **{f: [i for i in ids if index.get(i, {}).get("family") == f] for f in families},
              **{f"split:{s}": [i for i in ids if index.get(i, {}).get("split") == s] for s in SPLITS}}

    def matrix(key: str, group: list[str]):
        per_seed = by_key[key]
        return np.array([[per_seed[s][i]["correct"] for i in group] for s in seeds if s in per_seed], dtype=float)

    from lare.eval.grounding import mean_grounding
    from lare.eval.report import INFERENCE_KEYS

    table, evaluated = {}, set(ids)
    for key in by_key:
        complete = len(by_key[key]) == len(seeds)
        rows = [r for per_seed in by_key[key].values() for i, r in per_seed.items() if i in evaluated]
        total = np.mean([r["tokens"]["total"] for r in rows])
        inference = np.mean([sum(r["tokens"][k] for k in INFERENCE_KEYS) for r in rows])
        table[key] = {"seeds": len(by_key[key]), "complete": complete, "tokens_total": float(total),
                      "tokens_inference": float(inference),
                      "grounding": {g: mean_grounding([per_seed[i].get("grounding") for per_seed in by_key[key].values()
                                                       for i in members])
                                    for g, members in groups.items() if members},
                      **{g: bootstrap_ci(matrix(key, members), n_boot) for g, members in groups.items() if members}}
    diffs = {}
    if "lare" in table:
        for other in [k for k in table if k != "lare" and not k.endswith("[other_image]")]:
            if len(by_key[other]) != len(by_key["lare"]):
                continue
            diffs[f"lare - {other}"] = {g: paired_diff_ci(matrix("lare", m), matrix(other, m), n_boot)
                                        for g, m in groups.items() if m}
    for key in [k for k in table if "[" in k and not k.startswith("lare[") and not k.endswith("[other_image]")]:
        plain = key.split("[")[0]  # an oracle or ablation of a baseline against the baseline as it is
        if plain in table and len(by_key[plain]) == len(by_key[key]):
            diffs[f"{key} - {plain}"] = {g: paired_diff_ci(matrix(key, m), matrix(plain, m), n_boot)
                                         for g, m in groups.items() if m}
    oracles = ("lare[gold_focus]", "crop[gold_boxes]")  # both given the trace's regions: latent read-out vs crop
    if all(k in table for k in oracles) and len(by_key[oracles[0]]) == len(by_key[oracles[1]]):
        diffs[" - ".join(oracles)] = {g: paired_diff_ci(matrix(oracles[0], m), matrix(oracles[1], m), n_boot)
                                      for g, m in groups.items() if m}
    for key in [k for k in table if f"{k}[other_image]" in table]:  # how much each variant looks at its image
        diffs[f"{key} - {key}[other_image]"] = {g: paired_diff_ci(matrix(key, m), matrix(f"{key}[other_image]", m), n_boot)
                                                for g, m in groups.items() if m}
    return {"table": table, "paired": diffs, "rows_evaluated": len(ids), "seeds": seeds, "families": families}


def headline(analysis: dict) -> dict:
    table, out = analysis["table"], {}
    baselines = [b for b in BASELINES if b in table]
    if "lare" in table and baselines:
        best = max(baselines, key=lambda b: table[b]["overall"]["acc"])
        out["best_baseline"] = best
        out["lare_acc_minus_best_baseline"] = table["lare"]["overall"]["acc"] - table[best]["overall"]["acc"]
        out["lare_acc_minus_best_baseline_ci"] = analysis["paired"].get(f"lare - {best}", {}).get("overall")
    if "lare" in table and "crop" in table:
        out["lare_tokens_over_crop"] = table["lare"]["tokens_inference"] / table["crop"]["tokens_inference"]
        out["lare_total_tokens_over_crop"] = table["lare"]["tokens_total"] / table["crop"]["tokens_total"]
    return out


def print_report(result: dict) -> None:
    a = result["analysis"]
    print(f"paradigms on refocus v2: seeds {a['seeds']}, {a['rows_evaluated']} rows evaluated per run, "
          + (f"grid wall {result['wall_s'] / 60:.1f} min" if result["wall_s"] is not None else "grid wall not recorded"))
    groups = ["overall", "split:test", "split:hard", *a["families"]]
    print(f"{'variant':<30}" + "".join(f"{g.replace('split:', ''):>19}" for g in groups) + f"{'total tok':>10}{'infer tok':>10}")
    base = result["baselines_by_family"]
    print(f"{'chance':<30}" + "".join(f"{_fmt(base.get(g, {}).get('chance')):>19}" for g in groups))
    print(f"{'question only':<30}" + "".join(f"{_fmt(base.get(g, {}).get('question_only')):>19}" for g in groups))
    for key, r in a["table"].items():
        cells = "".join(f"{_ci(r.get(g)):>19}" for g in groups)
        print(f"{key:<30}{cells}{r['tokens_total']:>10.1f}{r['tokens_inference']:>10.1f}")
    for key, d in a["paired"].items():
        print(f"{key:<30}" + "".join(f"{_ci(d.get(g), 'diff'):>19}" for g in groups))
    print("where each variant looked (box IoU of the boxes it wrote; lare: % of the refocus map on the step's box, "
          "uniform map's % in brackets):")
    for key, text in _grounding_cells(a, groups).items():
        print(f"{key:<30}" + "".join(f"{c:>19}" for c in text))
    for key, value in result["headline"].items():
        print(f"{key}: {value}")


def _grounding_cells(a: dict, groups: list[str]) -> dict[str, list[str]]:
    """Per variant that writes boxes or refocuses, one cell per group: box IoU, or focus in box % (chance %)."""
    out = {}
    for key, r in a["table"].items():
        per = r.get("grounding", {})
        cells = []
        for g in groups:
            m = per.get(g)
            if m and m["box_iou"] == m["box_iou"]:
                cells.append(f"IoU {m['box_iou']:.2f}")
            elif m and m["focus_in_box"] == m["focus_in_box"]:
                cells.append(f"{m['focus_in_box']:.1f} ({m['focus_chance']:.1f})")
            else:
                cells.append("-")
        if any(c != "-" for c in cells):
            out[key] = cells
    return out


def markdown(result: dict) -> str:
    """The report as Markdown tables (docs/benchmarks.md, the MLflow parent's artifact)."""
    a, base = result["analysis"], result["baselines_by_family"]
    groups = ["overall", "split:test", "split:hard", *a["families"]]
    head = "| variant | " + " | ".join(g.replace("split:", "") for g in groups) + " | total tok | inference tok |"
    rule = "|" + "---|" * (len(groups) + 3)
    rows = [head, rule,
            "| chance | " + " | ".join(_fmt(base.get(g, {}).get("chance")) for g in groups) + " | | |",
            "| question only | " + " | ".join(_fmt(base.get(g, {}).get("question_only")) for g in groups) + " | | |"]
    for key, r in a["table"].items():
        rows.append(f"| {key} (seeds {r['seeds']}) | " + " | ".join(_ci(r.get(g)) for g in groups)
                    + f" | {r['tokens_total']:.1f} | {r['tokens_inference']:.1f} |")
    diffs = [head.replace("| total tok | inference tok |", "|"), "|" + "---|" * (len(groups) + 1)]
    for key, d in a["paired"].items():
        diffs.append(f"| {key} | " + " | ".join(_ci(d.get(g), "diff") for g in groups) + " |")
    looked = [head.replace("| total tok | inference tok |", "|"), "|" + "---|" * (len(groups) + 1)]
    looked += [f"| {key} | " + " | ".join(cells) + " |" for key, cells in _grounding_cells(a, groups).items()]
    return ("\n".join(rows) + "\n\nPaired differences (points; same rows, same seeds):\n\n" + "\n".join(diffs)
            + "\n\nWhere each variant looked against the traces' boxes (box IoU of the boxes it wrote, in order; lare: % of "
            "each latent slot's refocus map on its step's box, a uniform map's % in brackets):\n\n" + "\n".join(looked) + "\n")


def printed_numbers(result: dict) -> dict[str, float]:
    """Every number print_report shows, as MLflow metric names (the parent run holds the whole table)."""
    from lare.tracking import sanitize

    out = {k: v for k, v in result["headline"].items() if isinstance(v, (int, float))}
    for key, row in result["analysis"]["table"].items():
        out[f"{key}/tokens_total"], out[f"{key}/tokens_inference"] = row["tokens_total"], row["tokens_inference"]
        for group, ci in row.items():
            if isinstance(ci, dict) and group != "grounding":
                out.update({f"{key}/{group}/{k}": ci[k] for k in ("acc", "lo", "hi")})
        for group, g in row.get("grounding", {}).items():
            out.update({f"{key}/{group}/{k}": g[k] for k in GROUNDING_KEYS if g[k] == g[k]})
    for key, groups in result["analysis"]["paired"].items():
        for group, d in groups.items():
            out.update({f"{key}/{group}/{k}": d[k] for k in ("diff", "lo", "hi")})
    for group, b in result["baselines_by_family"].items():
        out.update({f"{name}/{group}": v for name, v in b.items() if v is not None})
    return {sanitize(k.replace(" ", "").replace(":", "_").replace("[", "_").replace("]", "")): float(v) for k, v in out.items()}


def _fmt(v):
    return "-" if v is None else f"{v:.1f}"


def _ci(r, key="acc"):
    return "-" if not r else f"{r[key]:.1f} [{r['lo']:.1f},{r['hi']:.1f}]"



def resolve(args: Comparison):
    """(the base config every run starts from, the traces, the overrides every run gets, the comparison's folder,
    the tracking URI): the same for running the grid and for reporting on it."""
    from lare.config import load_config
    from lare.tracking import resolve_uri

    given = args.traces or load_config(args.config, args.overrides).data.traces_dir
    traces = given if "://" in given else str(Path(given).resolve())
    overrides = run_overrides(args, traces)
    base = load_config(args.config, overrides).with_absolute_paths()
    uri = resolve_uri(base) if base.tracking.enabled else ""
    return base, traces, overrides, f"{Path(args.storage).resolve()}/{args.name}", uri


def fingerprint(args: Comparison, base) -> dict:
    """What the trials of a comparison were made from: the resolved base config, the comparison's budget, and the
    backbone's weights (name, size and first MiB of each weights file, so a re-bundled backbone is told apart
    without reading a large checkpoint whole). Resuming is only sound while this stays the same."""
    import hashlib

    from lare.backbone import PRETRAINED

    folder = PRETRAINED.get(base.model.backbone) or Path(base.model.backbone)
    weights = {}
    for f in sorted(Path(folder).glob("model*.safetensors")):  # none for a preset built from random weights
        with f.open("rb") as fh:
            weights[f.name] = f"{f.stat().st_size}:{hashlib.sha256(fh.read(1 << 20)).hexdigest()[:16]}"
    budget = {k: getattr(args, k) for k in ("rows", "epochs_per_stage", "eval_limit", "lare_ablations", "crop_ablations",
                                            "input_ablations")}
    return {"config": json.loads(json.dumps(base.to_dict(), default=str)), "budget": budget, "backbone_weights": weights}


def check_same_comparison(root: str, args: Comparison, base) -> None:
    """Refuse (or, with on_change="restart", clear) a comparison folder whose trials came from another config or
    backbone: resuming it would report old models as the new ones."""
    import shutil

    now, path = fingerprint(args, base), Path(root) / "fingerprint.json"
    before = json.loads(path.read_text()) if path.is_file() else None
    if before is not None and before != now:
        changed = sorted(k for k in now if before.get(k) != now[k])
        if args.on_change != "restart":
            raise SystemExit(f"error: the comparison {args.name!r} in {root} was run with another {', '.join(changed)}; "
                             f"use a new --name (or delete {root}) to run it again")
        print(f"the comparison {args.name} was run with another {', '.join(changed)}: starting it again")
        shutil.rmtree(root)
    elif before is None and Path(root, "grid").exists():
        print(f"note: {root} predates comparison fingerprints; resuming it as it is")
    Path(root).mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(now, indent=1))


def run(args: Comparison, out: Path | None = None, verbose: bool = False) -> dict:
    """Run (or resume) the grid, analyse it, print the report; write it to `out` and to the MLflow parent run."""
    from ray import tune

    from lare.cli import ray_for
    from lare.progress import LiveProgress
    from lare.tracking import open_run
    from lare.train.launch import prepare_data

    t0 = time.time()
    base, traces, overrides, root, uri = resolve(args)
    check_same_comparison(root, args, base)
    with ray_for((os.cpu_count() or 2) + 4, verbose), LiveProgress() as board:
        manifest, dataset, num_rows = prepare_data(base)
        parent = open_run(base, uri, f"{root}/mlflow_parent_run_id", experiment=args.name) if uri else ""
        trial = make_trial(args, overrides, root, uri, parent, dataset, num_rows, manifest, traces, board)
        # One grid over (seed, variant) pairs, every variant at a seed before the next seed: a comparison cut short
        # still compares every variant.
        space = {"run": tune.grid_search([{"variant": v, "seed": s} for s in range(args.seeds) for v in args.variants])}
        if tune.Tuner.can_restore(f"{root}/grid"):
            print(f"resuming the comparison {args.name} from {root}/grid")
            tuner = tune.Tuner.restore(f"{root}/grid", trainable=trial, resume_errored=True)
        else:
            tuner = tune.Tuner(trial, param_space=space,
                               tune_config=tune.TuneConfig(max_concurrent_trials=args.max_concurrent),
                               run_config=tune.RunConfig(name="grid", storage_path=root,
                                                         verbose=1 if verbose else 0))  # the bars say it
        results = tuner.fit()
    failed = [str(r.error)[:300] for r in results if r.error]
    return report(args, finished_trials(root, args), traces, overrides, num_rows, failed, uri, parent, out,
                  grid_wall_s(root, time.time() - t0))


def grid_wall_s(root: str, spent: float | None = None) -> float | None:
    """The wall time the grid has taken over all its runs (a resumed grid adds to it), kept beside it so that a
    later --analyse-only or --add-ablations report still says how long the comparison took."""
    path = Path(root, "grid_wall_s.json")
    total = json.loads(path.read_text())["wall_s"] if path.exists() else None
    if spent is not None:
        total = (total or 0.0) + spent
        path.write_text(json.dumps({"wall_s": round(total)}))
    return total


def finished_trials(root: str, args: Comparison) -> list[dict]:
    """The trials of this comparison that finished (trained, evaluated, predictions written), read from disk: the
    same analysis works on a grid that is still running or was stopped."""
    found = []
    for path in sorted(Path(root, "trials").glob(f"{args.name}-*-s*/trial.json")):
        trial = json.loads(path.read_text())
        if trial["variant"] in args.variants and trial["seed"] < args.seeds:
            found.append(trial)
    return found


def report(args: Comparison, trials: list[dict], traces: str, overrides: list[str], num_rows: int, failed: list[str],
           uri: str, parent: str, out: Path | None, wall_s: float | None) -> dict:
    """Analyse the finished trials, print the table, write it to `out` and to the MLflow parent run.
    wall_s: what the grid took (None when no run of it recorded that)."""
    from lare.tracking import RunLogger

    index = row_index(traces)
    analysis = analyse(trials, index, args.bootstrap)
    result = {"config": str(args.config),
              "overrides": overrides, "seeds": args.seeds, "train_rows": num_rows,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "wall_s": round(wall_s) if wall_s is not None else None,
              "trials": [{k: v for k, v in t.items() if k in ("variant", "seed", "steps", "train_s", "eval_s")
                          or k.endswith(("_acc", "tokens_total", "tokens_inference"))} for t in trials],
              "failed_trials": failed, "baselines_by_family": question_only(traces, index), "analysis": analysis,
              "headline": headline(analysis),
              "targets": {"lare_acc_minus_best_baseline": ">= 7.6 points", "lare_tokens_over_crop": "<= 0.40 (inference tokens)"}}
    print_report(result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=str))
        out.with_suffix(".md").write_text(markdown(result))
    if uri and parent:
        logger = RunLogger(uri, parent, system_metrics=False)
        logger.metrics(0, printed_numbers(result))
        if out is not None:
            logger.artifacts(out)
            logger.artifacts(out.with_suffix(".md"))
        logger.close()
    return result


def analyse_only(args: Comparison, out: Path | None = None) -> dict:
    """The report of what has finished so far, without training anything (a running or stopped comparison)."""
    from lare.storage import read_text

    base, traces, overrides, root, uri = resolve(args)
    parent = (read_text(f"{root}/mlflow_parent_run_id") or "").strip() if uri else ""
    return report(args, finished_trials(root, args), traces, overrides, base.data.num_train_samples, [], uri, parent,
                  out, grid_wall_s(root))
