"""Pretraining the tiny backbone (jobs/pretrain.py): the dense labels are true to the scene, a short stage A makes the
probe rise, the job runs both stages and bundles a loadable backbone with its model card."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lare.backbone import load_backbone
from lare.config import load_config
from lare.pretrain import (BACKGROUND_SHAPE, StageA, VisionProbe, draw_scene, object_index_map, probe_accuracy,
                           run_stage_a, token_labels)
from pipelines.sources.refocus import SHAPES, tight_box

ROOT = Path(__file__).resolve().parents[2]


def test_token_labels_name_the_object_that_covers_each_cell():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scene = draw_scene(rng)
        shape, colour, main, box = token_labels(scene, grid=7)
        index = object_index_map(scene)
        for n, obj in enumerate(scene.objects):
            x1, y1, x2, y2 = obj["box"]
            assert (index[y1:y2, x1:x2] == n + 1).any(), "every object is drawn in its own box"
            if main[n] < 0:
                continue
            r, c = divmod(int(main[n]), 7)
            cell = index[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32]
            assert (cell == n + 1).sum() == max((cell == k).sum() for k in range(1, len(scene.objects) + 1))
            assert SHAPES[shape[main[n]]] == obj["shape"]
            np.testing.assert_allclose(box[main[n]] * 224, tight_box(obj), atol=1e-3)  # the object's own box
        assert (main >= 0).mean() > 0.8
        labelled = shape != BACKGROUND_SHAPE
        assert 0 < labelled.sum() <= 4 * len(scene.objects) and (colour[~labelled] == 8).all()
        assert np.isnan(box[~labelled]).all() and not np.isnan(box[labelled]).any()


def test_a_short_stage_a_makes_the_colour_probe_rise():
    torch.manual_seed(0)
    vlm, processor = load_backbone(load_config(None, ["model.backbone=tiny-qwen3-vl"]).model)
    probe = VisionProbe(64)
    before = probe_accuracy(vlm, probe, processor, seed=1000, scenes=64)
    run_stage_a(vlm, processor, StageA(steps=120, batch_size=8, lr=3e-3, warmup_steps=10), probe=probe)
    after = probe_accuracy(vlm, probe, processor, seed=1000, scenes=64)
    assert after["probe_colour_acc"] > max(0.5, before["probe_colour_acc"] + 0.3), (before, after)
    assert after["probe_token_shape_acc"] > before["probe_token_shape_acc"]
    # the box head learns where (IoU is harsh this early: about 0.015 after 120 steps, from 0.0006)
    assert after["probe_box_iou"] > max(0.01, 5 * before["probe_box_iou"]), (before, after)


@pytest.mark.slow
def test_the_job_runs_both_stages_and_bundles_a_loadable_backbone(tmp_path, ray_session, monkeypatch):
    from lare.jobs import pretrain

    bundle = tmp_path / "bundle"
    monkeypatch.setattr(pretrain, "BUNDLE", bundle)
    summary = pretrain.main(["--out", str(tmp_path / "out"), "--stage-a-steps", "6", "--stage-a-batch", "4",
                             "--probe-scenes", "16", "--bundle",
                             "data.source_options={families: grounding, num_train: 32, num_val: 4, num_test: 8, num_hard: 0}",
                             "train.batch_size=8", "data.num_val_samples=4", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    assert summary["stage_a"]["steps"] == 6 and summary["stage_b"]["steps"] == 4  # 32 rows / 8, each seen once
    assert {"probe_shape_acc", "grounding_where_is_mean_iou", "grounding_what_is_at_acc"} <= set(summary["probes"])
    assert 0 <= summary["probes"]["lookup_other_image_acc"] <= 1 and 0 <= summary["probes"]["lookup_acc"] <= 1
    card = (bundle / "README.md").read_text()
    assert "python jobs/pretrain.py --out" in card and "per-object shape accuracy" in card
    assert json.loads((bundle / "pretrain.json").read_text())["probes"] == summary["probes"]
    assert not list(bundle.glob("lare_*")), "the bundle is a backbone, not a LaRe model"
    vlm, _ = load_backbone(load_config(None, [f"model.backbone={bundle}"]).model)
    assert vlm.config.model_type == "qwen3_vl"



def test_the_bundled_backbone_sees_shapes_on_fresh_scenes():
    """The weights in the package, re-measured on scenes of a seed neither stage trained on nor the model card used."""
    from lare.backbone import PRETRAINED
    from lare.pretrain import vision_probes

    folder = PRETRAINED["tiny-qwen3-vl-pretrained"]
    card = json.loads((folder / "pretrain.json").read_text())
    probes = vision_probes(folder, folder, seed=424242, scenes=128)
    assert probes["probe_shape_acc"] >= 0.88 and probes["probe_colour_acc"] >= 0.97, probes
    assert probes["probe_box_iou"] >= 0.35, probes  # and where its object is, inside the token's cell
    assert probes["probe_token_position_acc"] >= 0.95, probes  # where a token sits stays readable
    assert abs(probes["probe_shape_acc"] - card["probes"]["probe_shape_acc"]) < 0.06
    vlm, processor = load_backbone(load_config(None, ["model.backbone=tiny-qwen3-vl-pretrained"]).model)
    assert sum(p.numel() for p in vlm.parameters()) < 2_000_000 and (folder / "README.md").is_file()


def test_the_bundled_language_model_reads_the_image():
    """Stage B's language model answers one-hop lookups ("What colour is the circle?") on fresh scenes better about
    the row's own image than about another's: it attends to what the question names."""
    from lare.backbone import PRETRAINED
    from lare.pretrain import grounding_probes

    folder = PRETRAINED["tiny-qwen3-vl-pretrained"]
    probes = grounding_probes(folder, seed=424242, rows=128)
    assert probes["lookup_acc"] - probes["lookup_other_image_acc"] >= 0.05, probes


def test_the_model_card_lists_every_warm_restart_back_to_random_weights():
    """A bundle built by restarting stage A from an earlier bundle accounts for the whole budget: one row per
    stage A run, oldest first, and every command that built it."""
    from lare.pretrain import model_card

    first = {"steps": 6000, "batch_size": 32, "lr": 2e-3, "wall_s": 3273, "probe_shape_acc": 0.792}
    second = {"steps": 5000, "batch_size": 32, "lr": 1e-3, "wall_s": 2516, "probe_shape_acc": 0.84,
              "restart_of": {"commands": ["cmd-1"], **first}}
    summary = {"commands": ["cmd-3"], "bundled": "a", "seed": 0,
               "stage_a": {"steps": 0, "batch_size": 32, "lr": 2e-3, "wall_s": 27,
                           "restart_of": {"commands": ["cmd-1", "cmd-2"], **second}, "probes": {"probe_shape_acc": 0.84}}}
    card = model_card(summary)
    rows = [line for line in card.splitlines() if line.startswith("| A")]
    assert [r.split("|")[3].strip() for r in rows] == ["6000", "5000", "0"]
    assert "from random weights; shape probe 79.2 %" in rows[0] and "warm restart from the row above" in rows[1]
    assert "`cmd-1`; `cmd-2`; `cmd-3`" in card
    # records from before the rectangle replaced the hexagon say so; a record of today's shapes says nothing
    assert all("a hexagon where the rectangle is now" in r for r in rows[:2])
    summary["stage_a"]["restart_of"]["shapes"] = list(SHAPES)
    rows = [line for line in model_card(summary).splitlines() if line.startswith("| A")]
    assert "hexagon" in rows[0] and "hexagon" not in rows[1]
