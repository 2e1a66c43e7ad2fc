"""What one training run is, decided once on the driver (lare.train.launch.make_plan) and handed to every worker:
the validated Config plus the facts the driver knows and the workers need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from lare.config import Config


@dataclass(frozen=True)
class StepEvent:
    """What a step hook sees after each optimizer step (and after that step's checkpoint, if any)."""

    step: int
    rank: int
    world: int
    last_checkpoint_step: int  # -1: none reported by this run yet
    plan: "RunPlan"


@dataclass(frozen=True)
class RunPlan:
    config: Config
    steps_per_epoch: int  # optimizer steps per epoch on every worker
    experiment_uri: str  # where Ray Train keeps this run's checkpoints (local folder or s3://)
    manifest: str = "{}"  # the traces' build manifest (JSON), logged with the run
    mlflow_uri: str = ""  # '' = no tracking
    mlflow_run_id: str = ""
    resume_from: str | None = None  # another run's checkpoint: its weights, a fresh schedule
    validate: bool = True  # generation on the val split at stage ends (and every train.val_every steps)
    # Called on every rank after each optimizer step: tests install fault drills here, tools may add probes.
    step_hooks: tuple[Callable[[StepEvent], None], ...] = field(default=())
    progress: Any = None  # the driver's progress board (lare.progress), where rank 0 posts its step

    def __post_init__(self):
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if bool(self.mlflow_uri) != bool(self.mlflow_run_id):
            raise ValueError("mlflow_uri and mlflow_run_id go together (both or neither)")

    @property
    def export_uri(self) -> str:
        return f"{self.experiment_uri}/export"

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * len(curriculum(self.config))


def curriculum(cfg: Config) -> list[int]:
    """The stage of every epoch: train.epochs_per_stage epochs at each stage from train.start_stage to the last."""
    t = cfg.train
    last = (t.num_stages if t.num_stages > 0 else cfg.final_stage + 1) - 1
    return [s for s in range(min(t.start_stage, last), last + 1) for _ in range(t.epochs_per_stage)]
