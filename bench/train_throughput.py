"""Training throughput on CPU through the real job (Ray Train V2, gloo), per parallelism layout, and where the time goes.

For `lare` (final stage: K latent slots) and `text_cot` (the same traces, reasoning as text): one worker, then two
workers under each layout of lare/train/parallel.py (ddp [2, 1], fsdp [1, 2], and hsdp [2, 1]: FSDP2's 2-D mesh
with shards of one, i.e. its own replication path), the same batch per worker, one CPU thread per worker.
Throughput is the median of the job's own `samples_per_s` metric over its logging windows after the first
(start-up, data pipeline warm-up and kernel compilation excluded) and before the profiled one.

The last window of every run is profiled with torch.profiler on rank 0 (a step hook): time per step in the
forward, backward and optimizer (the loop's `lare.*` ranges), outside them (Ray Data ingest, metrics, reports),
and in each collective. Prints a table and writes bench/results/train_throughput.json with the 2-worker/1-worker
ratio of every layout and paradigm (`scaling_2w_over_1w`, target >= 1.5 with ddp) and the lare/text_cot step time.

    python bench/train_throughput.py [--rows 512] [--batch 8] [--layouts ddp fsdp hsdp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

RESULTS = ROOT / "bench" / "results" / "train_throughput.json"
MESHES = {"ddp": "[2,1]", "fsdp": "[1,2]", "hsdp": "[2,1]"}
COLLECTIVE = re.compile(r"all_?reduce|all_?gather|reduce_?scatter|broadcast|barrier|c10d|gloo", re.I)


class ProfileSteps:
    """Step hook: torch.profiler on rank 0 over steps (start, stop]; writes the per-step breakdown to `out`."""

    def __init__(self, start: int, stop: int, out: str):
        self.start, self.stop, self.out = start, stop, out
        self.prof, self.t0 = None, 0.0

    def __call__(self, event) -> None:
        import torch.profiler

        if event.rank != 0:
            return
        if event.step == self.start:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.prof.__enter__()
            self.t0 = time.perf_counter()
        elif event.step == self.stop and self.prof is not None:
            wall = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)
            n = self.stop - self.start
            ops = {e.key: e.cpu_time_total / 1e6 / n for e in self.prof.key_averages()}  # inclusive seconds per step
            parts = {k: ops.get(f"lare.{k}", 0.0) for k in ("forward", "backward", "optimizer")}
            out = {"steps": n, "step_s": wall / n, **{f"{k}_s": v for k, v in parts.items()},
                   "outside_step_s": wall / n - sum(parts.values()),
                   "collectives_s": {k: round(v, 5) for k, v in sorted(ops.items(), key=lambda kv: -kv[1])
                                     if COLLECTIVE.search(k) and v > 1e-4}}
            Path(self.out).write_text(json.dumps(out, indent=1))
            self.prof = None


def run(paradigm: str, layout: str, workers: int, traces: str, tmp: Path, args) -> dict:
    import lare.jobs.train as train_job
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    name = f"tp-{paradigm}-{layout}-{workers}w"
    steps = args.rows // (args.batch * workers)
    stop = steps // args.log_every * args.log_every
    profile = tmp / f"{name}.profile.json"
    mesh = [f"train.mesh={MESHES[layout]}"] if workers > 1 else []
    summary = train_job.main([
        "--no-validate", f"data.traces_dir={traces}", f"data.num_train_samples={args.rows}", f"train.experiment={name}",
        f"method.paradigm={paradigm}", f"train.num_workers={workers}", f"train.batch_size={args.batch}",
        f"train.parallelism={layout}", *mesh,
        "train.start_stage=3", "train.epochs_per_stage=1", f"train.log_every={args.log_every}",
        "train.checkpoint_every=100000", f"train.storage_path={tmp / 'runs'}", f"tracking.uri={uri}"],
        step_hooks=[ProfileSteps(stop - args.log_every, stop, str(profile))])
    client = MlflowClient(uri)
    history = sorted(client.get_metric_history(summary["mlflow_run_id"], "samples_per_s"), key=lambda m: m.step)
    rates = [m.value for m in history if m.step < stop][1:]  # the first window holds start-up; the last is profiled
    tags = client.get_run(summary["mlflow_run_id"]).data.tags
    return {"layout": tags.get("parallelism.layout"), "mesh": tags.get("parallelism.mesh"),
            "samples_per_s": statistics.median(rates), "windows": len(rates), "steps": summary["steps"],
            "step_s_per_worker": workers * args.batch / statistics.median(rates),
            "profile": json.loads(profile.read_text()) if profile.is_file() else None}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=512, help="training rows (one epoch at the final stage)")
    ap.add_argument("--batch", type=int, default=8, help="samples per worker per step")
    ap.add_argument("--log-every", type=int, default=4, help="steps per throughput window")
    ap.add_argument("--layouts", nargs="+", default=list(MESHES), choices=list(MESHES))
    ap.add_argument("--paradigms", nargs="+", default=["lare", "text_cot"])
    ap.add_argument("--traces", default="", help="refocus traces folder (default: built into a temp folder)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from lare.cli import ray_for
    from pipelines.build import build_traces

    with tempfile.TemporaryDirectory(prefix="lare-tp-") as tmp:
        tmp = Path(tmp)
        with ray_for(num_cpus=(os.cpu_count() or 2) + 2):
            traces = args.traces
            if not traces:
                traces = str(tmp / "traces")
                build_traces("refocus", traces, options={"num_train": args.rows, "num_val": 8, "num_test": 8, "num_hard": 8})
            results = {}
            for p in args.paradigms:
                results[f"{p}_1w"] = run(p, "ddp", 1, traces, tmp, args)
                for layout in args.layouts:
                    results[f"{p}_{layout}_2w"] = run(p, layout, 2, traces, tmp, args)

    scaling = {f"{p}_{lay}": results[f"{p}_{lay}_2w"]["samples_per_s"] / results[f"{p}_1w"]["samples_per_s"]
               for p in args.paradigms for lay in args.layouts}
    ratio = {}
    if {"lare", "text_cot"} <= set(args.paradigms):
        ratio = {k: results[f"lare_{k}"]["step_s_per_worker"] / results[f"text_cot_{k}"]["step_s_per_worker"]
                 for k in ["1w", *(f"{lay}_2w" for lay in args.layouts)]}
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "rows": args.rows, "batch_per_worker": args.batch,
           "threads_per_worker": int(os.environ["OMP_NUM_THREADS"]), "runs": results,
           "scaling_2w_over_1w": scaling, "lare_over_textcot_step_time": ratio,
           "targets": {"scaling_2w_over_1w": ">= 1.5 with ddp", "lare_over_textcot_step_time": "<= 1.5"}}
    print(f"training throughput (CPU, batch {args.batch}/worker, {args.rows} rows, final stage, 1 thread/worker)")
    print(f"{'run':<20} {'mesh':<7} {'samples/s':>9} {'step s':>7} {'fwd':>6} {'bwd':>6} {'optim':>6} {'outside':>7} {'comm':>6}")
    for name, r in results.items():
        pr = r["profile"] or {}
        comm = sum(pr.get("collectives_s", {}).values()) if pr else float("nan")
        print(f"{name:<20} {r['mesh'] or '-':<7} {r['samples_per_s']:>9.2f} {r['step_s_per_worker']:>7.3f} "
              + " ".join(f"{pr.get(k, float('nan')):>6.3f}" for k in ("forward_s", "backward_s", "optimizer_s"))
              + f" {pr.get('outside_step_s', float('nan')):>7.3f} {comm:>6.3f}")
    print("scaling 2w/1w: " + ", ".join(f"{k} {v:.2f}" for k, v in scaling.items()))
    if ratio:
        print("lare/text_cot step time: " + ", ".join(f"{k} {v:.2f}" for k, v in ratio.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
