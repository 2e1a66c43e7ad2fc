"""Sweep LaRe's open knobs with Ray Tune: the reconstruction weight and the number of latent steps K.

    lare-tune [--config FILE] [key=value ...] [--num-samples 8] [--max-concurrent 2]

(or python jobs/tune.py ..., the same job). Every trial is a full Ray Train run (lare-train's trainer) with its own checkpoints and its own MLflow
child run under one parent run of the sweep. ASHA stops weak trials early on validation accuracy (reported at
each curriculum stage's end). recon_weight is drawn log-uniformly, and 0 (no reconstruction) is always
evaluated as a point of its own. An interrupted sweep resumes with the same --name (Tuner.restore).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from lare.cli import add_job_flags, main_guard, ray_for, run_cli, start
from lare.config import describe, load_config
from lare.storage import redact

log = logging.getLogger("lare.tune")
METRIC = "val_accuracy"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="lare-tune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="config keys (set in the YAML file or as key=value):\n" + describe())
    ap.add_argument("--config", help="YAML config file, the base of every trial")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the base config")
    ap.add_argument("--name", default="", help="sweep name (default: <train.experiment>-tune); reuse it to resume")
    ap.add_argument("--num-samples", type=int, default=8, help="trials drawn from the search space (plus the recon_weight=0 point)")
    ap.add_argument("--max-concurrent", type=int, default=2, help="trials running at once")
    ap.add_argument("--recon-weight-range", type=float, nargs=2, default=[0.01, 10.0], metavar=("LOW", "HIGH"),
                    help="log-uniform range of method.recon_weight")
    ap.add_argument("--latent-steps", type=int, nargs="+", default=[2, 4, 6, 8], help="choices of method.latent_steps (K)")
    ap.add_argument("--tune-lr", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                    help="also sweep train.lr log-uniformly in this range")
    ap.add_argument("--grace-period", type=int, default=1, help="ASHA: reports before a trial can be stopped")
    ap.add_argument("--seed", type=int, default=0, help="seed of the search")
    add_job_flags(ap)
    return ap.parse_args(argv)


def search_space(args):
    from ray import tune

    space = {"method.recon_weight": tune.loguniform(*args.recon_weight_range),
             "method.latent_steps": tune.choice(args.latent_steps)}
    if args.tune_lr:
        space["train.lr"] = tune.loguniform(*args.tune_lr)
    # Without reconstruction, as its own point: the ablation the paper's claim rests on.
    zero = {"method.recon_weight": 0.0, "method.latent_steps": args.latent_steps[len(args.latent_steps) // 2]}
    return space, [zero]


@main_guard
def main(argv=None) -> dict:
    args = parse_args(argv)
    start(args.verbose)  # also: reports before the first validation carry no val_accuracy (ASHA acts on the rest)
    base = load_config(args.config, args.overrides).with_absolute_paths()
    name = args.name or f"{base.train.experiment}-tune"

    from lare.tracking import check_reachable, open_run, resolve_uri

    uri = resolve_uri(base) if base.tracking.enabled else ""
    if uri:
        check_reachable(uri, base.tracking.timeout_s)

    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from lare.progress import LiveProgress
    from lare.train.launch import make_plan, make_trainer, prepare_data, storage

    with ray_for((os.cpu_count() or 1) + 4, args.verbose), LiveProgress() as board:
        manifest, dataset, num_rows = prepare_data(base)
        sweep_root = storage(base)[2].rsplit("/", 1)[0] + f"/{name}"
        parent = ""
        if uri:
            from mlflow.tracking import MlflowClient

            parent = open_run(base, uri, f"{sweep_root}/mlflow_parent_run_id", experiment=name)
            MlflowClient(uri).set_tag(parent, "lare.sweep", name)
        overrides, driver_cwd = list(args.overrides), os.getcwd()
        config_path = str(Path(args.config).resolve()) if args.config else None

        def trial(params: dict) -> None:
            trial_id = tune.get_context().get_trial_id()
            cfg = load_config(config_path, overrides + [f"{k}={v}" for k, v in params.items()]
                              + [f"train.experiment={name}-{trial_id}", f"train.storage_path={sweep_root}/trials"]
                              ).with_absolute_paths(driver_cwd)  # a trial runs in its own working directory
            run_id = open_run(cfg, uri, f"{storage(cfg)[2]}/mlflow_run_id", parent_run_id=parent, experiment=name) if uri else ""
            plan = make_plan(cfg, num_rows, manifest=manifest, mlflow_uri=uri, mlflow_run_id=run_id, progress=board)
            make_trainer(plan, dataset, callbacks=[TuneReportCallback()], controller_failure_limit=0).fit()

        space, points = search_space(args)
        tune_storage, tune_fs = _tune_storage(sweep_root)
        if tune.Tuner.can_restore(f"{tune_storage}/sweep", storage_filesystem=tune_fs):
            log.info("resuming the interrupted sweep %s", name)
            tuner = tune.Tuner.restore(f"{tune_storage}/sweep", trainable=trial, storage_filesystem=tune_fs,
                                       resume_errored=True)
        else:
            tuner = tune.Tuner(
                trial, param_space=space,
                tune_config=tune.TuneConfig(
                    metric=METRIC, mode="max", num_samples=args.num_samples + len(points),
                    scheduler=ASHAScheduler(time_attr="training_iteration", grace_period=args.grace_period),
                    search_alg=BasicVariantGenerator(points_to_evaluate=points, random_state=args.seed,
                                                     max_concurrent=args.max_concurrent)),
                run_config=tune.RunConfig(name="sweep", storage_path=tune_storage, storage_filesystem=tune_fs,
                                          verbose=1 if args.verbose else 0))  # the progress bars say it
        results = tuner.fit()
        best = results.get_best_result(metric=METRIC, mode="max", scope="all")
        table = sorted(({**r.config, METRIC: (r.metrics or {}).get(METRIC), "steps": (r.metrics or {}).get("step")}
                        for r in results), key=lambda row: -(row[METRIC] or -1))
        summary = {"sweep": name, "best_config": best.config, f"best_{METRIC}": (best.metrics or {}).get(METRIC),
                   "trials": table, "mlflow_parent_run_id": parent, "mlflow_uri": redact(uri)}
        print(json.dumps(summary, indent=1, default=str))
        if uri:
            _log_best(uri, parent, summary)
        return summary


def _tune_storage(sweep_root: str):
    if sweep_root.startswith("s3://"):
        from lare.storage import s3_filesystem

        return sweep_root[len("s3://"):], s3_filesystem()
    return sweep_root, None


def _log_best(uri: str, parent: str, summary: dict) -> None:
    import tempfile

    from lare.tracking import RunLogger, sanitize

    logger = RunLogger(uri, parent, system_metrics=False)
    logger.metrics(0, {f"best_{METRIC}": summary[f"best_{METRIC}"]})
    for key, value in summary["best_config"].items():
        logger.client.set_tag(parent, sanitize(f"best.{key}"), str(value))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.json"
        path.write_text(json.dumps(summary, indent=1, default=str))
        logger.artifacts(path)
    logger.close()


def run() -> None:
    """The lare-tune console script and jobs/tune.py."""
    run_cli(main)
