"""The per-worker training loop: a plain PyTorch loop over the curriculum, with Ray at the edges (the dataset
shard in; metrics and checkpoints out through `ray.train.report`). Everything the run needs comes in one RunPlan."""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch.profiler import record_function

from lare.config import LATENT_PARADIGMS, Config
from lare.model import LOSS_TERMS
from lare.progress import post
from lare.train import checkpoint
from lare.train.data import iter_batches, read_examples
from lare.train.export import publish
from lare.train.parallel import autocast, build_model, choose
from lare.train.plan import RunPlan, StepEvent, curriculum
from lare.train.validate import Validation

log = logging.getLogger("lare.train")


def learning_rate(cfg: Config, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, total - t.warmup_steps))
    return t.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, cfg: Config) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr,
                             weight_decay=cfg.train.weight_decay, betas=(0.9, 0.95), foreach=True)


class Reporter:
    """The run's numbers: loss terms averaged over a window of steps and over the ranks, throughput, and the
    progress line rank 0 prints; rank 0 also sends them (and validations) to MLflow."""

    def __init__(self, plan: RunPlan, rank: int, world: int, device, resumed: bool):
        self.rank, self.world, self.device = rank, world, device
        self.every, self.total = plan.config.train.log_every, plan.total_steps
        self.run, self.board = plan.config.train.experiment, plan.progress
        self.logger = None
        if rank == 0 and plan.mlflow_run_id:
            from lare.tracking import RunLogger

            self.logger = RunLogger(plan.mlflow_uri, plan.mlflow_run_id, resumed=resumed)
        self.started = time.perf_counter()
        self._reset()

    def _reset(self) -> None:
        self.sums = {n: [0.0, 0.0] for n in (*LOSS_TERMS, "loss")}  # term -> [sum, count]
        self.window_start, self.samples, self.tokens = time.perf_counter(), 0, 0

    def add(self, terms: dict[str, float], samples: int, tokens: int) -> None:
        """One micro-batch's loss terms (NaN: the term was not scored in it)."""
        for name, value in terms.items():
            if not math.isnan(value):
                self.sums[name][0] += value
                self.sums[name][1] += 1
        self.samples += samples
        self.tokens += tokens

    def step_done(self, step: int, stage: int, epoch: int, lr: float, steps_this_run: int) -> None:
        """Every rank calls it after each optimizer step (the window's means are an all-reduce every log_every)."""
        if step % self.every:
            return
        names = sorted(self.sums)
        t = torch.tensor([v for n in names for v in self.sums[n]] + [self.samples, self.tokens],
                         dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        means = {n: (t[2 * i] / t[2 * i + 1]).item() if t[2 * i + 1] > 0 else float("nan") for i, n in enumerate(names)}
        elapsed = time.perf_counter() - self.window_start
        samples_per_s, tokens_per_s = t[-2].item() / elapsed, t[-1].item() / elapsed
        if self.logger:
            self.logger.metrics(step, {**{f"train/{k}": v for k, v in means.items()}, "lr": lr, "stage": stage,
                                       "epoch": epoch, "samples_per_s": samples_per_s, "tokens_per_s": tokens_per_s})
        if self.rank == 0:
            post(self.board, self.run, total=self.total, done=step, stage=stage, loss=means["loss"],
                 samples_s=samples_per_s)
            per_step = (time.perf_counter() - self.started) / max(1, steps_this_run)
            log.info("stage %d  step %d/%d  loss %.4f  answer_ce %.4f  %.1f samples/s  ETA %s", stage, step,
                     self.total, means["loss"], means["answer_ce"], samples_per_s,
                     _duration(per_step * (self.total - step)))
        self._reset()

    def validation(self, step: int, metrics: dict) -> None:
        if self.logger:
            self.logger.metrics(step, metrics)
        if self.rank == 0:
            log.info("step %d validation: %s", step, metrics)

    def close(self, step: int, final: dict) -> None:
        if self.rank == 0:
            post(self.board, self.run, total=self.total, done=step, **{k: v for k, v in final.items() if k == "val_accuracy"})
        if self.logger:
            self.logger.metrics(step, {"final/" + k: v for k, v in final.items()})
            self.logger.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Checkpoints:
    """Reports to Ray Train. Every rank calls report() equally often (it is a barrier); with an optimizer it also
    saves a checkpoint, at most once per step (a second one under the same directory name would replace the first)."""

    def __init__(self, resumed_at: int):
        self.resumed_at, self.last_saved = resumed_at, -1

    def report(self, metrics: dict, position: checkpoint.Position, model=None, optimizer=None, rank: int = 0) -> None:
        metrics = {**metrics, "resumed_at_step": self.resumed_at}
        if optimizer is None or self.last_saved == position.step:
            ray.train.report(metrics)
            return
        self.last_saved = position.step
        tmp = Path(tempfile.mkdtemp(prefix="lare-ckpt-"))
        try:
            checkpoint.save(tmp, model, optimizer, position, rank)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                             checkpoint_dir_name=f"step_{position.step:07d}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _groups(items, size: int):
    """Consecutive lists of `size` items (the micro-batches of one optimizer step); the last may be short."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def train_step(model, optimizer, micro_batches: list, cfg: Config, device, reporter: Reporter,
               compute=contextlib.nullcontext()) -> None:
    """One optimizer step over the micro-batches of one global batch (gradients reduced once, at the last).
    `compute`: the forward's context (parallel.autocast); by default the stored dtype."""
    for j, batch in enumerate(micro_batches):
        if hasattr(model, "set_requires_gradient_sync"):  # ddp, FSDP2: all-reduce / reduce-scatter once per step
            model.set_requires_gradient_sync(j == len(micro_batches) - 1)
        if batch is None:  # every record of this micro-batch was rejected: a zero step keeps the ranks in step
            (sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0).backward()
            continue
        batch = batch.to(device)
        with compute, record_function("lare.forward"):
            out = model(batch)
        with record_function("lare.backward"):  # the ranges name the step's parts in a torch.profiler trace
            (out.loss / len(micro_batches)).backward()
        reporter.add(dict(out.terms, loss=out.loss.item()), batch.size, int(batch.attention_mask.sum()))
    with record_function("lare.optimizer"):
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def train(plan: RunPlan) -> None:
    cfg = plan.config
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":  # as many threads as CPUs this worker reserved (more would fight the others)
        torch.set_num_threads(max(1, cfg.train.cpus_per_worker))
    torch.manual_seed(cfg.train.seed)

    layout = choose(cfg, world, ctx.get_local_world_size(), device)
    if rank == 0:
        log.info("parallelism: %s", layout.describe())
    model = build_model(cfg, rank, world, device, layout)
    compute = autocast(cfg, layout, device)
    optimizer = make_optimizer(model, cfg)
    position, restored = checkpoint.Position(), ray.train.get_checkpoint()
    if restored is not None:  # this run's own latest checkpoint (a worker failed, or the job was re-run)
        with restored.as_directory() as d:
            position = checkpoint.load(Path(d), model, optimizer, rank)
        log.info("rank %d resumed at step %d (epoch %d, batch %d)", rank, position.step, position.epoch, position.batch_in_epoch)
    elif plan.resume_from:
        with ray.train.Checkpoint(plan.resume_from).as_directory() as d:
            checkpoint.load_model_only(Path(d), model)

    reporter = Reporter(plan, rank, world, device, resumed=restored is not None)
    if reporter.logger:
        reporter.logger.tags({"parallelism.layout": layout.kind, "parallelism.mesh": str(list(layout.mesh)),
                              "parallelism.why": layout.why})
    checkpoints = Checkpoints(resumed_at=position.step if restored is not None else -1)
    validation = Validation(read_examples(cfg.data.traces_dir, cfg.data.val_split, cfg, cfg.data.num_val_samples)
                            if plan.validate else [], cfg, rank, world, device, compute)

    shard = ray.train.get_dataset_shard("train")
    stages, first_step = curriculum(cfg), position.step
    model.train()
    for epoch in range(position.epoch, len(stages)):
        stage = stages[epoch]
        stage_ends = epoch + 1 == len(stages) or stages[epoch + 1] != stage  # after this epoch
        if stage != position.stage:
            if position.stage >= 0 and cfg.train.reset_optimizer_each_stage and cfg.method.paradigm in LATENT_PARADIGMS:
                optimizer = make_optimizer(model, cfg)  # Coconut: a fresh optimizer when the inputs change
            position.stage = stage
        skip = position.batch_in_epoch if epoch == position.epoch else 0
        for i, micro_batches in enumerate(_groups(iter_batches(shard, cfg, model.processor, stage, epoch), cfg.train.grad_accum)):
            if i < skip:
                continue
            lr = learning_rate(cfg, position.step, plan.total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            train_step(model, optimizer, micro_batches, cfg, device, reporter, compute)
            position.step, position.batch_in_epoch = position.step + 1, i + 1
            reporter.step_done(position.step, stage, epoch, lr, position.step - first_step)

            validate_now = cfg.train.val_every and position.step % cfg.train.val_every == 0
            if validate_now:
                validation.run(model, position.step, reporter)
            stage_end_step = stage_ends and position.batch_in_epoch == plan.steps_per_epoch  # reported below
            if position.step % cfg.train.checkpoint_every == 0 and not stage_end_step:
                if cfg.train.checkpoint_score and not validate_now:
                    validation.run(model, position.step, reporter)  # the score that decides which checkpoints are kept
                checkpoints.report({"step": position.step, "stage": stage, **validation.metrics}, position, model, optimizer, rank)
            for hook in plan.step_hooks:
                hook(StepEvent(position.step, rank, world, checkpoints.last_saved, plan))
        position.epoch, position.batch_in_epoch = epoch + 1, 0
        if stage_ends:
            if not cfg.train.val_every:
                validation.run(model, position.step, reporter)
            checkpoints.report({"step": position.step, "stage": stage, "epoch": epoch, **validation.metrics}, position,
                               model, optimizer, rank)

    full = checkpoint.full_model_state(model)  # every rank gathers; rank 0 holds the whole state
    export_uri = publish(full, plan, reporter.logger, validation.rows) if rank == 0 else ""
    del full
    reporter.close(position.step, validation.metrics)
    checkpoints.report({"step": position.step, "export": export_uri, **validation.metrics}, position)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's entry point on every worker."""
    train(loop_config["plan"])
