"""Checkpoints: sharded DCP state (model, optimizer) plus this rank's training position and RNG.

Every rank writes into its own local directory; `ray.train.report` uploads them all into one checkpoint
directory in storage (local or S3), where `dcp.load` finds the shards again. The final export: lare/train/export.py.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)


@dataclass
class Position:
    """Where training is: the next optimizer step and the next batch of which epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    stage: int = -1


def _rng_state() -> dict:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached]}


def _set_rng_state(rng: dict) -> None:
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _single_process() -> bool:
    """One worker: DCP without its collectives. Measured on CPU (torch 2.13, gloo): after a distributed dcp.save
    in a world of one, every later forward/backward of the worker ran about 2x slower (more system time, fewer
    busy cores); with no_dist the speed stays. Several workers keep the distributed save (they need it)."""
    return not (dist.is_initialized() and dist.get_world_size() > 1)


def save(directory: Path, model, optimizer, position: Position, rank: int) -> None:
    """The learning rate is a function of the step (loop.learning_rate), so the step is the schedule's state."""
    directory.mkdir(parents=True, exist_ok=True)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(directory), no_dist=_single_process())
    torch.save({"torch_rng": torch.get_rng_state()}, directory / f"rank{rank}_state.pt")
    (directory / f"rank{rank}_position.json").write_text(json.dumps({"position": asdict(position), "rng": _rng_state()}))


def load(directory: Path, model, optimizer, rank: int) -> Position:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(directory), no_dist=_single_process())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    own = directory / f"rank{rank}_state.pt"
    if not own.is_file():  # resumed on more workers than saved: rank 0's position is everyone's
        own = directory / "rank0_state.pt"
    extra = torch.load(own, weights_only=True)
    torch.set_rng_state(extra["torch_rng"])
    meta = json.loads((own.parent / own.name.replace("_state.pt", "_position.json")).read_text())
    _set_rng_state(meta["rng"])
    return Position(**meta["position"])


def load_model_only(directory: Path, model) -> None:
    """Warm start from a checkpoint's weights (a different run's `--resume-from` with a new optimizer)."""
    state = {"model": get_model_state_dict(model)}
    dcp.load(state, checkpoint_id=str(directory), no_dist=_single_process())
    set_model_state_dict(model, state["model"])


def full_model_state(model) -> dict[str, torch.Tensor]:
    """The whole model's weights on CPU, gathered on rank 0 (every rank must call it)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

