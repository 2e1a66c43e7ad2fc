"""Batch inference for evaluation: one model, many benchmark items, every requested ablation.

One callable class, `ModelPredictor`, serves both ways of running:

- Ray Data batch inference: `ray.data.from_items(records).map_batches(ModelPredictor, concurrency=N, ...)`, an
  actor pool where each actor loads the model once (on its GPU when it was given one) and generates batch after
  batch. This is what the evaluation job uses.
- in-process (`use_ray=False`): the same class called on slices of the records; for small sets, for the paradigm
  benchmark and Tune (which already hold a model), and for tests.

Per input row and ablation the predictor returns one row: the generated text, the answer extracted from it, the
token account of `lare.model.generate` (one column per bucket), the latency per sample (the batch's generation
wall time divided by its rows), and for the few rows asked for heatmaps the refocus maps and, when the model has a
pixel decoder, the regions its latents render. Models that write boxes return them (crop re-encoded each), and
every row of a benchmark read from traces says where it looked against its trace's boxes (lare.eval.grounding).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

from lare.batch import slot_steps
from lare.eval.grounding import focus_in_box, written_boxes
from lare.eval.readers import EvalItem
from lare.model import ABLATIONS, TOKEN_KEYS
from lare.storage import is_remote, redact, resolve

TOKEN_COLUMNS = tuple(f"tok_{k}" for k in TOKEN_KEYS)
COLUMNS = ("benchmark", "id", "ablation", "text", "answer", *TOKEN_COLUMNS, "latency_s", "boxes", "grounding", "refocus",
           "regions")

# Ablations of the input rather than of the model: `other_image` answers each question about another row's image
# (the batch's images rotated by one; a lone row gets a blank grey image). Whatever a paradigm still gets right then,
# it got from the question alone: accuracy minus this is how much it looks.
INPUT_ABLATIONS = ("other_image",)
BOX_WRITERS = ("text_cot", "crop")  # paradigms whose reasoning writes each step's box as text


def applicable(ablation: str, paradigm: str) -> bool:
    """Whether an evaluation-time ablation means something for a paradigm (lare.model.ABLATIONS, or an input
    ablation, which applies to all)."""
    if ablation in INPUT_ABLATIONS:
        return True
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; known: {sorted([*ABLATIONS, *INPUT_ABLATIONS])}")
    return paradigm in ABLATIONS[ablation]


def other_images(images: list) -> list:
    """Each row's image replaced by the next row's (a lone row: a blank mid-grey image of its size)."""
    from PIL import Image

    if len(images) > 1:
        return images[1:] + images[:1]
    return [Image.new("RGB", images[0].size, (128, 128, 128))]


# ---------------------------------------------------------------------------------------------
# Models: where they come from. The driver reads only lare_config.json; each actor fetches the whole export
# itself (on a cluster the driver's disk is not the actors').

CONFIG_FILE = "lare_config.json"


class ModelNotFound(FileNotFoundError):
    """A model that is not a LaRe export, or cannot be fetched; the message names what was looked at."""


def is_mlflow_uri(spec: str) -> bool:
    return str(spec).startswith(("runs:/", "models:/"))


def _registered_source(spec: str, tracking_uri: str | None) -> str:
    """Where the files of models:/<name>/<version> (or models:/<name>@<alias>) are. Asked of the registry
    explicitly: MLflow's own models:/ download reads the process-wide registry URI, not the tracking URI given."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri)
    rest = spec[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
    else:
        raise ValueError("expected models:/<name>/<version> or models:/<name>@<alias>")
    return client.get_model_version_download_uri(name, version)


def _mlflow_download(spec: str, path: str, dst: Path, tracking_uri: str | None) -> Path:
    """Download `path` below the artifacts of spec ('' = all of them) into dst."""
    import mlflow

    try:
        source = spec if spec.startswith("runs:/") else _registered_source(spec, tracking_uri)
        uri = f"{source.rstrip('/')}/{path}" if path else source
        if uri.startswith("runs:/") and "/" not in uri[len("runs:/"):].strip("/"):
            uri = uri.rstrip("/") + "/"  # a whole run: MLflow refuses runs:/<id> and takes runs:/<id>/
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri))
    except Exception as e:  # MlflowException, RestException, OSError: all mean "cannot get it"
        raise ModelNotFound(f"model {spec}: cannot download {path or 'it'} from MLflow at {redact(tracking_uri or '')}: "
                            f"{type(e).__name__}: {redact(str(e))[:300]}") from None


