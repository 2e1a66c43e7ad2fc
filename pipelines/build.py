"""Build a trace dataset with Ray Data: read raw records, map them to traces or rejects, write both.

    raw rows --(Ray: from_arrow, or read tasks per file)--> map_batches(process_batch) --> TraceSink
                                                                                            |-> OUT/<split>/part-*.parquet
                                                                                            |-> OUT/rejects/part-*.parquet
    then OUT/manifest.json: source, options, counts, rejects by reason, schema version, content hash.

Every raw row comes out exactly once, as a trace or a reject; the build checks rows in = rows out +
rejects. Duplicate ids are found before the heavy pass (the first occurrence in input order is
kept), so the map stays stateless and parallel. The content hash covers sorted (id, row digest)
pairs: two builds from the same input and seed give the same hash, whatever the parallelism.
"""

import hashlib
import json
import math
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray.data
from ray.data import Datasink
from ray.data.block import BlockAccessor

from lare.cli import UserError
from lare.rayenv import ensure_ray
from lare.storage import public_uri, resolve
from pipelines.process import RAW_SCHEMA, process_batch, raw_table, row_digest
from pipelines.schema import REJECT_SCHEMA, SCHEMA_VERSION, TRACE_SCHEMA
from pipelines.sources import get_source

COMMON_DEFAULTS = {
    "name": None,  # source name written into rows and hashed into ids (default: the reader's name)
    "max_side": 448,  # longer side of stored images, px (downscale only)
    "min_side": 28,  # images with a shorter side are rejected (image_too_small)
    "max_pixels": 40_000_000,  # header width*height above this is a decompression_bomb reject
    "embed_images": True,  # store PNG bytes; False keeps image_uri to the original file (no resize)
    "png_compress_level": 3,  # zlib level: 3 is about twice as fast as 6 for ~25% larger files
    "batch_size": 32,  # rows per map_batches call
    "limit": 0,  # keep only the first N raw records (record readers; 0 = all)
}


# Reject details that point at a setting rather than at the data, and the setting to change. A hint is given
# only when every reject matches it: then one option, not the data, is the likely cause.
DETAIL_HINTS = {
    "not valid base64": "the column mapping reads paths as bytes: map your column to image_path "
                        "(columns.image_path=<your column>), not to image",
}
TOP_REJECTS = 3  # reasons (with an example each) the manifest keeps for the summary
EXAMPLE_DETAIL_CHARS = 300


class BuildInputError(UserError, ValueError):
    """The build's options, or the input files they name, are wrong (unknown option, missing or unreadable input).
    Found on the driver, before any row is processed. A ValueError too, as before."""


class OutputNotEmpty(UserError, FileExistsError):
    """The output folder holds something that is not a previous build; it is never overwritten."""


class RejectFractionExceeded(RuntimeError):
    """Every record, or more than --max-reject-fraction of them, was rejected; the manifest (status failed) and the
    rejects are written first. A data failure, not a user error: the rejects say what is wrong with the data."""

    def __init__(self, message: str, manifest: dict):
        super().__init__(message)
        self.manifest = manifest


def resolve_options(source: str, options: dict | None) -> dict:
    """Defaults of the build and of the reader, overridden by options; unknown keys are an error."""
    src = from_reader(get_source, source)
    defaults = {**COMMON_DEFAULTS, **src.DEFAULTS}
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise BuildInputError(f"unknown option(s) {unknown} for source {source!r}; valid: {sorted(defaults)}")
    opts = {**defaults, **options}
    opts["source_type"] = source
    opts["name"] = opts["name"] or source
    if hasattr(src, "check_options"):
        from_reader(src.check_options, opts)
    return opts


def from_reader(fn, *args):
    """Call a reader's driver-side function. Readers report bad options and unreadable input files with ValueError
    (pipelines/sources): that is the user's input, so it becomes a BuildInputError. Only these calls are wrapped;
    a ValueError anywhere else (a Ray task, the accounting) stays a bug with its traceback."""
    try:
        return fn(*args)
    except BuildInputError:
        raise
    except ValueError as e:
        raise BuildInputError(str(e)) from e


