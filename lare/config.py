"""One validated configuration object for everything: model, method, data, training, tracking.

Loaded from YAML, then dotted `key=value` overrides (`method.recon_weight=0.5`). Every field has a
default and a one-line description (`python jobs/train.py --help` prints them all). An unknown or
mistyped key is an error that names the key and suggests the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it."""


def opt(default: Any, help: str, **kw):
    """A config field: a default plus its one-line description."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: typing.cast(Any, type(d))(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


PARADIGMS = ("direct", "text_cot", "crop", "latent", "lare")
LATENT_PARADIGMS = ("latent", "lare")  # they reason in latent slots: the curriculum replaces their text steps


@dataclass
class ModelConfig:
    backbone: str = opt("tiny-qwen2.5-vl", "A tiny preset (tiny-qwen2.5-vl, tiny-qwen3-vl: random weights; tiny-qwen3-vl-pretrained: bundled, pretrained by jobs/pretrain.py) or a local Hugging Face checkpoint directory.")
    architecture: str = opt("", "When model.backbone is a checkpoint not on this machine (dry runs): the random-* preset with its architecture.")
    dtype: Literal["float32", "bfloat16", "float16"] = opt("float32", "Parameter dtype when loading; FSDP2 mixed precision is set in train.*.")
    attn_implementation: Literal["sdpa", "eager"] = opt("sdpa", "Attention kernel; 'eager' is forced when method.refocus=lm_attention (it needs attention weights).")
    min_pixels: int = opt(28 * 28 * 4, "Smallest image area after Qwen's dynamic resize (pixels).")
    max_pixels: int = opt(28 * 28 * 64, "Largest image area after Qwen's dynamic resize (pixels); bounds the visual tokens per image.")
    crop_max_pixels: int = opt(28 * 28 * 16, "Area every re-encoded crop of the crop baseline is zoomed or shrunk to (pixels; 16 tokens of 28 px).")
    seed: int = opt(0, "Seed for the random initialisation of tiny presets and of the LaRe heads.")


@dataclass
class MethodConfig:
    paradigm: Literal["direct", "text_cot", "crop", "latent", "lare"] = opt("lare", "Reasoning paradigm: direct, text_cot, crop, latent (Coconut) or lare.")
    latent_steps: int = opt(6, "K: latent slots in the fully latent stage and at inference.")
    latents_per_step: int = opt(2, "c: latent slots that replace one CoT step in intermediate curriculum stages.")
    max_latent_steps: int = opt(16, "Hard cap on latent steps at inference (adaptive stop never exceeds it).")
    adaptive_stop: bool = opt(False, "Train a stop head on each latent; inference may stop before latent_steps.")
    refocus: Literal["cross_attention", "lm_attention"] = opt("cross_attention", "Saliency over visual tokens: learned cross-attention from h_t, or the LM's own attention (layers and heads averaged).")
    refocus_heads: int = opt(4, "Heads of the learned refocus cross-attention.")
    refocus_dim: int = opt(0, "Width of the refocus attention (0 = the language model's hidden size).")
    top_k: int = opt(0, "Keep only the top-k salient visual tokens per latent step (0 = all).")
    answer_weight: float = opt(1.0, "Weight of the answer tokens' mean cross-entropy (the same in every paradigm).")
    text_weight: float = opt(1.0, "Weight of the rationale tokens' mean cross-entropy (text CoT steps and boxes, a crop's box, remaining steps in curriculum stages).")
    recon_weight: float = opt(1.0, "lambda_rec: weight of the visual reconstruction loss 1 - cos(D(z_t), sg(y_t)).")
    focus_weight: float = opt(0.5, "lambda_focus: weight of KL(box distribution || refocus attention); 0 disables.")
    focus_forcing: float = opt(0.0, "Training only: the probability that a latent slot whose step has a box reads the image through that box (uniform over its tokens) instead of its own refocus map, which still learns from the focus loss. The latent counterpart of crop training on the trace's crops: without it the language model learns from latents that read whatever an untrained refocus picked.")
    align_weight: float = opt(0.0, "lambda_align: weight of the InfoNCE alignment between latents and region embeddings.")
    align_temperature: float = opt(0.07, "Temperature of the alignment InfoNCE.")
    pixel_decoder: bool = opt(False, "Add a small conv decoder that renders the region each latent looked at (L1 on a low-res crop).")
    pixel_weight: float = opt(0.1, "Weight of the pixel-decoder L1 loss (when pixel_decoder is on).")
    pixel_size: int = opt(32, "Side of the low-resolution region crop rendered by the pixel decoder.")
    stop_weight: float = opt(0.1, "Weight of the stop-head BCE (when adaptive_stop is on).")
    decoder_hidden: int = opt(0, "Hidden width of the reconstruction decoder D (0 = the language model's hidden size).")


@dataclass
class DataConfig:
    source: str = opt("refocus", "Trace source built by pipelines/ (refocus, easy_vqa, visual_cot, gqa, vqav2, jsonl, parquet).")
    traces_dir: str = opt("data/traces/refocus", "Folder (or s3:// URI) of the trace Parquet files with one subfolder per split.")
    source_options: dict = opt({}, "Reader options used when the job builds the bundled refocus traces itself (e.g. {colour_only: true}); see docs/data.md.")
    train_split: str = opt("train", "Split used for training.")
    val_split: str = opt("val", "Split used for validation during training.")
    max_steps: int = opt(3, "Most CoT steps a trace may have; the final curriculum stage replaces all of them.")
    max_answer_tokens: int = opt(16, "Greedy decoding budget after the reasoning for latent paradigms.")
    max_new_tokens: int = opt(96, "Greedy decoding budget for text paradigms (steps + answer).")
    box_grammar: bool = opt(True, "Decode each generated box (after <|box_start|>) under the box grammar (x1,y1),(x2,y2): the form is fixed, the coordinates are the model's. Off: free decoding, and a malformed box gets no crop.")
    mixture: dict = opt({}, "Training mixture: traces folder or URI -> sampling weight (e.g. Visual-CoT + GQA); empty = traces_dir alone.")
    num_train_samples: int = opt(0, "Use at most this many training rows (0 = all).")
    num_val_samples: int = opt(64, "Validation rows evaluated at each validation (0 = all).")
    max_text_chars: int = opt(4000, "Longest question, answer, choice or step text (characters) a trace build keeps; longer is a text_too_long reject.")


@dataclass
class TrainConfig:
    experiment: str = opt("lare-tiny", "Experiment name: the Ray Train run name and the MLflow experiment.")
    storage_path: str = opt("runs", "Where checkpoints live: a local folder or an s3:// URI.")
    num_workers: int = opt(1, "Ray Train workers (one per GPU on GPU clusters).")
    use_gpu: bool = opt(False, "Train on GPUs (nccl, bf16 mixed precision) instead of CPUs (gloo, fp32).")
    cpus_per_worker: int = opt(1, "CPUs reserved for each training worker.")
    mixed_precision: Literal["auto", "bf16", "fp32"] = opt("auto", "Compute dtype: auto = bf16 on GPU (fp32 master weights and gradient reduction; FSDP2 param dtype under fsdp/hsdp, autocast under ddp), fp32 on CPU.")
    grad_accum: int = opt(1, "Micro-batches accumulated per optimizer step.")
    batch_size: int = opt(8, "Samples per worker per optimizer step.")
    lr: float = opt(3e-3, "Peak learning rate (AdamW).")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    freeze_vision: bool = opt(False, "Keep the vision tower's weights fixed (e.g. a tower pretrained to see, while the language model learns to use it).")
    warmup_steps: int = opt(10, "Linear warm-up steps before cosine decay.")
    grad_clip: float = opt(1.0, "Gradient norm clip (0 = off).")
    epochs_per_stage: int = opt(1, "Epochs spent in each curriculum stage.")
    num_stages: int = opt(-1, "Curriculum stages 0..S (-1 = data.max_steps + 1: full text, then one more step latent per stage, last stage fully latent).")
    start_stage: int = opt(0, "First curriculum stage (use data.max_steps to skip the curriculum).")
    reset_optimizer_each_stage: bool = opt(True, "Fresh optimizer state at each curriculum stage (as in Coconut), for latent and lare: the other paradigms' inputs do not change between stages.")
    activation_checkpointing: bool = opt(False, "Recompute decoder-layer activations in backward to save memory.")
    parallelism: Literal["auto", "ddp", "fsdp", "hsdp"] = opt("auto", "How the workers hold the model, on one DeviceMesh (replicate, shard): ddp replicates it, fsdp shards it over all workers (FSDP2), hsdp shards within a node and replicates across nodes; auto = ddp when weights, gradients and AdamW state fit one device with margin, else hsdp on several nodes, else fsdp.")
    mesh: list = opt([], "The DeviceMesh shape [replicate, shard] (its product = train.num_workers); [] = from train.parallelism and the workers per node.")
    reshard_after_forward: bool = opt(False, "FSDP2: free gathered decoder-layer weights after each forward. Off by default: the latent loop runs K+2 forwards per step, each would all-gather every layer again.")
    checkpoint_every: int = opt(50, "Optimizer steps between checkpoints (and at each stage end).")
    keep_checkpoints: int = opt(2, "Checkpoints kept: the newest N, or the best N by train.checkpoint_score.")
    checkpoint_score: Literal["", "val_accuracy"] = opt("", "Keep the best checkpoints by this validation metric ('' = the newest); validates at every checkpoint.")
    max_failures: int = opt(1, "Worker failures survived by restarting from the last checkpoint.")
    val_every: int = opt(0, "Optimizer steps between validations (0 = at the end of each stage).")
    log_every: int = opt(5, "Optimizer steps between metric logs.")
    seed: int = opt(0, "Seed for data order and dropout.")


@dataclass
class TrackingConfig:
    enabled: bool = opt(True, "Log the run to MLflow.")
    uri: str = opt("", "MLflow tracking URI ('' = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db under the working directory).")
    artifact_location: str = opt("", "Artifact root for new experiments ('' = ./mlartifacts next to the SQLite store).")
    run_name: str = opt("", "MLflow run name ('' = generated).")
    timeout_s: float = opt(10.0, "Seconds to wait for the tracking server at start before failing.")
    register_as: str = opt("", "Register the run's MLflow model (pyfunc) in the model registry under this name, a new version per run ('' = not registered); load it with mlflow.pyfunc.load_model('models:/NAME/VERSION') or lare-eval --model models:/NAME/VERSION.")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> "Config":
        m, d = self.method, self.data
        _check(m.latent_steps >= 1, "method.latent_steps", "must be >= 1")
        _check(m.latents_per_step >= 1, "method.latents_per_step", "must be >= 1")
        _check(m.max_latent_steps >= m.latent_steps, "method.max_latent_steps", f"must be >= method.latent_steps ({m.latent_steps})")
        _check(m.top_k >= 0, "method.top_k", "must be >= 0")
        _check(m.refocus_heads >= 1, "method.refocus_heads", "must be >= 1")
        _check(0.0 <= m.focus_forcing <= 1.0, "method.focus_forcing", "must be a probability in [0, 1]")
        for name in ("answer_weight", "text_weight", "recon_weight", "focus_weight", "align_weight", "pixel_weight", "stop_weight"):
            _check(getattr(m, name) >= 0, f"method.{name}", "must be >= 0")
        _check(m.align_temperature > 0, "method.align_temperature", "must be > 0")
        _check(d.max_steps >= 1, "data.max_steps", "must be >= 1")
        _check(self.model.min_pixels <= self.model.max_pixels, "model.min_pixels", "must be <= model.max_pixels")
        _check(self.train.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.train.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        for path, weight in self.data.mixture.items():
            _check(isinstance(weight, (int, float)) and weight > 0, f"data.mixture[{path!r}]", "weight must be a positive number")
        _check(self.train.num_workers >= 0, "train.num_workers", "must be >= 0")
        _check(self.train.lr > 0, "train.lr", "must be > 0")
        mesh, workers = self.train.mesh, max(1, self.train.num_workers)
        if mesh:
            _check(len(mesh) == 2 and all(isinstance(n, int) and n >= 1 for n in mesh), "train.mesh",
                   f"{mesh}: must be two positive integers [replicate, shard]")
            _check(mesh[0] * mesh[1] == workers, "train.mesh", f"{mesh}: replicate x shard must equal train.num_workers={workers}")
            kind = self.train.parallelism
            _check(kind != "ddp" or mesh[1] == 1, "train.mesh", f"{mesh}: ddp replicates only, so shard must be 1")
            _check(kind != "fsdp" or mesh[0] == 1, "train.mesh", f"{mesh}: fsdp shards over every worker, so replicate must be 1")
        name = self.tracking.register_as
        _check(not name or self.tracking.enabled, "tracking.register_as", "needs tracking.enabled=true (the registry is MLflow's)")
        # models:/NAME/VERSION and models:/NAME@ALIAS split on these; a quote would break the registry's search filter
        _check(name == name.strip() and not any(c in name for c in "/:@'\""), "tracking.register_as",
               f"{name!r}: no surrounding spaces and none of / : @ ' \" (they break models:/NAME/VERSION)")
        return self

    @property
    def final_stage(self) -> int:
        """The fully latent curriculum stage: every CoT step is replaced."""
        return self.data.max_steps

    def with_absolute_paths(self, root: str | Path | None = None) -> "Config":
        """Local relative paths made absolute against `root` (default: the working directory). Drivers call it
        before handing the config to Ray workers, whose working directory is not the driver's."""
        root = Path(root or Path.cwd())

        def absolute(value: str) -> str:
            if not value or "://" in value or Path(value).is_absolute():
                return value
            return str((root / value).resolve())

        data = self.to_dict()
        data["data"]["traces_dir"] = absolute(data["data"]["traces_dir"])
        data["data"]["mixture"] = {absolute(k): v for k, v in data["data"]["mixture"].items()}
        data["train"]["storage_path"] = absolute(data["train"]["storage_path"])
        if (root / data["model"]["backbone"]).exists():
            data["model"]["backbone"] = absolute(data["model"]["backbone"])
        uri = data["tracking"]["uri"]
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            data["tracking"]["uri"] = "sqlite:///" + absolute(uri[len("sqlite:///"):])
        return Config.from_dict(data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """`section.key -> value`, e.g. for MLflow params."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        return _build(cls, data or {}, prefix="").validate()


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config: {key} {message}")


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def all_keys(cls=Config, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for name in _fields(cls):
        if dataclasses.is_dataclass(hints[name]):
            keys += all_keys(hints[name], f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    if not close:  # a bare field name given without its section
        close = [k for k in all_keys() if k.split(".")[-1] == key.split(".")[-1]][:1]
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"config: unknown key '{key}'{hint}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(map(str, typing.get_args(tp)))
            raise ConfigError(f"config: {key}={value!r} is not one of: {choices}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"config: {key} has a bad value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config: {key} expects a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config: {key} expects a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config: {key} expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config: {key} expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 5e-3 (no dot) as text
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config: {key} expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config: {key} expects a string, got {value!r}")
    return value


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"config: section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = _fields(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown(prefix + str(key))
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, prefix + key + ".")
        else:
            kwargs[key] = _coerce(value, tp, prefix + key)
    return cls(**kwargs)


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value parsed as YAML so numbers, bools and lists get their types)."""
    if "=" not in item:
        raise ConfigError(f"config: override '{item}' is not of the form section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    value = yaml.safe_load(raw) if raw.strip() else ""
    hints = typing.get_type_hints(Config)
    section, _, name = key.partition(".")
    if section in hints and name:
        tp = typing.get_type_hints(hints[section]).get(name)
        if tp is str:  # keep strings verbatim: "1e-3" or "007" stay text
            value = raw
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """YAML file (optional) + dotted overrides -> a validated Config."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config: file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config: {path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config: {path} must hold a mapping of sections")
    for item in overrides:
        key, value = parse_override(item)
        if key not in all_keys():
            raise _unknown(key)
        section, name = key.split(".", 1)
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"config: section '{section}' must be a mapping")
        data[section][name] = value
    try:
        return Config.from_dict(data)
    except ConfigError as e:
        if path is not None:
            raise ConfigError(f"{e} (in {path})") from e
        raise


def describe() -> str:
    """Every key with its type, default and description (for --help)."""
    lines = []
    defaults = Config()
    for section in _fields(Config):
        sec_obj = getattr(defaults, section)
        lines.append(f"{section}:")
        hints = typing.get_type_hints(type(sec_obj))
        for f in dataclasses.fields(sec_obj):
            tp = hints[f.name]
            tname = "|".join(map(str, typing.get_args(tp))) if typing.get_origin(tp) is Literal else getattr(tp, "__name__", str(tp))
            lines.append(f"  {section}.{f.name} ({tname}, default {getattr(sec_obj, f.name)!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)