def _check_config(text: str, where: str) -> dict:
    try:
        cfg = json.loads(text)
        if not isinstance(cfg["method"]["paradigm"], str):
            raise TypeError("not a string")
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ModelNotFound(f"{where}: field method.paradigm missing or invalid ({type(e).__name__}: {e})") from None
    return cfg


# Where an export may sit below a model location: the folder itself; its model/ folder (a training run's
# artifacts); in either, the HF export inside a LaRe MLflow model, at the place its MLmodel file names.
WHERE = "in it or in its model/ folder, nor in a LaRe MLflow model there"


def _locate(read) -> tuple[str, str] | None:
    """(the export's folder relative to the location, '' or ending in '/'; its lare_config.json text), or None.
    read(relative path) -> the file's text, or None when it is not there."""
    for sub in ("", "model/"):
        text = read(sub + CONFIG_FILE)
        if text is not None:
            return sub, text
        mlmodel = read(sub + "MLmodel")
        if mlmodel is not None:
            from lare.mlflow_model import export_path

            inner = export_path(mlmodel)
            text = read(f"{sub}{inner}/{CONFIG_FILE}") if inner else None
            if text is not None:
                return f"{sub}{inner}/", text
    return None


def read_model_config(spec: str, tracking_uri: str | None = None) -> dict:
    """The lare_config.json of a model (see WHERE), without fetching the weights. spec: a local folder,
    s3://... (any pyarrow URI), runs:/<id>[/<path>], models:/<name>/<version>."""
    spec = str(spec)
    if is_mlflow_uri(spec):
        tried = []
        with tempfile.TemporaryDirectory(prefix="lare-config-") as tmp:
            def read(rel: str) -> str | None:
                try:
                    return _mlflow_download(spec, rel, Path(tmp) / str(len(tried)), tracking_uri).read_text()
                except ModelNotFound as e:
                    tried.append(str(e))
                    return None

            found = _locate(read)
        if found is None:
            raise ModelNotFound(f"model {spec}: no {CONFIG_FILE} {WHERE}: {tried[-1]}")
        return _check_config(found[1], f"model {spec}: {found[0]}{CONFIG_FILE}")
    if is_remote(spec):
        import pyarrow.fs as pafs

        fs, root = resolve(spec)
        if fs.get_file_info(root).type != pafs.FileType.Directory:
            raise ModelNotFound(f"model {redact(spec)}: no such directory")

        def read(rel: str) -> str | None:
            if fs.get_file_info(f"{root}/{rel}").type != pafs.FileType.File:
                return None
            with fs.open_input_stream(f"{root}/{rel}") as f:
                return f.read().decode()

        found = _locate(read)
        if found is None:
            raise ModelNotFound(f"model {redact(spec)} is not a LaRe export directory (no {CONFIG_FILE} {WHERE})")
        return _check_config(found[1], f"model {redact(spec)}: {found[0]}{CONFIG_FILE}")
    path = _export_dir(Path(spec).expanduser(), spec)
    return _check_config((path / CONFIG_FILE).read_text(), str(path / CONFIG_FILE))


def _export_dir(path: Path, spec: str) -> Path:
    if not path.is_dir():
        raise ModelNotFound(f"model directory {path} does not exist")
    found = _locate(lambda rel: (path / rel).read_text() if (path / rel).is_file() else None)
    if found is None:
        raise ModelNotFound(f"model {redact(spec)}: {path} is not a LaRe export directory (no {CONFIG_FILE} {WHERE})")
    return path / found[0]


