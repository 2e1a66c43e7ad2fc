"""jobs/train.py end to end on CPU: FSDP2 on 2 gloo workers, a killed worker and an exact resume,
S3 storage through a real moto_server, tracking against a real mlflow server, and the clear errors."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lare.jobs.train as train_job
from tests.helpers import FailOnce

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.backbone=tiny-qwen2.5-vl", "method.latent_steps=2", "method.latents_per_step=1", "train.batch_size=4",
        "train.epochs_per_stage=1", "train.start_stage=2", "train.log_every=1", "train.warmup_steps=2", "train.lr=5e-3",
        "data.num_val_samples=8", "train.cpus_per_worker=1"]


@pytest.fixture(scope="module")
def traces(tmp_path_factory, ray_session):
    from pipelines.build import build_traces

    out = tmp_path_factory.mktemp("traces") / "refocus"
    build_traces("refocus", str(out), seed=0, options={"num_train": 48, "num_val": 8, "num_test": 8, "num_hard": 8})
    return out


def run(tmp, traces, *extra, experiment="t", storage=None, tracking=None, args=(), step_hooks=()):
    overrides = [*TINY, f"data.traces_dir={traces}", f"train.experiment={experiment}",
                 f"train.storage_path={storage or tmp / 'runs'}",
                 f"tracking.uri={tracking or 'sqlite:///' + str(tmp / 'mlflow.db')}", *extra]
    return train_job.main([*args, *overrides], step_hooks=step_hooks)


def export_weights(path) -> dict[str, torch.Tensor]:
    weights = load_file(Path(path) / "model.safetensors")
    weights.update({f"heads.{k}": v for k, v in load_file(Path(path) / "lare_heads.safetensors").items()})
    return weights


def loss_history(client, run_id: str) -> list[float]:
    history = client.get_metric_history(run_id, "train/loss")
    steps = sorted(m.step for m in history)
    assert steps == list(range(1, 13)), f"one train/loss point per step expected, got steps {steps}"
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def test_two_workers_fsdp_loss_falls_and_a_killed_worker_resumes_exactly(tmp_path, traces):
    from mlflow.tracking import MlflowClient

    # fsdp named: auto would pick ddp for the tiny model (the layouts' own equivalence: tests/train/test_parallel.py)
    common = ("train.num_workers=2", "train.parallelism=fsdp", "train.checkpoint_every=3", "train.keep_checkpoints=5")
    clean = run(tmp_path, traces, *common, experiment="clean")
    # 48 rows / 2 workers / batch 4 = 6 steps per epoch; stages 2 and 3: 12 steps
    assert clean["steps"] == 12
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tags = client.get_run(clean["mlflow_run_id"]).data.tags
    assert tags["parallelism.layout"] == "fsdp" and tags["parallelism.mesh"] == "[1, 2]", tags
    losses = loss_history(client, clean["mlflow_run_id"])
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    # The summary's validation is the final one (step 12 is a checkpoint step and a stage end: reported once).
    val = max(client.get_metric_history(clean["mlflow_run_id"], "val_accuracy"), key=lambda m: m.step)
    assert val.step == 12 and clean["val_accuracy"] == val.value

    marker = tmp_path / "crashed.failed-once"
    crashed = run(tmp_path, traces, *common, experiment="crashed", step_hooks=[FailOnce(5, marker)])
    assert crashed["steps"] == 12
    assert marker.exists()  # the worker really died once
    assert clean["resumed_at_step"] == -1 and crashed["resumed_at_step"] == 3  # from the step-3 checkpoint
    # Steps 4 and 5 ran twice (checkpoint at 3, death at 5): the history still has each step once.
    assert loss_history(client, crashed["mlflow_run_id"]) == losses
    a, b = export_weights(clean["export"]), export_weights(crashed["export"])
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name

    # The export loads in one process, without Ray, and generates.
    from lare.batch import build_batch
    from lare.model import LaReModel
    from lare.train.data import read_examples

    model = LaReModel.from_pretrained(clean["export"])
    examples = read_examples(str(traces), "test", model.cfg, limit=2)
    gen = model(build_batch(examples, model.processor, model.cfg, prompt_only=True), mode="generate")
    assert len(gen.answers) == 2 and all(t["latent"] == 2 for t in gen.tokens)


def test_s3_storage_and_mlflow_server_with_resume_by_name(tmp_path, traces, moto_s3, mlflow_server):
    import boto3
    from mlflow.tracking import MlflowClient

    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket="lare-runs")
    first = run(tmp_path, traces, "train.num_workers=1", "train.checkpoint_every=100", experiment="s3run",
                storage="s3://lare-runs/exp", tracking=mlflow_server)
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=moto_s3).list_objects_v2(Bucket="lare-runs")["Contents"]]
    assert any(k.startswith("exp/s3run/step_0000024/") and k.endswith(".distcp") for k in keys)  # 48/4 = 12 x 2 stages
    assert "exp/s3run/export/model.safetensors" in keys and "exp/s3run/mlflow_run_id" in keys

    client = MlflowClient(mlflow_server)
    run_info = client.get_run(first["mlflow_run_id"])
    assert run_info.data.params["method.paradigm"] == "lare" and run_info.data.params["train.num_workers"] == "1"
    assert "train/answer_ce" in run_info.data.metrics and "val_accuracy" in run_info.data.metrics
    artifacts = {a.path for a in client.list_artifacts(first["mlflow_run_id"])}
    assert {"config.yaml", "validation.json", "model", "data"} <= artifacts

    again = run(tmp_path, traces, "train.num_workers=1", "train.checkpoint_every=100", experiment="s3run",
                storage="s3://lare-runs/exp", tracking=mlflow_server)
    assert again["steps"] == 24 and again["mlflow_run_id"] == first["mlflow_run_id"]  # resumed, not retrained


def cli(*args, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "train.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_traces_built_with_other_source_options_are_refused(traces):
    """The demo's traces folder holds the colour-only variant: training must never silently use other data."""
    from lare.config import load_config
    from lare.train.launch import ensure_traces

    same = load_config(None, [f"data.traces_dir={traces}", "data.source_options={num_train: 48, colour_only: false}"])
    assert ensure_traces(same)["options"]["num_train"] == 48
    other = load_config(None, [f"data.traces_dir={traces}", "data.source_options={colour_only: true}"])
    with pytest.raises(SystemExit, match=r"other options .*'colour_only': \(False, True\)"):
        ensure_traces(other)


