"""Pieces of the training job that need no Ray: activation checkpointing with the KV-cached latent loop,
the curriculum schedule, and tracking that survives a server outage."""

import math

import torch

from tests.helpers import record, tiny_config
from lare.batch import build_batch, example_from_record
from lare.train.loop import learning_rate
from lare.train.plan import curriculum
from lare.sizing import Layout
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


def _validate_then_checkpoint(rank: int, port: int, directory: str) -> None:
    import os
    from pathlib import Path

    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from lare.train import checkpoint
    from lare.train.loop import make_optimizer
    from lare.train.validate import validate

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        cfg = tiny_config("tiny-qwen2.5-vl", "lare", "method.latent_steps=2", "train.batch_size=2")
        model = build_model(cfg, rank, 2, torch.device("cpu"), Layout("fsdp", (1, 2), "what this test is about"))
        examples = [example_from_record(record(f"v{i}", seed=i), 1) for i in range(4)]
        validate(model, examples, cfg, rank, 2, torch.device("cpu"))
        plain = [n for n, p in model.named_parameters() if not isinstance(p, DTensor)]
        assert not plain, f"gathered after validation: {plain[:3]}"
        optimizer = make_optimizer(model, cfg)  # what a new curriculum stage does right after validation
        batch = build_batch([example_from_record(record(f"t{rank}", seed=9 + rank), 1)], model.processor, cfg)
        model(batch).loss.backward()
        optimizer.step()
        checkpoint.save(Path(directory), model, optimizer, checkpoint.Position(step=1), rank)
    finally:
        dist.destroy_process_group()


def test_validation_leaves_fsdp_sharded_so_a_new_optimizer_trains_and_checkpoints(tmp_path, free_port):
    # Generation never runs backward, where FSDP2 reshards: left alone, a stage's fresh optimizer would
    # hold gathered copies that get no gradients, and get_state_dict fails on them (KeyError: 0).
    torch.multiprocessing.spawn(_validate_then_checkpoint, args=(free_port, str(tmp_path / "ckpt")), nprocs=2)
    assert (tmp_path / "ckpt" / "rank1_position.json").is_file()


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

    from lare.tracking import RunLogger

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


def test_freeze_vision_trains_the_language_model_only(records):
    from lare.train.loop import make_optimizer

    cfg = tiny_config("tiny-qwen3-vl", "direct", "train.freeze_vision=true", "train.lr=1e-2")
    model = build_model(cfg, rank=0, world=1, device=torch.device("cpu"))
    optimizer = make_optimizer(model, cfg)
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in held for p in model.vlm.model.visual.parameters())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(build_batch([example_from_record(r, 3) for r in records], model.processor, cfg)).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".visual." not in n for n in changed)
    assert any(".language_model." in n for n in changed)


def test_run_plan_is_validated_once_and_derives_the_schedule():
    import pytest

    from lare.train.plan import RunPlan

    cfg = tiny_config("tiny-qwen2.5-vl", "lare", "train.epochs_per_stage=2", "train.start_stage=1")
    plan = RunPlan(cfg, steps_per_epoch=5, experiment_uri="s3://bucket/runs/x")
    assert plan.total_steps == 5 * len(curriculum(cfg)) == 5 * 2 * 3 and plan.export_uri == "s3://bucket/runs/x/export"
    with pytest.raises(ValueError, match="steps_per_epoch"):
        RunPlan(cfg, steps_per_epoch=0, experiment_uri="runs/x")
    with pytest.raises(ValueError, match="mlflow_uri and mlflow_run_id"):
        RunPlan(cfg, steps_per_epoch=1, experiment_uri="runs/x", mlflow_uri="sqlite:///m.db")


def test_the_trainer_keeps_the_row_order_in_a_process_that_never_set_it():
    # A Tune trial builds its trainer from a dataset the driver prepared: its own DataContext has preserve_order
    # off, and Ray Train applies that process's options to the split.
    import ray

    from lare.train.launch import ingest_options

    options = ray.data.DataContext.get_current().execution_options
    before = options.preserve_order
    options.preserve_order = False
    try:
        assert ingest_options().preserve_order is True
        assert options.preserve_order is False  # the process's own context is left as it was
    finally:
        options.preserve_order = before
