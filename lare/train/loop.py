"""The per-worker training loop: a plain PyTorch loop over the curriculum, with Ray at the edges
(dataset shard in, metrics and checkpoints out through `ray.train.report`)."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from lare.config import Config
from lare.model import LOSS_TERMS
from lare.train import checkpoint
from lare.train.data import iter_batches, read_examples
from lare.train.parallel import build_model
from lare.train.validate import validate

log = logging.getLogger("lare.train")


def curriculum(cfg: Config) -> list[int]:
    """The stage of every epoch: epochs_per_stage epochs at each stage from start_stage to the last."""
    last = (cfg.train.num_stages if cfg.train.num_stages > 0 else cfg.final_stage + 1) - 1
    stages = range(min(cfg.train.start_stage, last), last + 1)
    return [s for s in stages for _ in range(cfg.train.epochs_per_stage)]


def learning_rate(cfg: Config, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, total - t.warmup_steps))
    return t.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, cfg: Config) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                             betas=(0.9, 0.95), foreach=True)


def _await_registered(experiment_uri: str, step: int, timeout_s: float = 120.0) -> None:
    """Failure injection (tests): die only once Ray Train has registered the last checkpoint. Ray's
    controller collects reports every few seconds; a worker killed before that falls back to the one
    before (correct, but not the resume a test means to exercise)."""
    from lare.storage import read_text

    deadline = time.monotonic() + timeout_s
    while step >= 0 and time.monotonic() < deadline:
        snapshot = read_text(f"{experiment_uri}/checkpoint_manager_snapshot.json") or ""
        if f'"step_{step:07d}"' in snapshot:
            return
        time.sleep(0.5)


def _mean_across_ranks(sums: dict[str, list[float]], world: int, device) -> dict[str, float]:
    """{term: [sum, count]} over the window and the ranks -> means (NaN where nothing was scored)."""
    names = sorted(sums)
    t = torch.tensor([v for n in names for v in sums[n]], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t)
    return {n: (t[2 * i] / t[2 * i + 1]).item() if t[2 * i + 1] > 0 else float("nan") for i, n in enumerate(names)}


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


def _sync_gradients(model, sync: bool) -> None:
    if hasattr(model, "set_requires_gradient_sync"):  # an FSDP2 module
        model.set_requires_gradient_sync(sync)


def train_loop_per_worker(loop_config: dict) -> None:
    cfg = Config.from_dict(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":  # as many threads as CPUs this worker reserved (more would fight the others)
        torch.set_num_threads(max(1, cfg.train.cpus_per_worker))
    torch.manual_seed(cfg.train.seed)

    model = build_model(cfg, rank, world, device)
    optimizer = make_optimizer(model, cfg)
    processor = model.processor
    epochs = curriculum(cfg)
    total_steps = loop_config["steps_per_epoch"] * len(epochs)

    position = checkpoint.Position()
    restored = ray.train.get_checkpoint()
    if restored is not None:  # this run's own latest checkpoint (a worker failed, or the job was re-run)
        with restored.as_directory() as d:
            position = checkpoint.load(Path(d), model, optimizer, rank)
        log.info("rank %d resumed at step %d (epoch %d, batch %d)", rank, position.step, position.epoch, position.batch_in_epoch)
    elif loop_config.get("resume_from"):  # another run's checkpoint: its weights, a fresh schedule
        with ray.train.Checkpoint(loop_config["resume_from"]).as_directory() as d:
            checkpoint.load_model_only(Path(d), model)

    resumed_at = position.step if restored is not None else -1

    logger = None
    if rank == 0 and loop_config.get("mlflow_run_id"):
        from lare.tracking import RunLogger

        logger = RunLogger(loop_config["mlflow_uri"], loop_config["mlflow_run_id"], resumed=restored is not None)

    val_examples = read_examples(cfg.data.traces_dir, cfg.data.val_split, cfg, cfg.data.num_val_samples) \
        if loop_config.get("validate", True) else []
    shard = ray.train.get_dataset_shard("train")
    fail_at = loop_config.get("fail_at_step")
    val_rows: list[dict] = []
    last_val: dict = {}

    saved_at = [-1]

    def report(metrics: dict, save: bool) -> None:
        """Every rank calls this equally often: a barrier, and (save=True) a checkpoint (once per step: a
        second one under the same directory name would be deleted with the first)."""
        metrics = {**metrics, "resumed_at_step": resumed_at}
        if not save or saved_at[0] == position.step:
            ray.train.report(metrics)
            return
        saved_at[0] = position.step
        tmp = Path(tempfile.mkdtemp(prefix="lare-ckpt-"))
        checkpoint.save(tmp, model, optimizer, position, rank)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                         checkpoint_dir_name=f"step_{position.step:07d}")
        shutil.rmtree(tmp, ignore_errors=True)

    def run_validation() -> dict:
        nonlocal val_rows, last_val
        if not val_examples:
            return {}
        last_val, rows = validate(model, val_examples, cfg, rank, world, device)
        if rank == 0:
            val_rows = rows
            if logger:
                logger.metrics(position.step, last_val)
            log.info("step %d validation: %s", position.step, last_val)
        return last_val

    window = {n: [0.0, 0.0] for n in (*LOSS_TERMS, "loss")}
    t_window, samples_window, tokens_window = time.perf_counter(), 0, 0
    model.train()
    for epoch in range(position.epoch, len(epochs)):
        stage = epochs[epoch]
        stage_ends = epoch + 1 == len(epochs) or epochs[epoch + 1] != stage  # after this epoch
        if stage != position.stage:
            if position.stage >= 0 and cfg.train.reset_optimizer_each_stage and cfg.method.paradigm in ("latent", "lare"):
                optimizer = make_optimizer(model, cfg)  # Coconut: a fresh optimizer at each stage
            position.stage = stage
        skip = position.batch_in_epoch if epoch == position.epoch else 0
        for i, micro_batches in enumerate(_groups(iter_batches(shard, cfg, processor, stage, epoch), cfg.train.grad_accum)):
            if i < skip:
                continue
            if fail_at is not None and position.step == fail_at and rank == world - 1 \
                    and not Path(loop_config["fail_marker"]).exists():
                _await_registered(loop_config["experiment_uri"], saved_at[0])
                Path(loop_config["fail_marker"]).touch()  # once: the restarted worker goes on
                os._exit(1)
            lr = learning_rate(cfg, position.step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for j, batch in enumerate(micro_batches):
                _sync_gradients(model, j == len(micro_batches) - 1)  # reduce-scatter once per step
                if batch is not None:
                    batch = batch.to(device)
                    out = model(batch)
                    (out.loss / len(micro_batches)).backward()
                    terms = dict(out.terms, loss=out.loss.item())
                    samples_window += batch.size
                    tokens_window += int(batch.attention_mask.sum())
                else:  # every record of this micro-batch was rejected: a zero step keeps the ranks in step
                    (sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0).backward()
                    terms = {}
                for name, value in terms.items():
                    if not math.isnan(value):
                        window[name][0] += value
                        window[name][1] += 1
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            position.step += 1
            position.batch_in_epoch = i + 1

            if position.step % cfg.train.log_every == 0:
                means = _mean_across_ranks(window, world, device)
                elapsed = time.perf_counter() - t_window
                rates = torch.tensor([samples_window, tokens_window], dtype=torch.float64, device=device)
                if world > 1:
                    dist.all_reduce(rates)
                if logger:
                    logger.metrics(position.step, {**{f"train/{k}": v for k, v in means.items()}, "lr": lr,
                                                   "stage": stage, "epoch": epoch,
                                                   "samples_per_s": rates[0].item() / elapsed,
                                                   "tokens_per_s": rates[1].item() / elapsed})
                if rank == 0:
                    log.info("step %d/%d stage %d loss %.4f answer_ce %.4f", position.step, total_steps, stage,
                             means["loss"], means["answer_ce"])
                window = {n: [0.0, 0.0] for n in window}
                t_window, samples_window, tokens_window = time.perf_counter(), 0, 0
            if cfg.train.val_every and position.step % cfg.train.val_every == 0:
                run_validation()
            stage_end_step = stage_ends and position.batch_in_epoch == loop_config["steps_per_epoch"]
            if position.step % cfg.train.checkpoint_every == 0 and not stage_end_step:  # reported once, below
                if cfg.train.checkpoint_score and not (cfg.train.val_every and position.step % cfg.train.val_every == 0):
                    run_validation()  # the score that decides which checkpoints are kept
                report({"step": position.step, "stage": stage, **last_val}, save=True)
        position.epoch, position.batch_in_epoch = epoch + 1, 0
        if stage_ends:
            if not cfg.train.val_every:
                run_validation()
            report({"step": position.step, "stage": stage, "epoch": epoch, **last_val}, save=True)

    # The HF-style export, loadable in one process without Ray.
    full = checkpoint.full_model_state(model)
    export_uri = ""
    if rank == 0:
        from lare.storage import redact
        from lare.tracking import redacted_config

        public = redacted_config(cfg)  # lare_config.json and config.yaml hold no credential (as the params)
        export_uri = loop_config["export_uri"]
        with tempfile.TemporaryDirectory(prefix="lare-export-") as tmp:
            checkpoint.export(full, public, Path(tmp) / "model")
            from lare.storage import upload_dir

            upload_dir(Path(tmp) / "model", export_uri)
            if logger:
                import json

                table = Path(tmp) / "validation.json"
                table.write_text(json.dumps(val_rows, indent=1))
                (Path(tmp) / "config.yaml").write_text(public.to_yaml())
                logger.artifacts(Path(tmp) / "config.yaml")
                logger.artifacts(table)
                if loop_config.get("manifest"):
                    (Path(tmp) / "manifest.json").write_text(redact(loop_config["manifest"]))
                    logger.artifacts(Path(tmp) / "manifest.json", "data")
                logger.artifacts(Path(tmp) / "model", "model")
        if logger:
            logger.metrics(position.step, {"final/" + k: v for k, v in last_val.items()})
            logger.close()
    del full
    ray.train.report({"step": position.step, "export": export_uri, "resumed_at_step": resumed_at, **last_val})
