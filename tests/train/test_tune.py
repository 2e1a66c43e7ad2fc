"""A 2-trial sweep on CPU: the recon_weight=0 point plus one drawn trial, each a Ray Train run with its
MLflow child run under the sweep's parent run; the best config comes back and is logged."""

import pytest

import lare.jobs.tune as tune_job

pytestmark = pytest.mark.slow


def test_two_trial_sweep(tmp_path, ray_session):
    from mlflow.tracking import MlflowClient

    from pipelines.build import build_traces

    traces = tmp_path / "traces"
    build_traces("refocus", str(traces), options={"num_train": 16, "num_val": 4, "num_test": 4, "num_hard": 4})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--num-samples", "1", "--max-concurrent", "1", "--latent-steps", "2", "4", "--name", "sweep-test",
            "model.backbone=tiny-qwen2.5-vl", f"data.traces_dir={traces}", "data.num_val_samples=4", "train.batch_size=8",
            "train.start_stage=3", "train.epochs_per_stage=1", "train.num_workers=1", "train.log_every=1",
            f"train.storage_path={tmp_path / 'runs'}", f"tracking.uri={uri}", "train.experiment=t"]
    summary = tune_job.main(args)
    trials = summary["trials"]
    assert len(trials) == 2 and any(t["method.recon_weight"] == 0.0 for t in trials)
    assert all(t["val_accuracy"] is not None and t["steps"] == 2 for t in trials)  # 16 rows / batch 8
    assert summary["best_config"]["method.latent_steps"] in (2, 4)

    client = MlflowClient(uri)
    parent = client.get_run(summary["mlflow_parent_run_id"])
    assert "best.method.recon_weight" in parent.data.tags and "best_val_accuracy" in parent.data.metrics
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2
    assert {c.data.params["method.recon_weight"] for c in children} >= {"0.0"}

    # The same sweep name again restores the sweep (Tuner.restore): its finished trials are not run again.
    again = tune_job.main(args)
    assert again["mlflow_parent_run_id"] == summary["mlflow_parent_run_id"]
    key = lambda t: (t["method.recon_weight"], t["method.latent_steps"])  # noqa: E731
    assert sorted(again["trials"], key=key) == sorted(trials, key=key)
    assert len(client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")) == 2
