"""Pieces of the training job that need no Ray: activation checkpointing with the KV-cached latent loop,
the curriculum schedule, and tracking that survives a server outage."""

import math

import torch

from tests.helpers import record, tiny_config
from lare.batch import build_batch, example_from_record
from lare.train.loop import curriculum, learning_rate
from lare.train.parallel import build_model


def test_activation_checkpointing_keeps_the_kv_cached_latent_loop_exact(records):
    # HF's own gradient checkpointing drops the KV cache; ours recomputes only what the cache allows.
    cfg = tiny_config("tiny-qwen3-vl", "lare")
    ckpt_cfg = tiny_config("tiny-qwen3-vl", "lare", "train.activation_checkpointing=true")
    plain = build_model(cfg, rank=0, world=1, device=torch.device("cpu"))
    ckpt = build_model(ckpt_cfg, rank=0, world=1, device=torch.device("cpu"))
    ckpt.load_state_dict(plain.state_dict())
    batch = build_batch([example_from_record(r, 3) for r in records], plain.processor, cfg)
    a, b = plain(batch), ckpt(batch)
    torch.testing.assert_close(a.loss, b.loss)
    a.loss.backward()
    b.loss.backward()
    grads_a = dict(plain.named_parameters())
    for name, p in ckpt.named_parameters():
        name = name.replace("._checkpoint_wrapped_module", "")
        torch.testing.assert_close(p.grad, grads_a[name].grad, atol=1e-6, rtol=1e-5, msg=name)


def test_curriculum_and_schedule():
    cfg = tiny_config("tiny-qwen2.5-vl", "lare", "train.epochs_per_stage=2", "data.max_steps=3")
    assert curriculum(cfg) == [0, 0, 1, 1, 2, 2, 3, 3]
    late = tiny_config("tiny-qwen2.5-vl", "lare", "train.start_stage=3", "train.epochs_per_stage=1")
    assert curriculum(late) == [3]
    cfg = tiny_config("tiny-qwen2.5-vl", "lare", "train.warmup_steps=10", "train.lr=1e-3")
    assert learning_rate(cfg, 0, 100) == 1e-4 and learning_rate(cfg, 9, 100) == 1e-3
    assert math.isclose(learning_rate(cfg, 100, 100), 1e-4)  # cosine down to a tenth


def test_tracking_outage_mid_run_is_survived(tmp_path):
    from mlflow.tracking import MlflowClient

    from lare.train.tracking import RunLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("outage")).info.run_id
    logger = RunLogger(uri, run_id, system_metrics=False)
    real, down = logger.client.log_batch, {"now": True}

    def flaky(*args, **kwargs):
        if down["now"]:
            raise ConnectionError("tracking server unreachable")
        return real(*args, **kwargs)

    logger.client.log_batch = flaky
    logger.metrics(1, {"train/loss": 2.0, "nan_is_skipped": float("nan")})
    logger.metrics(2, {"train/loss": 1.0})       # no exception: training goes on
    assert len(logger.pending) == 2
    down["now"] = False                           # the server is back: the backlog goes first
    logger.metrics(3, {"train/loss": 0.5})
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))
    assert history == [(1, 2.0), (2, 1.0), (3, 0.5)] and not logger.pending
    logger.close()
    assert client.get_run(run_id).info.status == "FINISHED"


def test_record_helper_is_valid():
    assert example_from_record(record("x"), 3).steps[0].box == [0.1, 0.1, 0.3, 0.3]
