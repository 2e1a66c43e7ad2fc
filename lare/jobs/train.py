"""Train a LaRe (or baseline) model with Ray Train: `lare-train [--config FILE] [key=value ...]` (or
`python jobs/train.py ...`, the same job).

With no arguments it trains the bundled default: the tiny Qwen2.5-VL preset in `lare` mode on the refocus
traces. A missing traces folder is built first only when it is the default data.traces_dir, or the folder the
--config file names for the refocus source together with data.source_options, or with --build-data: a mistyped
data.traces_dir is an error, not a new data set. It connects to the Ray cluster in $RAY_ADDRESS, else starts a
local Ray bound to 127.0.0.1; so it runs unchanged as `ray job submit --working-dir . -- python jobs/train.py`.

Re-running an experiment name resumes from its latest checkpoint; `--resume-from URI` warm-starts from
another run's checkpoint. At the end the model is exported, HF-style, to STORAGE/EXPERIMENT/export.

Exit status: 0 on success; 2 on a user error (bad key=value or config key, missing path, unreachable tracking
server), one line on stderr (its traceback too with --debug or LARE_DEBUG=1); 1 on a failed dry run or a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from lare.cli import UserError, add_job_flags, main_guard, ray_for, run_cli, start
from lare.config import Config, describe, load_config
from lare.storage import is_remote, redact

log = logging.getLogger("lare.train")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="lare-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (set in the YAML file or as key=value):\n" + describe())
    ap.add_argument("--config", help="YAML config file (sections model, method, data, train, tracking)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. method.recon_weight=0.5")
    ap.add_argument("--resume-from", help="a checkpoint directory or URI of another run to start from (weights only)")
    ap.add_argument("--dry-run", action="store_true", help="build on the meta device, print sizes and per-GPU memory, check the config")
    ap.add_argument("--no-validate", action="store_true", help="skip validation on the val split")
    ap.add_argument("--build-data", action="store_true",
                    help="build the refocus traces into data.traces_dir when it does not exist, whatever the path")
    add_job_flags(ap)
    return ap.parse_args(argv)


def option_text(value) -> str:
    """A source option as jobs/build_data.py reads it back (text verbatim, the rest as YAML/JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def build_command(cfg: Config) -> str:
    """The jobs/build_data.py command that builds what cfg.data describes (the refocus options are how the job
    itself would build them)."""
    import shlex

    d = cfg.data
    words = ["lare-build-data", "--source", d.source, "--out", redact(d.traces_dir)]
    if d.source == "refocus":
        words += ["--seed", str(cfg.train.seed)] if cfg.train.seed else []
        words += [f"{k}={option_text(v)}" for k, v in d.source_options.items()]
    return " ".join(shlex.quote(w) for w in words)


def bundled_traces_dirs(config_path: str | None) -> set[str]:
    """Where a missing refocus traces folder may be built without --build-data: the default data.traces_dir, and
    the folder the config file itself names for the refocus source with source_options (it says how to build it)."""
    import yaml

    dirs = {Config().with_absolute_paths().data.traces_dir}
    # The file's own data section, before overrides: an override of data.traces_dir is what may be mistyped.
    data = ((yaml.safe_load(Path(config_path).read_text()) or {}).get("data") or {}) if config_path else {}
    if data.get("source", "refocus") == "refocus" and data.get("source_options") and data.get("traces_dir"):
        named = Config.from_dict({"data": {"traces_dir": str(data["traces_dir"])}}).with_absolute_paths()
        dirs.add(named.data.traces_dir)
    return dirs


def check_traces(cfg: Config, config_path: str | None, build_data: bool) -> None:
    """Refuse, before Ray starts, a local traces folder that does not hold a build and that the job would not build:
    a typo in data.traces_dir must not train on freshly generated data."""
    d = cfg.data
    if is_remote(d.traces_dir) or (Path(d.traces_dir) / "manifest.json").is_file():
        return  # remote traces: checked where they are read
    buildable = d.source == "refocus" and not d.mixture  # what lare.train.launch.ensure_traces can build
    if buildable and (build_data or d.traces_dir in bundled_traces_dirs(config_path)):
        return
    state = "holds no traces (no manifest.json)" if Path(d.traces_dir).exists() else "does not exist"
    fix = f"build it with: {build_command(cfg)}"
    if buildable:
        fix += " (or add --build-data to let this job build it)"
    raise UserError(f"data.traces_dir {d.traces_dir} {state}; {fix}")


def check_resume_from(resume_from: str | None) -> None:
    if resume_from and not is_remote(resume_from) and not Path(resume_from).exists():
        raise UserError(f"--resume-from {resume_from}: no such checkpoint directory")


@main_guard
def main(argv=None, step_hooks=()) -> dict:
    """step_hooks: called on every worker after each optimizer step (lare.train.plan.StepEvent), e.g. a fault drill."""
    args = parse_args(argv)
    start(args.verbose)
    cfg = load_config(args.config, args.overrides).with_absolute_paths()  # ConfigError: a user error (lare.cli)
    if args.dry_run:
        from lare.sizing import dry_run, format_report

        report = dry_run(cfg)
        print(format_report(report))
        if not report["ok"]:
            raise SystemExit(1)
        return report

    check_resume_from(args.resume_from)
    check_traces(cfg, args.config, args.build_data)
    from lare.tracking import TrackingUnavailable, check_reachable, open_run, resolve_uri

    uri = resolve_uri(cfg) if cfg.tracking.enabled else ""
    if uri:
        try:
            check_reachable(uri, cfg.tracking.timeout_s)  # fail in seconds, before Ray starts
        except TrackingUnavailable as e:
            raise UserError(str(e)) from e

    from lare.progress import LiveProgress
    from lare.tracking import ui_hint
    from lare.train.launch import make_plan, make_trainer, prepare_data, storage

    # A local Ray gets a few more logical CPUs than cores: Ray Data's read tasks must not starve behind
    # the training workers' reservations (they are mostly I/O).
    with ray_for(max(os.cpu_count() or 1, cfg.train.num_workers * cfg.train.cpus_per_worker) + 2, args.verbose):
        manifest, dataset, num_rows = prepare_data(cfg)
        run_id = open_run(cfg, uri, f"{storage(cfg)[2]}/mlflow_run_id") if uri else ""
        t0 = time.time()
        with LiveProgress() as board:
            plan = make_plan(cfg, num_rows, manifest=manifest, mlflow_uri=uri, mlflow_run_id=run_id,
                             resume_from=args.resume_from, validate=not args.no_validate, step_hooks=step_hooks,
                             progress=board)
            result = make_trainer(plan, dataset).fit()
    summary = {"experiment": cfg.train.experiment, "steps": result.metrics.get("step"), "export": plan.export_uri,
               "checkpoint": result.checkpoint.path if result.checkpoint else None,
               "val_accuracy": result.metrics.get("val_accuracy"), "val_mean_tokens": result.metrics.get("val_mean_tokens"),
               "resumed_at_step": result.metrics.get("resumed_at_step"),
               "mlflow_run_id": run_id, "mlflow_uri": redact(uri), "wall_s": round(time.time() - t0, 1)}
    print(json.dumps(summary, indent=1))
    if uri:
        print(ui_hint(uri, cfg.train.experiment))
    return summary


def run() -> None:
    """The lare-train console script and jobs/train.py."""
    run_cli(main)