def fetch_model(spec: str, workdir: Path, tracking_uri: str | None = None) -> Path:
    """A local export directory for spec: the folder itself when local, else downloaded into workdir."""
    spec = str(spec)
    if is_mlflow_uri(spec):
        local = _mlflow_download(spec, "", workdir, tracking_uri)
    elif is_remote(spec):
        import pyarrow.fs as pafs

        fs, root = resolve(spec)
        if fs.get_file_info(root).type != pafs.FileType.Directory:
            raise ModelNotFound(f"model {redact(spec)}: no such directory")
        local = workdir
        pafs.copy_files(root, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    else:
        local = Path(spec).expanduser()
    return _export_dir(local, spec)


# ---------------------------------------------------------------------------------------------
# Inference


def inference_records(items: Iterable[EvalItem]) -> list[dict]:
    """The rows the predictor reads: EvalItem.to_record() with `benchmark` added (ids are unique only within a
    benchmark) and the choices as JSON text (Arrow types a column of empty lists as list<null>, which numpy batches
    turn into awkward object arrays); the empty `steps` column is dropped for the same reason."""
    out = []
    for it in items:
        rec = it.to_record()
        rec.pop("steps")
        rec["benchmark"] = it.benchmark
        rec["choices"] = json.dumps(list(it.choices))
        out.append(rec)
    return out


def _png(array) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


class ModelPredictor:
    """Loads a LaRe model once (Ray Data creates one per actor) and generates for batches of inference records.

    model_uri: a LaRe export (local folder, s3://, runs:/, models:/; fetched here, so on a cluster each actor
    downloads its own copy); or model=: a LaReModel already in memory (in-process only).
    heatmap_keys: (benchmark, id) pairs whose refocus maps (and decoded regions) come back."""

    def __init__(self, model_uri: str | None = None, *, model=None, tracking_uri: str | None = None,
                 ablations: Sequence[str] = ("none",), max_new_tokens: int | None = None,
                 heatmap_keys: Iterable[Sequence[str]] = (), device: str | None = None):
        import torch

        from lare.model import LaReModel

        if model is None:
            if model_uri is None:
                raise ValueError("ModelPredictor needs model_uri or model")
            # The weights are in memory once loaded: a downloaded copy is not kept.
            with tempfile.TemporaryDirectory(prefix="lare-model-") as tmp:
                model = LaReModel.from_pretrained(fetch_model(model_uri, Path(tmp), tracking_uri))
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device) if device else model.device
        self.model = model.to(self.device).eval()
        bad = [a for a in ablations if not applicable(a, model.paradigm)]
        if bad:
            raise ValueError(f"ablations {bad} do not apply to a {model.paradigm!r} model")
        self.ablations = tuple(ablations)
        self.max_new_tokens = max_new_tokens
        self.heatmap_keys = {tuple(k) for k in heatmap_keys}

    def __call__(self, batch: dict) -> dict[str, list]:
        import torch

        from lare.batch import Step, build_batch, example_from_record

        model, cfg = self.model, self.model.cfg
        n = len(batch["id"])
        keys = [(str(batch["benchmark"][i]), str(batch["id"][i])) for i in range(n)]
        examples = []
        for i in range(n):
            rec = {"id": keys[i][1], "image": batch["image"][i], "question": str(batch["question"][i]),
                   "choices": json.loads(str(batch["choices"][i])), "answer": str(batch["answer"][i]), "steps": []}
            examples.append(example_from_record(rec, cfg.data.max_steps, source=keys[i][0]))
        prompt = build_batch(examples, model.processor, cfg, prompt_only=True).to(self.device)
        wanted = [k in self.heatmap_keys for k in keys]
        trace_boxes = _trace_boxes(batch, n)

        out: dict[str, list] = {c: [] for c in COLUMNS}
        for ablation in self.ablations:
            t0 = time.perf_counter()
            if ablation == "other_image":
                swapped = [dataclasses.replace(ex, image=im) for ex, im in
                           zip(examples, other_images([ex.image for ex in examples]))]
                gen = model(build_batch(swapped, model.processor, cfg, prompt_only=True).to(self.device),
                            mode="generate", max_new_tokens=self.max_new_tokens)
            elif ablation in ("gold_boxes", "gold_focus"):  # the same prompt; the trace's boxes ride along
                # gold_boxes writes the k-th box the trace has; gold_focus maps each slot to its step, boxless ones too
                boxes_of = _step_boxes(batch, n, keep_missing=ablation == "gold_focus")
                gold = [dataclasses.replace(ex, steps=[Step("", box) for box in boxes])
                        for ex, boxes in zip(examples, boxes_of)]
                gen = model(dataclasses.replace(prompt, examples=gold), mode="generate", ablation=ablation,
                            max_new_tokens=self.max_new_tokens)
            else:
                gen = model(prompt, mode="generate", ablation=ablation, max_new_tokens=self.max_new_tokens)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            latency = (time.perf_counter() - t0) / n
            regions = self._regions(gen.latents) if model.pixel is not None and any(wanted) else None
            for b in range(n):
                out["benchmark"].append(keys[b][0])
                out["id"].append(keys[b][1])
                out["ablation"].append(ablation)
                out["text"].append(gen.texts[b])
                out["answer"].append(gen.answers[b])
                for key, col in zip(TOKEN_KEYS, TOKEN_COLUMNS):
                    out[col].append(int(gen.tokens[b][key]))
                out["latency_s"].append(latency)
                out["boxes"].append(json.dumps(gen.boxes[b]))  # text_cot, crop: the boxes the model wrote
                maps = gen.refocus[b]
                out["grounding"].append(json.dumps(self._grounding(trace_boxes[b], gen.boxes[b], maps)))
                # Refocus maps as JSON text ([steps][rows][cols]): ragged across samples, tiny, and a plain
                # string column travels through Arrow without surprises.
                out["refocus"].append(json.dumps(maps.tolist()) if wanted[b] and maps is not None else "")
                out["regions"].append(regions[b] if wanted[b] and regions is not None else b"")
        return out

    def _grounding(self, gold: list | None, written: list, maps) -> dict | None:
        """Where this answer looked against its trace's boxes (lare.eval.grounding); None without boxes."""
        if not gold:
            return None
        if maps is not None:
            return focus_in_box(maps, gold, slot_steps(len(gold), self.model.cfg))
        if self.model.paradigm in BOX_WRITERS:
            return written_boxes(written, gold)
        return None

    def _regions(self, latents) -> list[bytes]:
        """Per sample, the pixel decoder's rendering of each latent step, side by side in one PNG strip
        (steps x pixel_size wide, pixel_size high)."""
        import torch

        strips = []
        pixel = self.model.pixel
        for z in latents:
            if z is None or z.shape[0] == 0:
                strips.append(b"")
                continue
            with torch.no_grad():
                img = pixel(z.to(self.device, next(pixel.parameters()).dtype)).float().clamp(0, 1)  # [k, 3, S, S]
            strip = (img.permute(2, 0, 3, 1).reshape(img.shape[2], -1, 3) * 255).round().byte().cpu().numpy()
            strips.append(_png(strip))
        return strips


