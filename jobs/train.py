"""Train a LaRe (or baseline) model with Ray Train: `python jobs/train.py [--config FILE] [key=value ...]`.

With no arguments it trains the bundled default: the tiny Qwen2.5-VL preset in `lare` mode on the refocus
traces (built first when missing). It connects to the Ray cluster in $RAY_ADDRESS, else starts a local Ray
bound to 127.0.0.1; so it runs unchanged as `ray job submit --working-dir . -- python jobs/train.py`.

Re-running an experiment name resumes from its latest checkpoint; `--resume-from URI` warm-starts from
another run's checkpoint. At the end the model is exported, HF-style, to STORAGE/EXPERIMENT/export.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from lare.config import ConfigError, describe, load_config  # noqa: E402
from lare.storage import redact  # noqa: E402

log = logging.getLogger("lare.train")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="jobs/train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (set in the YAML file or as key=value):\n" + describe())
    ap.add_argument("--config", help="YAML config file (sections model, method, data, train, tracking)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. method.recon_weight=0.5")
    ap.add_argument("--resume-from", help="a checkpoint directory or URI of another run to start from (weights only)")
    ap.add_argument("--dry-run", action="store_true", help="build on the meta device, print sizes and per-GPU memory, check the config")
    ap.add_argument("--no-validate", action="store_true", help="skip validation on the val split")
    ap.add_argument("--inject-failure-at-step", type=int, default=None,
                    help="fault-tolerance drill: the last worker exits once at this step (the run must recover)")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_config(args.config, args.overrides).with_absolute_paths()
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    if args.dry_run:
        from lare.sizing import dry_run, format_report

        report = dry_run(cfg)
        print(format_report(report))
        if not report["ok"]:
            raise SystemExit(1)
        return report

    from lare.train.tracking import check_reachable, open_run, resolve_uri

    uri = resolve_uri(cfg) if cfg.tracking.enabled else ""
    if uri:
        check_reachable(uri, cfg.tracking.timeout_s)  # fail in seconds, before Ray starts

    import ray

    from lare.train.launch import make_trainer, prepare_data, storage
    from pipelines.io import ensure_ray

    started_here = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    if started_here:  # workers of a Ray started here import the project from this checkout
        os.environ.setdefault("PYTHONPATH", str(ROOT))
    # A local Ray gets a few more logical CPUs than cores: Ray Data's read tasks must not starve behind
    # the training workers' reservations (they are mostly I/O).
    ensure_ray(num_cpus=max(os.cpu_count() or 1, cfg.train.num_workers * cfg.train.cpus_per_worker) + 2)
    try:
        manifest, dataset, num_rows = prepare_data(cfg)
        experiment_uri = storage(cfg)[2]
        run_id = open_run(cfg, uri, f"{experiment_uri}/mlflow_run_id") if uri else ""
        trainer, loop_config = make_trainer(cfg, dataset, num_rows, manifest=manifest, mlflow_uri=uri,
                                            mlflow_run_id=run_id, resume_from=args.resume_from,
                                            validate=not args.no_validate, fail_at_step=args.inject_failure_at_step)
        t0 = time.time()
        result = trainer.fit()
        summary = {"experiment": cfg.train.experiment, "steps": result.metrics.get("step"),
                   "export": loop_config["export_uri"], "checkpoint": result.checkpoint.path if result.checkpoint else None,
                   "val_accuracy": result.metrics.get("val_accuracy"), "val_mean_tokens": result.metrics.get("val_mean_tokens"),
                   "resumed_at_step": result.metrics.get("resumed_at_step"),
                   "mlflow_run_id": run_id, "mlflow_uri": redact(uri), "wall_s": round(time.time() - t0, 1)}
        print(json.dumps(summary, indent=1))
        if uri:
            print(f"MLflow UI: mlflow ui --backend-store-uri {redact(uri)} --host 127.0.0.1 --port 5000"
                  if uri.startswith("sqlite") else f"MLflow UI: {redact(uri)}")
        return summary
    finally:
        if started_here:
            ray.shutdown()


if __name__ == "__main__":
    main()
