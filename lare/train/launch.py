"""From a Config to a ready TorchTrainer: traces, the Ray Dataset, storage, and the Ray Train settings.

Shared by jobs/train.py (one run) and jobs/tune.py (one run per trial).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import ray
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from lare.config import Config
from lare.storage import is_remote, redact, worker_env
from lare.train.data import steps_per_epoch, training_dataset
from lare.train.loop import train_loop_per_worker
from lare.train.plan import RunPlan

log = logging.getLogger("lare.train")


def ensure_traces(cfg: Config) -> dict:
    """The bundled refocus traces are built when missing; other sources must be built with jobs/build_data.py.
    Traces already there must have been built with data.source_options: training on other data silently is worse
    than stopping."""
    from pipelines.io import read_manifest

    try:
        manifest = read_manifest(cfg.data.traces_dir)
    except (FileNotFoundError, OSError):
        manifest = None
    if manifest is not None:
        built = manifest.get("options", {})
        differ = {k: (built.get(k), v) for k, v in cfg.data.source_options.items() if str(built.get(k)).lower() != str(v).lower()}
        version = _source_version(cfg.data.source)
        if version is not None and manifest.get("source_version") != version:
            differ["generator version"] = (manifest.get("source_version"), version)
        if differ:
            raise SystemExit(f"error: the traces at {redact(cfg.data.traces_dir)} were built with other options than "
                             f"data.source_options (option: (built, asked)) {differ}; point data.traces_dir at a new "
                             "folder or remove this one to rebuild it")
        return manifest
    if cfg.data.source != "refocus" or is_remote(cfg.data.traces_dir) or cfg.data.mixture:
        raise SystemExit(f"error: no traces at {redact(cfg.data.traces_dir)}; build them first: "
                         f"lare-build-data --source {cfg.data.source} --out {redact(cfg.data.traces_dir)}")
    from pipelines.build import build_traces

    log.info("building the refocus traces into %s", cfg.data.traces_dir)
    return build_traces("refocus", cfg.data.traces_dir, seed=cfg.train.seed, options=cfg.data.source_options)


def _source_version(source: str):
    """The VERSION of a generating reader (pipelines.build records it as the manifest's source_version); None for
    readers of fixed files and for names that are no reader (a mixture is checked part by part where it is built)."""
    from pipelines.sources import SOURCE_TYPES, get_source

    return getattr(get_source(source), "VERSION", None) if source in SOURCE_TYPES else None


def storage(cfg: Config) -> tuple[str, object, str]:
    """(Ray's storage_path, its filesystem or None, the URI prefix of this experiment)."""
    path = cfg.train.storage_path
    if path.startswith("s3://"):
        from lare.storage import s3_filesystem

        return path[len("s3://"):].rstrip("/"), s3_filesystem(), f"{path.rstrip('/')}/{cfg.train.experiment}"
    local = str(Path(path).resolve())
    return local, None, f"{local}/{cfg.train.experiment}"


def worker_env_vars() -> dict[str, str]:
    """The settings every training worker gets through runtime_env. Never credentials: Ray writes runtime_env to
    its logs (runtime_env_agent.log). Workers inherit those from the Ray the job started (ensure_ray starts it with
    this environment), or from the cluster's own environment (lare.rayenv)."""
    from lare.rayenv import runtime_env_vars

    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "TOKENIZERS_PARALLELISM": "false", **runtime_env_vars(worker_env())}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def make_plan(cfg: Config, num_rows: int, *, manifest: dict, mlflow_uri: str = "", mlflow_run_id: str = "",
              resume_from: str | None = None, validate: bool = True, step_hooks=(), progress=None) -> RunPlan:
    """The run as every worker will see it, decided here once: the config, the schedule's length, where it lives."""
    return RunPlan(config=cfg, steps_per_epoch=steps_per_epoch(num_rows, cfg), experiment_uri=storage(cfg)[2],
                   manifest=json.dumps(manifest, indent=1, default=str), mlflow_uri=mlflow_uri,
                   mlflow_run_id=mlflow_run_id, resume_from=resume_from, validate=validate, step_hooks=tuple(step_hooks),
                   progress=progress)


def make_trainer(plan: RunPlan, dataset: ray.data.Dataset, *, callbacks: list | None = None,
                 controller_failure_limit: int = -1) -> TorchTrainer:
    cfg = plan.config
    storage_path, storage_fs, _ = storage(cfg)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"plan": plan},
        scaling_config=ScalingConfig(num_workers=max(1, cfg.train.num_workers), use_gpu=cfg.train.use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=RunConfig(
            name=cfg.train.experiment, storage_path=storage_path, storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                               checkpoint_score_attribute=cfg.train.checkpoint_score or None,
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures,
                                         controller_failure_limit=controller_failure_limit),
            worker_runtime_env={"env_vars": worker_env_vars()}, callbacks=callbacks),
        datasets={"train": dataset},
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=ingest_options()),
    )


def ingest_options() -> "ray.data.ExecutionOptions":
    """The Ray Data options the trainer's split runs under: this process's, with the row order fixed. Ray Train
    replaces the dataset's own options by these, and a process that never read the data itself (a Tune trial
    given a dataset the driver prepared) has preserve_order off: two runs of one seed then saw their rows in
    different orders and trained differently (the demo's direct: 32.6 % and 28.3 %). With the order fixed the
    split hands blocks to workers in a fixed way, so a resumed run sees exactly the batches an uninterrupted one
    would."""
    options = copy.copy(ray.data.DataContext.get_current().execution_options)
    options.preserve_order = True
    return options


def prepare_data(cfg: Config) -> tuple[dict, ray.data.Dataset, int]:
    """(the traces' manifest, the training dataset, its row count); builds the bundled traces if missing."""
    manifest = ensure_traces(cfg)
    dataset, rows = training_dataset(cfg)
    return manifest, dataset, rows
