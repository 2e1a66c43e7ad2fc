"""Training data: trace Parquet read by Ray Data on the driver, streamed to the workers as shards,
decoded and collated on the workers batch by batch (never the whole dataset in memory)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import ray.data

from lare.batch import Batch, Example, TraceError, build_batch, example_from_record
from lare.config import Config

log = logging.getLogger("lare.train")


def split_uri(traces: str, split: str) -> str:
    return f"{traces.rstrip('/')}/{split}"


def read_split(traces: str, split: str) -> ray.data.Dataset:
    """One split of a trace folder (local or s3://) as a Ray Dataset, in file order."""
    from pipelines.io import read_traces

    return read_traces(traces, split)


def training_dataset(cfg: Config) -> tuple[ray.data.Dataset, int]:
    """(the training rows, their count). data.mixture {traces: weight} mixes sources: a weight w takes
    w x that source's rows per epoch (w < 1 a seeded sample, w >= 1 repeats)."""
    d = cfg.data
    sources = d.mixture or {d.traces_dir: 1.0}
    parts, rows = [], 0
    for traces, weight in sources.items():
        ds = read_split(traces, d.train_split)
        n = count_rows(traces, d.train_split)
        whole, frac = int(weight), weight - int(weight)
        parts += [ds] * whole
        rows += n * whole
        if frac > 0:  # a fixed, seeded subset: the same rows every epoch
            take = int(n * frac)
            parts.append(ds.random_shuffle(seed=cfg.train.seed).limit(take))
            rows += take
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    if d.num_train_samples and d.num_train_samples < rows:
        ds, rows = ds.limit(d.num_train_samples), d.num_train_samples
    return ds, rows


def count_rows(traces: str, split: str) -> int:
    """Rows of a split from the Parquet footers alone (no data read)."""
    import pyarrow.dataset as pads

    from lare.storage import resolve

    fs, root = resolve(split_uri(traces, split))
    return pads.dataset(root, filesystem=fs, format="parquet").count_rows()


def micro_batch_size(cfg: Config) -> int:
    """train.batch_size is per optimizer step; it is split into train.grad_accum micro-batches."""
    return max(1, cfg.train.batch_size // cfg.train.grad_accum)


def steps_per_epoch(num_rows: int, cfg: Config) -> int:
    """Optimizer steps per epoch on every worker (Ray splits the rows equally)."""
    workers = max(cfg.train.num_workers, 1)
    micro_batches = math.ceil((num_rows // workers) / micro_batch_size(cfg))
    return max(1, math.ceil(micro_batches / cfg.train.grad_accum))


def iter_batches(shard, cfg: Config, processor, stage: int, epoch: int) -> Iterator[Batch | None]:
    """Collated micro-batches of one epoch from this worker's shard. Yields None for a batch whose every
    record was rejected (the caller still steps, so all ranks stay in step)."""
    size = micro_batch_size(cfg)
    for table in shard.iter_batches(batch_size=size, batch_format="pyarrow", local_shuffle_buffer_size=4 * size,
                                    local_shuffle_seed=cfg.train.seed * 1000 + epoch, prefetch_batches=1):
        examples = to_examples(table.to_pylist(), cfg, source=cfg.data.traces_dir)
        yield build_batch(examples, processor, cfg, stage=stage, fixed_slots=True) if examples else None


def to_examples(records: list[dict], cfg: Config, source: str = "") -> list[Example]:
    """Valid examples; a record the model cannot use is logged with its reason and skipped."""
    out = []
    for rec in records:
        try:
            out.append(example_from_record(rec, cfg.data.max_steps, source=source))
        except TraceError as e:
            log.warning("skipping a trace: %s", e)
    return out


def read_examples(traces: str, split: str, cfg: Config, limit: int = 0) -> list[Example]:
    """A small split (validation) read whole with pyarrow, without Ray."""
    from pipelines.io import read_traces_table

    table = read_traces_table(traces, split)
    if limit:
        table = table.slice(0, limit)
    return to_examples(table.to_pylist(), cfg, source=split_uri(traces, split))

