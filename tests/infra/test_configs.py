"""The real-scale configs: they load through the one validated config and say what a multi-node H100 run needs."""

from __future__ import annotations

import pytest
import yaml

from infra_helpers import REPO
from lare.config import all_keys, load_config

REAL = ["configs/qwen2.5-vl-7b.yaml", "configs/qwen3-vl-8b.yaml"]


@pytest.mark.parametrize("path", REAL)
def test_real_config_values(path):
    cfg = load_config(REPO / path)
    t, m, d = cfg.train, cfg.model, cfg.data
    assert m.backbone.startswith("/models/") and m.dtype == "bfloat16"
    assert t.use_gpu and t.mixed_precision == "bf16" and t.activation_checkpointing and t.fsdp
    assert t.num_workers % 8 == 0 and t.num_workers >= 16                 # whole 8-GPU nodes, multi-node
    assert 5e-6 <= t.lr <= 2e-5 and t.warmup_steps > 0
    assert t.batch_size % t.grad_accum == 0
    assert t.storage_path.startswith("s3://") and t.max_failures >= 1
    assert cfg.tracking.uri == ""                                          # MLFLOW_TRACKING_URI from the pod env
    assert set(d.mixture) == {"s3://lare-ml/traces/visual_cot", "s3://lare-ml/traces/gqa"}
    assert abs(sum(d.mixture.values()) - 1.0) < 1e-9
    assert t.num_stages == -1 and t.start_stage == 0 and t.epochs_per_stage >= 1  # the full curriculum
    assert cfg.method.paradigm == "lare" and cfg.method.latent_steps >= d.max_steps


@pytest.mark.parametrize("path", REAL)
def test_real_config_sets_every_key_explicitly_and_nothing_unknown(path):
    raw = yaml.safe_load((REPO / path).read_text())
    flat = {f"{s}.{k}" for s, sec in raw.items() for k in sec}
    assert flat <= set(all_keys())
    # Production configs spell out what they rely on, so a changed default cannot silently change a run.
    essential = {"model.backbone", "model.dtype", "model.max_pixels", "train.num_workers", "train.use_gpu",
                 "train.mixed_precision", "train.batch_size", "train.grad_accum", "train.lr", "train.storage_path",
                 "train.activation_checkpointing", "train.epochs_per_stage", "train.num_stages",
                 "method.latent_steps", "method.latents_per_step", "data.mixture", "data.max_steps"}
    assert essential <= flat, essential - flat
