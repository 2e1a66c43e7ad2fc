"""The paradigm comparison on the refocus benchmark: same backbone, data, budget and harness for all.

Trains `direct`, `text_cot`, `crop`, `latent` (Coconut) and `lare` with the same number of epochs and rows, and
the ablations `lare` without reconstruction (recon_weight=0) and without focus loss (focus_weight=0), each with
several seeds, through the real training job (Ray Train); evaluates every export on the held-out `test` and
`hard` splits (lare also with its latents zeroed and its refocus made uniform, which must cost accuracy if the
latent path carries anything). Prints accuracy +- std and mean tokens per paradigm and writes
bench/results/paradigms.json with `lare_acc_minus_best_baseline` (points, test split) and `lare_tokens_over_crop`.
The paper's claims are the targets: +7.6 points over the best baseline and at most 0.40x the crop tokens.

    python bench/paradigms.py                           # the full comparison (long: see the wall time it reports)
    python bench/paradigms.py --seeds 1 --rows 64 ...   # a reduced run (what the test does)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

RESULTS = ROOT / "bench" / "results" / "paradigms.json"
BASELINES = ("direct", "text_cot", "crop", "latent")
# name -> (paradigm, config overrides)
VARIANTS = {
    "direct": ("direct", []),
    "text_cot": ("text_cot", []),
    "crop": ("crop", []),
    "latent": ("latent", []),
    "lare": ("lare", []),
    "lare_no_recon": ("lare", ["method.recon_weight=0"]),
    "lare_no_focus": ("lare", ["method.focus_weight=0"]),
}
EVAL_ABLATIONS = {"lare": ["none", "zero_latents", "uniform_refocus"]}


def train_and_eval(name: str, seed: int, traces: str, tmp: Path, args) -> dict:
    import jobs.train as train_job
    from lare.eval.run import evaluate_model

    paradigm, extra = VARIANTS[name]
    t0 = time.time()
    summary = train_job.main([
        "--config", str(args.config), "--no-validate", f"data.traces_dir={traces}", f"method.paradigm={paradigm}",
        f"train.seed={seed}", f"model.seed={seed}", f"train.experiment=paradigms-{name}-s{seed}",
        f"data.num_train_samples={args.rows}", f"train.epochs_per_stage={args.epochs_per_stage}",
        f"train.storage_path={tmp / 'runs'}", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}", *extra, *args.overrides])
    evaluation = evaluate_model(summary["export"], ["refocus"], traces, limit=args.eval_limit or None,
                                batch_size=args.eval_batch, ablation=EVAL_ABLATIONS.get(name, ["none"]))
    out = {"steps": summary["steps"], "wall_s": round(time.time() - t0)}
    for row in evaluation["results"]:
        splits = row["metrics"]["by_split"]
        out[row["ablation"]] = {"test": splits["test"]["acc"], "hard": splits.get("hard", {}).get("acc"),
                                "tokens": row["tokens"], "latency_s": row["latency_s"]}
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny.yaml", help="base config of every run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=4000, help="training rows per run")
    ap.add_argument("--epochs-per-stage", type=int, default=2, help="epochs per curriculum stage (every paradigm trains as many epochs)")
    ap.add_argument("--eval-limit", type=int, default=0, help="rows per split evaluated (0 = all)")
    ap.add_argument("--eval-batch", type=int, default=32)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--traces", default="", help="refocus traces (default: the config's data.traces_dir, built if missing)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = ap.parse_args(argv)

    import ray

    from lare.config import load_config
    from lare.train.launch import ensure_traces

    t0 = time.time()
    cfg = load_config(args.config, args.overrides)
    # Each finished run is kept beside the output: an interrupted comparison resumes where it stopped,
    # with the same settings only.
    settings = {"config": str(args.config), "rows": args.rows, "epochs_per_stage": args.epochs_per_stage,
                "eval_limit": args.eval_limit, "overrides": args.overrides}
    partial = args.out.with_suffix(".partial.json")
    done = {}
    if partial.is_file():
        saved = json.loads(partial.read_text())
        if saved.get("settings") == settings:
            done = saved["runs"]
            print(f"resuming: {len(done)} finished run(s) from {partial}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    traces = args.traces or cfg.data.traces_dir
    with tempfile.TemporaryDirectory(prefix="lare-paradigms-") as tmp:
        tmp = Path(tmp)
        started = not ray.is_initialized()
        if started:
            ray.init(address="local", num_cpus=(os.cpu_count() or 2) + 2, include_dashboard=False,
                     _node_ip_address="127.0.0.1", _temp_dir=str(tmp / "ray"), log_to_driver=False)
        try:
            ensure_traces(load_config(args.config, [*args.overrides, f"data.traces_dir={traces}"]))
            runs = {name: [] for name in args.variants}
            for seed in range(args.seeds):  # every variant at one seed before the next seed
                for name in args.variants:
                    key = f"{name}/s{seed}"
                    if key not in done:
                        done[key] = train_and_eval(name, seed, traces, tmp, args)
                        partial.write_text(json.dumps({"settings": settings, "runs": done}, indent=1))
                    runs[name].append(done[key])
        finally:
            if started:
                ray.shutdown()

    table = {}
    for name, seeds in runs.items():
        for ablation in seeds[0]:
            if ablation in ("steps", "wall_s"):
                continue
            key = name if ablation == "none" else f"{name}[{ablation}]"
            test = mean_std([s[ablation]["test"] for s in seeds])
            hard = mean_std([s[ablation]["hard"] for s in seeds if s[ablation]["hard"] is not None] or [float("nan")])
            tokens = statistics.mean(s[ablation]["tokens"]["total"] for s in seeds)
            inference = statistics.mean(s[ablation]["tokens"]["inference"] for s in seeds)
            table[key] = {"test_acc": test[0], "test_std": test[1], "hard_acc": hard[0], "hard_std": hard[1],
                          "tokens_total": tokens, "tokens_inference": inference, "steps": seeds[0]["steps"]}
    result = {"config": str(args.config), "seeds": args.seeds, "rows": args.rows, "epochs_per_stage": args.epochs_per_stage,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "wall_s": round(time.time() - t0),
              "runs_wall_s": sum(r["wall_s"] for seeds in runs.values() for r in seeds),
              "table": table, "runs": runs,
              "targets": {"lare_acc_minus_best_baseline": ">= 7.6 points", "lare_tokens_over_crop": "<= 0.40"}}
    baselines = [table[b]["test_acc"] for b in BASELINES if b in table]
    if "lare" in table and baselines:
        result["lare_acc_minus_best_baseline"] = table["lare"]["test_acc"] - max(baselines)
    if "lare" in table and "crop" in table:
        result["lare_tokens_over_crop"] = table["lare"]["tokens_total"] / table["crop"]["tokens_total"]

    print(f"paradigms on refocus: {args.seeds} seed(s), {args.rows} rows, {args.epochs_per_stage} epoch(s)/stage, "
          f"wall {result['wall_s'] / 60:.1f} min")
    print(f"{'variant':<28} {'test acc':>14} {'hard acc':>14} {'tokens':>8} {'inference':>10}")
    for key, r in table.items():
        print(f"{key:<28} {r['test_acc']:>8.1f} ±{r['test_std']:>4.1f} {r['hard_acc']:>8.1f} ±{r['hard_std']:>4.1f} "
              f"{r['tokens_total']:>8.1f} {r['tokens_inference']:>10.1f}")
    for key in ("lare_acc_minus_best_baseline", "lare_tokens_over_crop"):
        if key in result:
            print(f"{key}: {result[key]:.2f}")
    args.out.write_text(json.dumps(result, indent=2, default=str))
    partial.unlink(missing_ok=True)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