def _trace_boxes(batch: dict, n: int) -> list[list | None]:
    """Per row, its trace's step boxes (None where a step has none); None for a row read without them."""
    metas = batch.get("meta")
    if metas is None:
        return [None] * n
    return [json.loads(str(metas[i]) or "{}").get("step_boxes") for i in range(n)]


def _step_boxes(batch: dict, n: int, keep_missing: bool = False) -> list[list]:
    """Per row, the boxes of its trace's steps (EvalItem.meta["step_boxes"], kept by the refocus reader); a step
    without a box is left out, or kept as None (keep_missing)."""
    metas = batch.get("meta")
    if metas is None:
        raise ValueError("the gold_boxes and gold_focus ablations need the items' meta (their trace's step boxes)")
    out = []
    for i in range(n):
        boxes = json.loads(str(metas[i]) or "{}").get("step_boxes")
        if boxes is None:
            raise ValueError(f"item {batch['id'][i]}: no step boxes in its meta: the gold_boxes and gold_focus "
                             f"ablations need a benchmark read from traces (refocus)")
        out.append(boxes if keep_missing else [b for b in boxes if b is not None])
    return out


def _plain(value):
    """numpy scalars and arrays from Ray rows as plain Python values."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def _model_uri(model) -> str | None:
    """A model given by location, as a string the actors can use (local paths made absolute: Ray workers run
    in other folders); None for a model object."""
    if isinstance(model, (str, os.PathLike)):
        spec = str(model)
        return spec if is_mlflow_uri(spec) or is_remote(spec) else str(Path(spec).expanduser().resolve())
    return None


def run_inference(model, items: list[EvalItem], *, ablations: Sequence[str] = ("none",), batch_size: int = 8,
                  use_ray: bool = True, concurrency: int = 1, num_gpus: float = 0, max_new_tokens: int | None = None,
                  heatmap_keys: Iterable[Sequence[str]] = (), tracking_uri: str | None = None) -> list[dict]:
    """One row per item and ablation (COLUMNS), in item order then ablation order.

    model: a location (folder, s3://, runs:/, models:/) or, in-process only, a LaReModel.
    use_ray: Ray Data with an actor pool of `concurrency` actors, each with `num_gpus` GPUs (the caller has
    initialised Ray). Otherwise in-process."""
    if not items:
        return []
    records = inference_records(items)
    uri = _model_uri(model)
    kwargs = {"ablations": list(ablations), "max_new_tokens": max_new_tokens, "tracking_uri": tracking_uri,
              "heatmap_keys": [list(k) for k in heatmap_keys]}
    if use_ray:
        if uri is None:
            raise ValueError("use_ray=True needs the model's location (each actor loads it), not a model object")
        import ray

        from lare.storage import worker_env
        from lare.rayenv import ensure_ray

        ensure_ray()  # a Ray already up (or $RAY_ADDRESS) is used; never a bare ray.init() onto someone else's cluster

        from lare.rayenv import runtime_env_vars

        # Ray logs runtime_env in clear: credentials reach the actors through the environment Ray inherited instead.
        env_vars = runtime_env_vars(worker_env())
        remote_args = {"runtime_env": {"env_vars": env_vars}} if env_vars else {}
        ds = ray.data.from_items(records)
        ds = ds.map_batches(ModelPredictor, fn_constructor_kwargs={"model_uri": uri, **kwargs},
                            batch_size=batch_size, concurrency=concurrency, num_gpus=num_gpus or None,
                            batch_format="numpy", **remote_args)
        # Only the small result columns come back to the driver: images stay in the object store.
        rows = [{k: _plain(v) for k, v in row.items()} for row in ds.take_all()]
    else:
        was_training = getattr(model, "training", False)  # a model lent by a training loop goes back as it came
        predictor = ModelPredictor(uri, **kwargs) if uri else ModelPredictor(model=model, **kwargs)
        rows = []
        try:
            from tqdm import tqdm

            for i in tqdm(range(0, len(records), batch_size), desc="evaluate", unit="batch", disable=None):
                chunk = records[i:i + batch_size]
                out = predictor({k: [r[k] for r in chunk]
                                 for k in ("benchmark", "id", "image", "question", "choices", "answer", "meta")})
                rows += [dict(zip(out, values)) for values in zip(*out.values())]
        finally:
            if uri is None:
                model.train(was_training)
    order = {(r["benchmark"], r["id"]): i for i, r in enumerate(records)}
    rank = {a: i for i, a in enumerate(ablations)}
    rows.sort(key=lambda r: (order[(r["benchmark"], r["id"])], rank[r["ablation"]]))
    for r in rows:
        r["regions"] = bytes(r["regions"]) if r["regions"] is not None else b""
    return rows