def find_duplicates(pairs) -> dict[int, int]:
    """(pos, source_id) pairs in any order -> {pos of a later duplicate: pos of the first occurrence}."""
    pairs = list(pairs)
    first = {}
    for pos, sid in pairs:
        if sid and (sid not in first or pos < first[sid]):
            first[sid] = pos
    return {pos: first[sid] for pos, sid in pairs if sid and pos != first[sid]}


# ---------------------------------------------------------------------------------------------
# The two ways raw rows enter Ray.


def raw_from_records(src, opts: dict, seed: int):
    """Record readers parse their index files on the driver (light rows, no pixels); Ray gets Arrow blocks."""
    rows = from_reader(src.plan, opts, seed)
    if opts["limit"]:
        rows = rows[: int(opts["limit"])]
    for pos, row in enumerate(rows):
        row["pos"] = pos
    duplicates = find_duplicates((r["pos"], r["source_id"]) for r in rows)
    if not rows:
        return ray.data.from_arrow(RAW_SCHEMA.empty_table()), 0, duplicates
    per_block = max(int(opts["batch_size"]), math.ceil(len(rows) / 64))
    blocks = [raw_table(rows[i: i + per_block]) for i in range(0, len(rows), per_block)]
    return ray.data.from_arrow(blocks), len(rows), duplicates


def _expand_units(batch: pa.Table, *, opts: dict, ids_only: bool) -> pa.Table:
    src = get_source(opts["source_type"])
    rows = [r for unit in batch.to_pylist() for r in src.read_unit(unit, opts, ids_only=ids_only)]
    if ids_only:
        return pa.Table.from_pylist(rows, schema=pa.schema([RAW_SCHEMA.field(n) for n in ("source_id", "split", "pos")]))
    for r in rows:
        r["raw"] = json.dumps(r["raw"], sort_keys=True, ensure_ascii=False, default=str)
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)


def raw_from_units(src, opts: dict, seed: int):
    """File readers: one Ray task per file or row group. A first light pass reads only ids to find duplicates."""
    if opts["limit"]:
        raise BuildInputError("option 'limit' works with record readers; for jsonl/parquet point 'path' at fewer files")
    units = from_reader(src.units, opts)
    unit_ds = lambda: ray.data.from_items(units, override_num_blocks=len(units))  # noqa: E731
    ids = unit_ds().map_batches(_expand_units, batch_size=1, batch_format="pyarrow", fn_kwargs={"opts": opts, "ids_only": True})
    pairs, n = [], 0
    for batch in ids.iter_batches(batch_format="pyarrow", batch_size=4096):
        pairs += zip(batch["pos"].to_pylist(), batch["source_id"].to_pylist())
        n += batch.num_rows
    raw = unit_ds().map_batches(_expand_units, batch_size=1, batch_format="pyarrow", fn_kwargs={"opts": opts, "ids_only": False})
    return raw, n, find_duplicates(pairs)


# ---------------------------------------------------------------------------------------------
# Writing: one pass, both outputs, per-split folders.


class TraceSink(Datasink):
    """Ray Data Datasink writing each block's traces to OUT/<split>/ and its rejects to OUT/rejects/.

    Files are named by the smallest input position they hold, so names are unique without
    coordination and sort in input order. Each write task returns its counts and row digests;
    Ray hands them all to on_write_complete on the driver."""

    def __init__(self, fs: pafs.FileSystem, root: str):
        self.fs, self.root, self.result = fs, root, None

    def write(self, blocks, ctx) -> dict:
        splits, reasons, digests = Counter(), Counter(), []
        examples, hint_matches = {}, Counter()
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            if table.num_rows == 0:
                continue
            rejected = pc.is_valid(table["reason"])
            good, bad = table.filter(pc.invert(rejected)), table.filter(rejected)
            for split in sorted(set(good["split"].to_pylist())):
                part = good.filter(pc.equal(good["split"], split)).sort_by("pos")
                self._write(part.select(TRACE_SCHEMA.names).cast(TRACE_SCHEMA), split, part["pos"][0].as_py())
                splits[split] += part.num_rows
                digests += [(row["id"], row_digest(row)) for row in part.select(TRACE_SCHEMA.names).to_pylist()]
            if bad.num_rows:
                bad = bad.sort_by("pos")
                self._write(bad.select(REJECT_SCHEMA.names).cast(REJECT_SCHEMA), "rejects", bad["pos"][0].as_py())
                reasons.update(bad["reason"].to_pylist())
                note_rejects(bad, examples, hint_matches)
        return {"splits": dict(splits), "rejects": dict(reasons), "digests": digests,
                "examples": examples, "hint_matches": dict(hint_matches)}

    def _write(self, table: pa.Table, folder: str, first_pos: int):
        self.fs.create_dir(f"{self.root}/{folder}", recursive=True)
        pq.write_table(table, f"{self.root}/{folder}/part-{first_pos:016x}.parquet", filesystem=self.fs, compression="zstd")

    def on_write_complete(self, write_result):
        self.result = write_result.write_returns

    def get_name(self) -> str:
        return "Traces"