def test_traces_of_an_older_generator_are_refused(traces, tmp_path):
    """The same seed and options draw other rows when the generator changes (the hexagon became a rectangle):
    traces of another generator version are refused, not trained on."""
    import shutil

    from lare.config import load_config
    from lare.train.launch import ensure_traces
    from pipelines.sources.refocus import VERSION

    old = tmp_path / "old-traces"
    shutil.copytree(traces, old)
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest["source_version"] == VERSION
    (old / "manifest.json").write_text(json.dumps(dict(manifest, source_version=VERSION - 1)))
    cfg = load_config(None, [f"data.traces_dir={old}", "data.source_options={num_train: 48, colour_only: false}"])
    with pytest.raises(SystemExit, match=rf"'generator version': \({VERSION - 1}, {VERSION}\)"):
        ensure_traces(cfg)


def test_bad_config_is_a_clear_error():
    out = cli("method.recon_wieght=1")
    assert out.returncode != 0 and "did you mean 'method.recon_weight'" in out.stderr
    out = cli("--config", "does/not/exist.yaml")
    assert out.returncode != 0 and "file not found: does/not/exist.yaml" in out.stderr


def test_unreachable_tracking_server_fails_within_seconds(free_port):
    t0 = time.monotonic()
    out = cli(f"tracking.uri=http://127.0.0.1:{free_port}", "tracking.timeout_s=2")
    assert out.returncode != 0 and "did not answer within 2s" in out.stderr
    assert time.monotonic() - t0 < 30


def test_help_lists_every_option():
    from lare.config import all_keys

    out = cli("--help")
    assert out.returncode == 0
    for key in all_keys():
        assert key in out.stdout
