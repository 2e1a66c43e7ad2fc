"""Training throughput on CPU through the real job (Ray Train V2, FSDP2 on gloo when 2 workers).

For `lare` (final stage: K latent slots) and `text_cot` (the same traces, reasoning as text), with 1 and 2
workers of one CPU each: samples/s in steady state, the median of the job's own `samples_per_s` metric over
its logging windows after the first (start-up, data pipeline warm-up and compilation of kernels excluded).
Prints a table and writes bench/results/train_throughput.json with `scaling_2w_over_1w` (per paradigm and
overall) and `lare_over_textcot_step_time` (per worker count).

    python bench/train_throughput.py [--rows 384] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

RESULTS = ROOT / "bench" / "results" / "train_throughput.json"


def run(paradigm: str, workers: int, traces: str, tmp: Path, args) -> dict:
    import lare.jobs.train as train_job
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    name = f"tp-{paradigm}-{workers}w"
    summary = train_job.main([
        "--no-validate", f"data.traces_dir={traces}", f"data.num_train_samples={args.rows}", f"train.experiment={name}",
        f"method.paradigm={paradigm}", f"train.num_workers={workers}", f"train.batch_size={args.batch}",
        "train.start_stage=3", "train.epochs_per_stage=1", f"train.log_every={args.log_every}",
        "train.checkpoint_every=100000", f"train.storage_path={tmp / 'runs'}", f"tracking.uri={uri}"])
    history = MlflowClient(uri).get_metric_history(summary["mlflow_run_id"], "samples_per_s")
    rates = [m.value for m in sorted(history, key=lambda m: m.step)][1:]  # the first window holds start-up
    return {"samples_per_s": statistics.median(rates), "windows": len(rates), "steps": summary["steps"],
            "step_s_per_worker": workers * args.batch / statistics.median(rates)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=384, help="training rows (one epoch at the final stage)")
    ap.add_argument("--batch", type=int, default=8, help="samples per worker per step")
    ap.add_argument("--log-every", type=int, default=4, help="steps per throughput window")
    ap.add_argument("--traces", default="", help="refocus traces folder (default: built into a temp folder)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    import ray

    from pipelines.build import build_traces

    with tempfile.TemporaryDirectory(prefix="lare-tp-") as tmp:
        tmp = Path(tmp)
        started = not ray.is_initialized()
        if started:
            ray.init(address="local", num_cpus=(os.cpu_count() or 2) + 2, include_dashboard=False,
                     _node_ip_address="127.0.0.1", _temp_dir=str(tmp / "ray"), log_to_driver=False)
        try:
            traces = args.traces
            if not traces:
                traces = str(tmp / "traces")
                build_traces("refocus", traces, options={"num_train": args.rows, "num_val": 8, "num_test": 8, "num_hard": 8})
            results = {f"{p}_{w}w": run(p, w, traces, tmp, args) for p in ("lare", "text_cot") for w in (1, 2)}
        finally:
            if started:
                ray.shutdown()

    scaling = {p: results[f"{p}_2w"]["samples_per_s"] / results[f"{p}_1w"]["samples_per_s"] for p in ("lare", "text_cot")}
    ratio = {f"{w}w": results[f"lare_{w}w"]["step_s_per_worker"] / results[f"text_cot_{w}w"]["step_s_per_worker"] for w in (1, 2)}
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "rows": args.rows, "batch_per_worker": args.batch,
           "runs": results, "scaling_2w_over_1w": min(scaling.values()), "scaling_2w_over_1w_by_paradigm": scaling,
           "lare_over_textcot_step_time": max(ratio.values()), "lare_over_textcot_step_time_by_workers": ratio,
           "targets": {"scaling_2w_over_1w": ">= 1.5", "lare_over_textcot_step_time": "<= 1.5"}}
    print(f"training throughput (CPU, batch {args.batch}/worker, {args.rows} rows, final stage)")
    print(f"{'run':<14} {'samples/s':>10} {'step s':>8} {'windows':>8}")
    for name, r in results.items():
        print(f"{name:<14} {r['samples_per_s']:>10.2f} {r['step_s_per_worker']:>8.3f} {r['windows']:>8}")
    print(f"scaling 2w/1w: lare {scaling['lare']:.2f}, text_cot {scaling['text_cot']:.2f}; "
          f"lare/text_cot step time: 1w {ratio['1w']:.2f}, 2w {ratio['2w']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