def note_rejects(bad: pa.Table, examples: dict, hint_matches: Counter) -> None:
    """Per reason, the reject earliest in input order as [pos, source_id, detail] (the same example whatever the
    parallelism); and how many details match each DETAIL_HINTS pattern."""
    for row in bad.select(["pos", "reason", "source_id", "detail"]).to_pylist():
        seen = examples.get(row["reason"])
        if seen is None or row["pos"] < seen[0]:
            examples[row["reason"]] = [row["pos"], row["source_id"], row["detail"]]
        hint_matches.update(p for p in DETAIL_HINTS if p in (row["detail"] or ""))


def top_rejects(rejects: Counter, examples: dict) -> list[dict]:
    """The most common reasons, each with its count and an example record (source id and detail)."""
    ranked = sorted(rejects.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REJECTS]
    out = []
    for reason, count in ranked:
        _, source_id, detail = examples[reason]
        if len(detail) > EXAMPLE_DETAIL_CHARS:
            detail = detail[:EXAMPLE_DETAIL_CHARS] + "..."
        out.append({"reason": reason, "count": count, "source_id": source_id, "detail": detail})
    return out


def settings_hint(opts: dict, rejects: Counter, hint_matches: Counter) -> str | None:
    """When every reject looks caused by one setting, which option to change; else None."""
    total = sum(rejects.values())
    if not total:
        return None
    for pattern, hint in DETAIL_HINTS.items():
        if hint_matches.get(pattern, 0) == total:
            return hint
    root_option = next((k for k in ("image_root", "root") if k in opts), None)
    if rejects.get("image_unreadable", 0) == total and root_option:
        return (f"no image could be read: check {root_option} (now {opts[root_option]!r}), the folder the records' "
                "image paths are relative to")
    return None


def check_out(fs: pafs.FileSystem, root: str) -> dict | None:
    """An output folder must be new, empty, or a previous build: returns that build's manifest (or None); never
    changes anything, so it can run before any work."""
    info = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    if not info:
        return None
    if "manifest.json" not in {i.base_name for i in info}:
        raise OutputNotEmpty(f"output {root} is not empty and holds no manifest.json from a previous build; "
                             "refusing to overwrite (choose a new or empty folder)")
    with fs.open_input_stream(f"{root}/manifest.json") as f:
        return json.loads(f.read())


def check_output(out: str, filesystem: pafs.FileSystem | None = None) -> None:
    """check_out for a path or URI: lets a job refuse a foreign output folder before it starts Ray."""
    check_out(*resolve(out, filesystem))


def prepare_out(fs: pafs.FileSystem, root: str):
    """Create the output folder, or remove the previous build in it (its splits, rejects and manifest)."""
    old = check_out(fs, root)
    if old is None:
        fs.create_dir(root, recursive=True)
        return
    names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(root))}
    for name in list(old.get("counts", {}).get("splits", {})) + ["rejects"]:
        if name in names:
            fs.delete_dir(f"{root}/{name}")
    fs.delete_file(f"{root}/manifest.json")


