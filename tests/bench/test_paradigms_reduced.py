"""A reduced run of bench/paradigms.py: two paradigms, one seed, a handful of rows. It checks the
comparison's plumbing (training through the job, evaluation on test and hard, the ablations, the JSON keys),
not the accuracies, which need the full run."""

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))


def test_reduced_paradigm_comparison(tmp_path, ray_session):
    import paradigms

    from pipelines.build import build_traces

    traces = tmp_path / "traces"
    build_traces("refocus", str(traces), options={"num_train": 16, "num_val": 4, "num_test": 6, "num_hard": 6})
    out = tmp_path / "paradigms.json"
    result = paradigms.main(["--seeds", "1", "--rows", "16", "--epochs-per-stage", "1", "--eval-limit", "6",
                             "--variants", "crop", "lare", "--traces", str(traces), "--out", str(out),
                             "train.start_stage=3", "train.batch_size=8", "data.num_val_samples=4"])
    assert json.loads(out.read_text())["table"].keys() == result["table"].keys()
    table = result["table"]
    assert {"crop", "lare", "lare[zero_latents]", "lare[uniform_refocus]"} <= set(table)
    for row in table.values():
        assert 0 <= row["test_acc"] <= 100 and 0 <= row["hard_acc"] <= 100 and row["steps"] == 2
    # token accounting drives the headline ratio: lare spends latent positions, crop re-encodes regions
    assert result["lare_tokens_over_crop"] == pytest.approx(table["lare"]["tokens_total"] / table["crop"]["tokens_total"])
    assert "lare_acc_minus_best_baseline" in result

    # An interrupted comparison resumes: finished runs are read back, not trained again.
    assert not out.with_suffix(".partial.json").exists()
    args = ["--seeds", "1", "--rows", "16", "--epochs-per-stage", "1", "--eval-limit", "6", "--traces", str(traces),
            "--out", str(out), "train.start_stage=3", "train.batch_size=8", "data.num_val_samples=4"]
    settings = {"config": str(ROOT / "configs" / "tiny.yaml"), "rows": 16, "epochs_per_stage": 1, "eval_limit": 6,
                "overrides": args[-3:]}
    out.with_suffix(".partial.json").write_text(json.dumps({"settings": settings, "runs": {"crop/s0": result["runs"]["crop"][0]}}))
    resumed = paradigms.main([*args, "--variants", "crop"])
    assert resumed["runs"]["crop"] == result["runs"]["crop"] and resumed["runs_wall_s"] == result["runs"]["crop"][0]["wall_s"]
