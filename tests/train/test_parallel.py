"""The layouts of lare/train/parallel.py on CPU (gloo): ddp, fsdp and hsdp train exactly like one process, and a
checkpoint saved under one layout and world size resumes under another. Plus how `auto` chooses.

Equivalence needs the same global batch, seed and data order everywhere: each step's global batch is 4 records,
cut into micro-batches of one; W workers take 4/W consecutive records each and accumulate them, one process takes
all 4. Every layout then averages the same four per-record losses (gradient averaging over ranks is the mean of the
ranks' means), so the only difference left is the order of floating-point sums.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import record, tiny_config
from lare.config import ConfigError, load_config
from lare.sizing import GIB, choose_layout

GLOBAL_BATCH = 4
RTOL = 1e-5  # fp32, sums in another order; a wrong gradient average (e.g. summed over ranks) is off by far more


def _records(step: int) -> list[dict]:
    sizes = [(224, 224), (168, 224), (224, 140), (196, 196)]  # mixed image sizes: padding must not matter
    return [record(f"s{step}r{i}", width=w, height=h, seed=10 * step + i, answer=("red", "blue", "green", "pink")[i],
                   question="What colour is the object left of the star?",
                   steps=[{"text": "Find the star.", "bbox": [0.1, 0.1, 0.3, 0.3]},
                          {"text": "Look left of it.", "bbox": [0.0, 0.1, 0.15, 0.3]}])
            for i, (w, h) in enumerate(sizes)]


def _config(kind: str, world: int, mesh=None):
    overrides = ["method.latent_steps=2", "data.max_steps=2", f"train.parallelism={kind}", f"train.num_workers={world}",
                 f"train.grad_accum={GLOBAL_BATCH // world}", f"train.batch_size={GLOBAL_BATCH // world}",
                 "train.lr=1e-3", "train.grad_clip=1.0"]
    if mesh:
        overrides.append(f"train.mesh=[{mesh[0]},{mesh[1]}]")
    return tiny_config("tiny-qwen2.5-vl", "lare", *overrides)


class _Losses:
    """Stands in for the loop's Reporter: keeps each micro-batch's loss."""

    def __init__(self):
        self.values = []

    def add(self, terms, samples, tokens):
        self.values.append(terms["loss"])


def _train(kind: str, rank: int, world: int, first: int, steps: int, mesh=None, load: str = "", save: str = "") -> list[float]:
    """`steps` optimizer steps from global step `first` (after loading `load`); the global mean loss of each."""
    import torch.distributed as dist

    from lare.batch import build_batch, example_from_record
    from lare.train import checkpoint
    from lare.train.loop import make_optimizer, train_step
    from lare.train.parallel import autocast, build_model, choose

    torch.manual_seed(0)
    cfg = _config(kind, world, mesh)
    device = torch.device("cpu")
    layout = choose(cfg, world, world, device)
    assert layout.kind == kind and (not mesh or layout.mesh == tuple(mesh)), layout
    model = build_model(cfg, rank, world, device, layout)
    optimizer = make_optimizer(model, cfg)
    if load:
        checkpoint.load(Path(load), model, optimizer, rank)
    per_rank = GLOBAL_BATCH // world
    losses = []
    for step in range(first, first + steps):
        mine = _records(step)[rank * per_rank:(rank + 1) * per_rank]
        micro = [build_batch([example_from_record(r, 2)], model.processor, cfg) for r in mine]
        seen = _Losses()
        train_step(model, optimizer, micro, cfg, device, seen, autocast(cfg, layout, device))
        total = torch.tensor([sum(seen.values), len(seen.values)], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(total)
        losses.append((total[0] / total[1]).item())
    if save:
        checkpoint.save(Path(save), model, optimizer, checkpoint.Position(step=first + steps), rank)
    return losses


def _worker(rank: int, world: int, port: int, out: str, plan: list[dict]) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        results = {run["name"]: _train(run["kind"], rank, world, run["first"], run["steps"], run.get("mesh"),
                                       run.get("load", ""), run.get("save", "")) for run in plan}
        if rank == 0:
            Path(out).write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def _spawn(world: int, port: int, tmp_path: Path, plan: list[dict]) -> dict:
    out = tmp_path / f"losses_{world}.json"
    torch.multiprocessing.spawn(_worker, args=(world, port, str(out), plan), nprocs=world)
    return json.loads(out.read_text())


def test_every_layout_trains_like_one_process_and_resumes_under_another(tmp_path, free_port):
    torch.set_num_threads(1)
    reference = _train("ddp", 0, 1, first=0, steps=4)  # one process: nothing wrapped
    assert reference[3] < reference[0]  # it learns: the comparison below is not of constants

    fsdp4 = str(tmp_path / "fsdp4")
    four = _spawn(4, free_port, tmp_path, [
        {"name": "hsdp", "kind": "hsdp", "mesh": [2, 2], "first": 0, "steps": 3},
        {"name": "fsdp_save", "kind": "fsdp", "first": 0, "steps": 2, "save": fsdp4},
    ])
    ddp2 = str(tmp_path / "ddp2")
    two = _spawn(2, free_port + 1, tmp_path, [
        {"name": "ddp", "kind": "ddp", "first": 0, "steps": 3},
        {"name": "fsdp", "kind": "fsdp", "first": 0, "steps": 3},
        {"name": "ddp_resumed", "kind": "ddp", "first": 2, "steps": 1, "load": fsdp4, "save": ddp2},
    ])
    one_resumed = _train("ddp", 0, 1, first=3, steps=1, load=ddp2)

    for name, losses in [("ddp 2", two["ddp"]), ("fsdp 2", two["fsdp"]), ("hsdp 2x2", four["hsdp"]),
                         ("fsdp 4", four["fsdp_save"])]:
        torch.testing.assert_close(losses, reference[:len(losses)], rtol=RTOL, atol=0, msg=name)
    # 4-worker fsdp -> 2-worker ddp -> 1 worker: the model and AdamW state move across layouts and world sizes
    torch.testing.assert_close(two["ddp_resumed"], reference[2:3], rtol=RTOL, atol=0, msg="fsdp 4 -> ddp 2")
    torch.testing.assert_close(one_resumed, reference[3:4], rtol=RTOL, atol=0, msg="ddp 2 -> 1 worker")


def test_auto_picks_ddp_when_it_fits_hsdp_across_nodes_fsdp_otherwise():
    cfg = load_config(None, ["train.num_workers=16"])
    small, big = 10 * GIB, 60 * GIB
    assert choose_layout(cfg, 16, 8, small, 80 * GIB).kind == "ddp"
    across = choose_layout(cfg, 16, 8, big, 80 * GIB)
    assert (across.kind, across.mesh) == ("hsdp", (2, 8)) and "2 nodes" in across.why
    one_node = choose_layout(cfg, 8, 8, big, 80 * GIB)
    assert (one_node.kind, one_node.mesh) == ("fsdp", (1, 8)) and "over half" in one_node.why
    forced = choose_layout(load_config(None, ["train.num_workers=16", "train.parallelism=fsdp"]), 16, 8, small, 80 * GIB)
    assert (forced.kind, forced.mesh) == ("fsdp", (1, 16))
    meshed = choose_layout(load_config(None, ["train.num_workers=16", "train.mesh=[4,4]"]), 16, 8, big, 80 * GIB)
    assert (meshed.kind, meshed.mesh) == ("hsdp", (4, 4))


@pytest.mark.parametrize("overrides,message", [
    (["train.num_workers=4", "train.mesh=[3,2]"], "must equal train.num_workers=4"),
    (["train.num_workers=4", "train.mesh=[2,2]", "train.parallelism=ddp"], "shard must be 1"),
    (["train.num_workers=4", "train.mesh=[2,2]", "train.parallelism=fsdp"], "replicate must be 1"),
    (["train.num_workers=4", "train.mesh=[4]"], "two positive integers"),
])
def test_a_mesh_that_cannot_be_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError, match="train.mesh"):
        load_config(None, overrides)
    try:
        load_config(None, overrides)
    except ConfigError as e:
        assert message in str(e)


def test_ddp_mixed_precision_trains_under_autocast():
    # ddp's bf16 is torch.autocast over fp32 weights (fsdp's is FSDP2's param dtype): the model's own fast paths
    # must train under it, not only infer (custom autograd functions see other dtypes in backward than forward).
    from lare.batch import build_batch, example_from_record
    from lare.sizing import Layout
    from lare.train.parallel import autocast, build_model

    cfg = tiny_config("tiny-qwen2.5-vl", "lare", "method.latent_steps=2", "data.max_steps=2", "train.mixed_precision=bf16")
    layout = Layout("ddp", (1, 1), "test")
    torch.manual_seed(0)
    model = build_model(cfg, 0, 1, torch.device("cpu"), layout)
    batch = build_batch([example_from_record(r, 2) for r in _records(0)], model.processor, cfg)
    fp32 = model(batch).loss.item()
    with autocast(cfg, layout, torch.device("cpu")):
        out = model(batch)
    out.loss.backward()
    assert abs(out.loss.item() - fp32) < 0.02 * fp32
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads if g is not None)
    assert sum(g is not None for g in grads) > 0.9 * len(grads)
