"""Validation during training: generation on the val split, accuracy and mean tokens per answer.

Every rank generates for its share of the rows (FSDP2 needs every rank in every forward), with the same
number of batches on each; the counts are summed across ranks.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist

from lare.batch import Example, build_batch
from lare.answers import answers_match
from lare.config import Config
from lare.train.parallel import reshard


@torch.no_grad()
def validate(model, examples: list[Example], cfg: Config, rank: int, world: int, device,
             compute=contextlib.nullcontext()) -> tuple[dict, list[dict]]:
    """({val_accuracy (0-100), val_mean_tokens, val_n}, this rank's rows for the validation table); `compute`:
    the forward's context, as in training (parallel.autocast)."""
    was_training = model.training
    model.eval()
    mine = examples[rank::world]
    bs = cfg.train.batch_size
    n_batches = math.ceil(math.ceil(len(examples) / world) / bs) if examples else 0
    correct = tokens = counted = 0
    rows = []
    for i in range(n_batches):
        chunk = mine[i * bs:(i + 1) * bs]
        real = len(chunk)
        if not chunk:  # this rank ran out: a stand-in keeps the ranks' forwards in step, not counted
            chunk = examples[:1]
        batch = build_batch(chunk, model.processor, cfg, prompt_only=True).to(device)
        with compute:
            gen = model(batch, mode="generate")
        for ex, answer, text, account in list(zip(chunk, gen.answers, gen.texts, gen.tokens))[:real]:
            ok = answers_match(answer, ex.answer)
            correct += ok
            tokens += account["total"]
            counted += 1
            rows.append({"id": ex.id, "question": ex.question, "gold": ex.answer, "prediction": answer,
                         "correct": bool(ok), "family": ex.meta.get("family", ""), **account, "text": text})
    totals = torch.tensor([correct, tokens, counted], dtype=torch.float64, device=device)
    if world > 1 and dist.is_initialized():
        dist.all_reduce(totals)
    correct, tokens, counted = totals.tolist()
    reshard(model)
    model.train(was_training)
    n = max(counted, 1)
    return {"val_accuracy": 100.0 * correct / n, "val_mean_tokens": tokens / n, "val_n": counted}, rows


class Validation:
    """Validation during a run: the latest metrics, and rank 0's rows (the run's validation table)."""

    def __init__(self, examples: list[Example], cfg: Config, rank: int, world: int, device,
                 compute=contextlib.nullcontext()):
        self.examples, self.cfg, self.rank, self.world, self.device = examples, cfg, rank, world, device
        self.compute = compute
        self.metrics: dict = {}
        self.rows: list[dict] = []

    def run(self, model, step: int, reporter) -> None:
        if not self.examples:
            return
        self.metrics, rows = validate(model, self.examples, self.cfg, self.rank, self.world, self.device, self.compute)
        if self.rank == 0:
            self.rows = rows
        reporter.validation(step, self.metrics)
