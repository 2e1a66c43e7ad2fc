"""A reduced run of bench/paradigms.py: two variants, one seed, a handful of rows, as the Tune grid it is. It checks
the comparison's plumbing (training through the job, evaluation on test and hard, the eval-time ablations, the
intervals and paired differences, the JSON keys, resuming), not the accuracies, which need the full run."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_reduced_paradigm_comparison(tmp_path, ray_session):
    from bench import paradigms

    from pipelines.build import build_traces

    traces = tmp_path / "traces"
    build_traces("refocus", str(traces), options={"num_train": 16, "num_val": 4, "num_test": 6, "num_hard": 6})
    out = tmp_path / "paradigms.json"
    args = ["--seeds", "1", "--rows", "16", "--epochs-per-stage", "1", "--eval-limit", "6", "--bootstrap", "200",
            "--variants", "crop", "lare", "--traces", str(traces), "--out", str(out), "--storage", str(tmp_path / "runs"),
            "model.backbone=tiny-qwen3-vl", "train.start_stage=3", "train.batch_size=8",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    result = paradigms.main(args)
    assert json.loads(out.read_text())["analysis"]["table"].keys() == result["analysis"]["table"].keys()
    assert "| lare (seeds 1) |" in out.with_suffix(".md").read_text()
    table = result["analysis"]["table"]
    assert {"crop", "lare", "lare[zero_latents]", "lare[shuffle_refocus]", "lare[uniform_refocus]", "lare[gold_focus]",
            "crop[gold_boxes]", "crop[other_image]", "lare[other_image]"} == set(table)
    assert result["analysis"]["rows_evaluated"] == 12 and not result["failed_trials"]
    for row in table.values():
        ov = row["overall"]
        assert 0 <= ov["lo"] <= ov["acc"] <= ov["hi"] <= 100 and ov["rows"] == 12
        assert {"split:test", "split:hard"} <= set(row)
    pair = result["analysis"]["paired"]["lare - crop"]["overall"]
    assert pair["diff"] == pytest.approx(table["lare"]["overall"]["acc"] - table["crop"]["overall"]["acc"])
    # how much each variant looks: its accuracy minus its accuracy about another row's image, paired
    looks = result["analysis"]["paired"]["crop - crop[other_image]"]["overall"]
    assert looks["diff"] == pytest.approx(table["crop"]["overall"]["acc"] - table["crop[other_image]"]["overall"]["acc"])
    assert "lare - crop[other_image]" not in result["analysis"]["paired"]
    # the crop oracle (the trace's boxes cropped) against crop as it is
    both = result["analysis"]["paired"]["lare[gold_focus] - crop[gold_boxes]"]["overall"]  # the two oracles
    assert both["diff"] == pytest.approx(table["lare[gold_focus]"]["overall"]["acc"] - table["crop[gold_boxes]"]["overall"]["acc"])
    oracle = result["analysis"]["paired"]["crop[gold_boxes] - crop"]["overall"]
    assert oracle["diff"] == pytest.approx(table["crop[gold_boxes]"]["overall"]["acc"] - table["crop"]["overall"]["acc"])
    head = result["headline"]
    # inference tokens: lare spends latent positions, crop re-encodes regions (both generate the answer)
    assert head["lare_tokens_over_crop"] == pytest.approx(table["lare"]["tokens_inference"] / table["crop"]["tokens_inference"])
    assert head["lare_total_tokens_over_crop"] == pytest.approx(table["lare"]["tokens_total"] / table["crop"]["tokens_total"])
    assert "lare_acc_minus_best_baseline" in head and "overall" in result["baselines_by_family"]
    # where each variant looked against the traces' boxes: crop's written boxes, lare's refocus maps
    crop_g, lare_g = table["crop"]["grounding"]["overall"], table["lare"]["grounding"]["overall"]
    assert 0 <= crop_g["box_iou"] <= 1 and crop_g["focus_in_box"] != crop_g["focus_in_box"]
    assert 0 <= lare_g["focus_in_box"] <= 100 and 0 < lare_g["focus_chance"] < 100 and lare_g["box_iou"] != lare_g["box_iou"]
    assert "Where each variant looked" in out.with_suffix(".md").read_text()
    assert result["wall_s"] > 0

    # The evaluation is logged to each trial's MLflow child run, under one parent.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("paradigms")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 2 and all("eval/test_acc" in r.data.metrics for r in children)
    (parent,) = [r for r in runs if not r.data.tags.get("mlflow.parentRunId")]
    assert parent.data.metrics["lare/overall/acc"] == pytest.approx(table["lare"]["overall"]["acc"])
    assert "lare-crop/overall/diff" in parent.data.metrics and "question_only/overall" in parent.data.metrics

    # The same name resumes: finished trials are read back, not trained again.
    again = paradigms.main(args)
    assert {(t["variant"], t["seed"], t["steps"]) for t in again["trials"]} == {(t["variant"], t["seed"], t["steps"]) for t in result["trials"]}
    assert again["analysis"]["table"]["lare"]["overall"] == table["lare"]["overall"]
    # The report of a comparison in progress reads the finished trials from disk and trains nothing.
    only = paradigms.main([*args, "--analyse-only"])
    assert only["analysis"]["table"]["crop"]["overall"] == table["crop"]["overall"]
    assert only["wall_s"] >= result["wall_s"]  # the grid's wall time (both runs of it), not the analysis's
    # A finished comparison gains an evaluation-time ablation without training: the trials' predictions are
    # re-evaluated and merged (replaced, not duplicated), and the report reads them.
    predictions = json.loads(next((tmp_path / "runs").glob("paradigms/trials/paradigms-crop-s0/predictions.json")).read_text())
    more = paradigms.main([*args, "--add-ablations", "gold_boxes", "zero_latents"])
    after = json.loads(next((tmp_path / "runs").glob("paradigms/trials/paradigms-crop-s0/predictions.json")).read_text())
    assert sorted(map(json.dumps, after)) == sorted(map(json.dumps, predictions))
    assert more["analysis"]["table"]["crop[gold_boxes]"]["overall"] == table["crop[gold_boxes]"]["overall"]
    assert {(t["variant"], t["steps"]) for t in more["trials"]} == {(t["variant"], t["steps"]) for t in result["trials"]}