def build_traces(source: str, out: str, *, seed: int = 0, options: dict | None = None,
                 max_reject_fraction: float = 1.0, filesystem: pafs.FileSystem | None = None) -> dict:
    """Build traces of `source` into `out` (folder or s3:// URI); returns the manifest (also written to OUT/manifest.json).

    Raises RejectFractionExceeded, after writing everything, when every record was rejected or rejects / rows in >
    max_reject_fraction; BuildInputError or OutputNotEmpty (user errors) before any row is processed."""
    if int(seed) < 0:
        raise BuildInputError(f"seed must be >= 0, got {seed}")
    ensure_ray()
    t0 = time.time()
    opts = resolve_options(source, options)
    src = get_source(source)
    fs, root = resolve(out, filesystem)
    check_out(fs, root)  # a foreign folder is refused before any work

    make_raw = raw_from_units if hasattr(src, "units") else raw_from_records
    # Ray Data reserves part of the cluster for each operator; on a small cluster (2 CPUs) that held the
    # fused map+write operator to about one task at a time (measured: 1.2 tasks in flight on average,
    # 1.85 without it, and twice the rows/s). The build is a single linear pipeline, so nothing needs the
    # reservation; the setting is restored afterwards for whoever shares this driver.
    ctx = ray.data.DataContext.get_current()
    saved_reservation = ctx.op_resource_reservation_enabled
    ctx.op_resource_reservation_enabled = False
    try:
        raw, rows_in, duplicates = make_raw(src, opts, seed)
        # Only now is the previous build removed: an input the reader cannot find must not cost the old output.
        prepare_out(fs, root)
        traces = raw.map_batches(process_batch, batch_size=int(opts["batch_size"]), batch_format="pyarrow",
                                 fn_kwargs={"opts": opts, "seed": seed, "duplicates": duplicates})
        sink = TraceSink(fs, root)
        traces.write_datasink(sink)
    finally:
        ctx.op_resource_reservation_enabled = saved_reservation
    results = sink.result or []

    splits, rejects, digests, examples, hint_matches = Counter(), Counter(), [], {}, Counter()
    for r in results:
        splits.update(r["splits"])
        rejects.update(r["rejects"])
        digests += r["digests"]
        hint_matches.update(r["hint_matches"])
        for reason, example in r["examples"].items():
            if reason not in examples or example[0] < examples[reason][0]:
                examples[reason] = example
    rows_out, n_rejects = sum(splits.values()), sum(rejects.values())
    if rows_in != rows_out + n_rejects:
        raise RuntimeError(f"row accounting failed: {rows_in} rows in != {rows_out} out + {n_rejects} rejects")
    ids = [i for i, _ in digests]
    if len(set(ids)) != len(ids):
        raise RuntimeError("duplicate ids reached the output; the duplicate pass missed some")
    content = hashlib.sha256("".join(f"{i} {d}\n" for i, d in sorted(digests)).encode()).hexdigest()

    wall = time.time() - t0
    fraction = n_rejects / rows_in if rows_in else 0.0
    over_fraction = fraction > max_reject_fraction
    all_rejected = rows_in > 0 and n_rejects == rows_in  # a failure whatever the threshold: nothing to train on
    status = "failed_reject_fraction" if over_fraction else "failed_all_rejected" if all_rejected else "ok"
    manifest = {
        "source": opts["name"],
        "reader": source,
        "schema_version": SCHEMA_VERSION,
        "source_version": getattr(src, "VERSION", None),  # a generator's version: the same options, other rows
        "seed": seed,
        "options": {k: v for k, v in sorted(opts.items())},
        "output": public_uri(out),
        "counts": {"rows_in": rows_in, "rows_out": rows_out, "rejects": n_rejects,
                   "splits": dict(sorted(splits.items())), "rejects_by_reason": dict(sorted(rejects.items()))},
        "top_rejects": top_rejects(rejects, examples),
        "reject_hint": settings_hint(opts, rejects, hint_matches),
        "content_hash": content,
        "max_reject_fraction": max_reject_fraction,
        "reject_fraction": round(fraction, 6),
        "status": status,
        "wall_time_s": round(wall, 3),  # not part of content_hash
        "rows_per_s": round(rows_in / wall, 2) if wall > 0 else None,
    }
    with fs.open_output_stream(f"{root}/manifest.json") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True).encode())
    if status != "ok":
        limit = (f"> max_reject_fraction {max_reject_fraction:.1%}" if over_fraction
                 else "(every record: a failure whatever max_reject_fraction)")
        raise RejectFractionExceeded(
            f"{n_rejects} of {rows_in} records rejected ({fraction:.1%}) {limit}; "
            f"by reason: {dict(rejects)}; see {public_uri(out)}/rejects/", manifest)
    return manifest
