"""Dry run: build the model on the meta device, count parameters, estimate per-GPU memory, check the config.

    python -m lare.sizing --config configs/qwen2.5-vl-7b.yaml [key=value ...] [--json]
    python jobs/train.py --dry-run --config configs/qwen2.5-vl-7b.yaml           # the same report

Nothing is allocated or downloaded. `model.backbone` is a preset name or, in production, a local checkpoint
folder (e.g. /models/Qwen2.5-VL-7B-Instruct). When that folder is not on this machine, the architecture is
taken from `model.architecture` (a `random-*` preset), or else chosen from the folder name (`ARCHITECTURES`).

Memory model (per GPU, one Ray Train worker per GPU, world size W = train.num_workers), for each layout the
training job can use (lare/train/parallel.py) on a DeviceMesh [replicate, shard]: ddp [W, 1], fsdp [1, W] and,
on several nodes, hsdp [nodes, workers per node]. Sharded layouts wrap each decoder layer, each vision block,
then the root with FSDP2; S is the shard size:
- sharded state: fp32 master weights + fp32 gradients + AdamW's two fp32 moments = 16 bytes/param / S;
- all-gathered parameters in the compute dtype: the root unit (embeddings, lm_head, merger, LaRe heads;
  FSDP2 keeps the root unsharded from forward through backward) plus two layers (current and prefetched);
- unsharded gradients: the root's (held until the end of backward) and one layer's, each in the compute
  dtype plus its fp32 copy for the reduce-scatter;
- activations per micro-batch sample from the sequence (visual tokens from model.max_pixels, prompt and
  supervised text, latent slots), with activation checkpointing keeping one hidden state per layer and
  recomputing one layer at a time; the vision tower likewise per patch; plus suffix logits, the KV cache
  of the latent loop and the refocus projections;
- a fixed CUDA/NCCL overhead and 10% allocator fragmentation on the transient parts.
It is an estimate for planning (within tens of percent), not a measurement; `ASSUMPTIONS` lists the inputs.

`train.parallelism=auto` picks from these estimates (`choose_layout`): ddp when its whole estimate is at most
half of one device (every worker holds everything, and the gradient all-reduce is one bucketed collective per
step instead of an all-gather and a reduce-scatter per layer), else hsdp when the workers span several nodes (the
shards' traffic stays on the node's own links; only the gradient all-reduce crosses nodes), else fsdp.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys

from lare.config import LATENT_PARADIGMS, Config, ConfigError, load_config

GIB = 1024**3
H100_GIB = 79.6            # an H100 80GB shows 81559 MiB to CUDA
PROMPT_TOKENS = 128        # chat template + question + options, before the image's visual tokens are counted
CUDA_OVERHEAD_GIB = 2.0    # CUDA context, cuBLAS workspaces, NCCL buffers
FRAGMENTATION = 0.10       # caching-allocator slack on the transient parts
GPUS_PER_NODE = 8          # p5.48xlarge / DGX H100
DDP_SHARE = 0.5            # auto picks ddp when its estimate is at most this share of one device
LAYOUTS = ("ddp", "fsdp", "hsdp")
ASSUMPTIONS = (
    "full fine-tuning: every parameter trainable, AdamW with two fp32 moments",
    "fp32 master weights and fp32 gradient reduction; compute dtype from train.mixed_precision (auto = bf16 on GPU)",
    "FSDP2 units (fsdp, hsdp): each decoder layer, each vision block, the root (the rest); the root stays unsharded through backward",
    "ddp: the whole model on every device, bf16 compute by autocast; gradients all-reduced in fp32 buckets",
    "decoder layers stay all-gathered from the first forward to backward unless train.reshard_after_forward",
    "activation checkpointing, when on, recomputes decoder-layer MLPs and whole vision blocks",
    f"prompt text of {PROMPT_TOKENS} tokens; supervised text of data.max_new_tokens tokens",
    "one image per sample at model.max_pixels (the largest the processor produces)",
)

# Checkpoint folder name -> the preset with its published architecture (random weights, meta device).
ARCHITECTURES = (
    (r"qwen2\.5-vl-3b", "random-qwen2.5-vl-3b"),
    (r"qwen2\.5-vl-7b", "random-qwen2.5-vl-7b"),
    (r"qwen3-vl-4b", "random-qwen3-vl-4b"),
    (r"qwen3-vl-8b", "random-qwen3-vl-8b"),
)


def architecture_for(backbone: str) -> str:
    """The `random-*` preset for a checkpoint path or hub-style id, from its name (case-insensitive)."""
    name = backbone.rstrip("/").lower()
    for pattern, preset in ARCHITECTURES:
        if re.search(pattern, name):
            return preset
    known = ", ".join(p for p, _ in ARCHITECTURES)
    raise ConfigError(f"config: model.backbone={backbone!r} is not on this machine and its name matches no known "
                      f"architecture ({known}); give a preset or an existing checkpoint folder")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the workers hold the model: the layout, its DeviceMesh shape (replicate, shard) and why it was chosen."""

    kind: str  # ddp | fsdp | hsdp
    mesh: tuple[int, int]
    why: str

    @property
    def sharded(self) -> bool:
        return self.kind != "ddp"

    def describe(self) -> str:
        return f"{self.kind} on mesh [replicate {self.mesh[0]}, shard {self.mesh[1]}]: {self.why}"


def mesh_for(kind: str, world: int, per_node: int) -> tuple[int, int]:
    """The mesh shape of a layout: ddp [W, 1], fsdp [1, W], hsdp [nodes, workers per node]."""
    if kind == "ddp":
        return (world, 1)
    if kind == "fsdp":
        return (1, world)
    if per_node < 1 or world % per_node:
        raise ConfigError(f"config: train.parallelism=hsdp needs the same number of workers on every node; "
                          f"{world} workers, {per_node} on this one (set train.mesh=[replicate, shard])")
    return (world // per_node, per_node)


def choose_layout(cfg: Config, world: int, per_node: int, ddp_bytes: float, device_bytes: float) -> Layout:
    """train.parallelism (auto resolved from the ddp estimate) and train.mesh, as one Layout. Pure: every rank
    that sees the same numbers picks the same layout."""
    kind, mesh = cfg.train.parallelism, tuple(cfg.train.mesh)
    fits = ddp_bytes <= DDP_SHARE * device_bytes
    fits_why = (f"ddp needs about {ddp_bytes / GIB:.2f} GiB per device, "
                f"{'within' if fits else 'over'} half of its {device_bytes / GIB:.1f} GiB")
    nodes = world // per_node if per_node >= 1 and world % per_node == 0 else 1
    if mesh:
        kind = kind if kind != "auto" else ("ddp" if mesh[1] == 1 else "fsdp" if mesh[0] == 1 else "hsdp")
        return Layout(kind, (mesh[0], mesh[1]), f"train.mesh={list(mesh)} as configured")
    if kind != "auto":
        return Layout(kind, mesh_for(kind, world, per_node), f"train.parallelism={kind} as configured")
    if world == 1 or fits:
        return Layout("ddp", (world, 1), "one worker" if world == 1 and not fits else fits_why)
    if nodes > 1:
        return Layout("hsdp", mesh_for("hsdp", world, per_node),
                      f"{fits_why}; {nodes} nodes of {per_node} workers: shard within a node, replicate across")
    return Layout("fsdp", (1, world), f"{fits_why}; one node: shard over all {world} workers")


def build_meta(cfg: Config):
    """(LaReModel on the meta device, where the architecture came from)."""
    from lare.backbone import PRESETS, checkpoint_dir
    from lare.model import LaReModel

    backbone = cfg.model.backbone
    try:
        if backbone in PRESETS:
            return LaReModel.build(cfg, device="meta"), f"preset {backbone}"
        path = checkpoint_dir(backbone)
        if (path / "config.json").is_file():  # a real checkpoint: its config is read, its weights (16 GB) are not
            return LaReModel.build(cfg, device="meta"), f"checkpoint config {path / 'config.json'}"
        preset = cfg.model.architecture or architecture_for(backbone)
        alt = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone=preset))
        how = "model.architecture" if cfg.model.architecture else "its folder name"
        return (LaReModel.build(alt, device="meta"),
                f"preset {preset} (checkpoint {backbone} not on this machine; architecture from {how})")
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        if "refocus_heads" in str(e):
            raise ConfigError(f"config: method.refocus_heads: {e}") from e
        raise


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def _layer_bytes_per_token(hidden: int, kv_dim: int, inter: int, c: int, gated: bool) -> int:
    """Activation bytes one transformer block keeps per token for backward (no checkpointing):
    two RMSNorm inputs upcast to fp32 (8h); normed inputs, q, k, v and the attention output in the compute
    dtype (c*(4h + 2kv)); the MLP's intermediate tensors (gate, up, act(gate), product: 4*c*I; 2*c*I ungated).
    Flash/SDPA attention keeps no S x S matrix."""
    return 8 * hidden + c * (4 * hidden + 2 * kv_dim) + (4 if gated else 2) * c * inter


def _world(cfg: Config) -> int:
    return max(1, cfg.train.num_workers)


def _compute_bytes(cfg: Config) -> int:
    mp = cfg.train.mixed_precision
    bf16 = mp == "bf16" or (mp == "auto" and cfg.train.use_gpu)
    return 2 if bf16 else 4


def host_memory_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / GIB


def dry_run(cfg: Config, gpu_memory_gib: float = H100_GIB, strict: bool = False, workers_per_node: int = 0,
            device_memory_gib: float = 0.0) -> dict:
    """Parameter counts, a per-device memory estimate for each layout, the layout train.parallelism picks, and
    config checks for `cfg` (see the module docstring). `workers_per_node` 0: GPUS_PER_NODE on GPU, all on one
    node on CPU. `device_memory_gib` 0: gpu_memory_gib on GPU, this host's RAM shared by the node's workers on CPU.
    `strict` raises ConfigError when a check is an error; otherwise `ok` says whether there is none."""
    checks: list[dict] = []

    def check(level: str, key: str, message: str) -> None:
        checks.append({"level": level, "key": key, "message": message})

    t = cfg.train
    if t.batch_size % t.grad_accum:
        check("error", "train.batch_size", f"train.batch_size={t.batch_size} is not a multiple of train.grad_accum={t.grad_accum}")
    model, source = build_meta(cfg)
    vlm = model.vlm
    text, vision = vlm.config.text_config, vlm.config.vision_config
    visual = vlm.model.visual
    layers = list(vlm.model.language_model.layers)
    blocks = list(visual.blocks)

    params = {
        "total": _count(model),
        "backbone": _count(vlm),
        "vision": _count(visual),
        "language_model": _count(vlm.model.language_model) + (_count(vlm.lm_head) if vlm.lm_head.weight is not
                                                                vlm.get_input_embeddings().weight else 0),
        "lare_heads": _count(model) - _count(vlm),
    }
    layer_params = max(_count(m) for m in layers)
    block_params = max(_count(m) for m in blocks)
    root_params = params["total"] - sum(_count(m) for m in layers) - sum(_count(m) for m in blocks)

    W = _world(cfg)
    c = _compute_bytes(cfg)
    per_node = workers_per_node or (min(W, GPUS_PER_NODE) if t.use_gpu else W)
    micro = max(1, t.batch_size // t.grad_accum)

    # ---- sequence ---------------------------------------------------------------------------------
    merge = vision.spatial_merge_size
    pixels_per_token = (vision.patch_size * merge) ** 2
    visual_tokens = cfg.model.max_pixels // pixels_per_token
    m = cfg.method
    latent = (m.latent_steps + 2) if m.paradigm in LATENT_PARADIGMS else 0   # slots + <|lare_start|>, <|lare_end|>
    crop_tokens = cfg.data.max_steps * (cfg.model.crop_max_pixels // pixels_per_token) if m.paradigm == "crop" else 0
    text_tokens = PROMPT_TOKENS + cfg.data.max_new_tokens
    seq = visual_tokens + crop_tokens + text_tokens + latent
    patches = (visual_tokens + crop_tokens) * merge * merge

    # ---- per-sample activations -------------------------------------------------------------------
    h, n_layers = text.hidden_size, text.num_hidden_layers
    kv_dim = text.num_key_value_heads * getattr(text, "head_dim", h // text.num_attention_heads)
    per_tok = _layer_bytes_per_token(h, kv_dim, text.intermediate_size, c, gated=True)
    hv = vision.hidden_size
    gated_vision = hasattr(blocks[0].mlp, "gate_proj")
    per_patch = _layer_bytes_per_token(hv, hv, vision.intermediate_size, c, gated=gated_vision)
    ckpt = t.activation_checkpointing
    if ckpt:  # decoder layers recompute only their MLP (the attention writes the KV cache); vision blocks whole
        mlp_saved = 4 * c * text.intermediate_size
        lm_act = n_layers * (per_tok - mlp_saved + c * h) * seq + mlp_saved * seq
        vis_act = len(blocks) * c * hv * patches + per_patch * patches
    else:
        lm_act = n_layers * per_tok * seq
        vis_act = len(blocks) * per_patch * patches
    eager = m.refocus == "lm_attention" or cfg.model.attn_implementation == "eager"
    attn_probs = text.num_attention_heads * seq * seq * 2 * c if eager else 0  # scores + probabilities
    attn_act = attn_probs * (1 if ckpt else n_layers)
    logits = cfg.data.max_new_tokens * vlm.config.text_config.vocab_size * (c + 8)  # logits, fp32 upcast, grad
    kv_cache = n_layers * 2 * kv_dim * seq * c
    width = (m.refocus_dim or h) if m.paradigm == "lare" else 0
    refocus = m.latent_steps * 2 * visual_tokens * width * c
    per_sample = lm_act + vis_act + attn_act + logits + kv_cache + refocus

    # ---- per-device memory, for each layout ----------------------------------------------------------
    activations = micro * per_sample

    def memory_of(kind: str, shard: int) -> dict:
        state = 16 * params["total"] / shard
        if kind != "ddp":  # decoder layers stay gathered through the latent loop unless train.reshard_after_forward
            lm_gathered = layer_params * (2 if t.reshard_after_forward else n_layers)
            gathered = c * (root_params + lm_gathered + 2 * block_params)
            grads = (c + 4) * (root_params + max(layer_params, block_params))
        else:  # autocast keeps a compute-dtype copy of the weights it casts; DDP's buckets hold the fp32 gradients
            gathered = c * params["total"] if c != 4 else 0
            grads = 0
        optimizer_step = 4 * params["total"] / shard   # foreach AdamW temporaries, after activations are freed
        transient = max(gathered + grads + activations, optimizer_step)
        total = state + transient * (1 + FRAGMENTATION) + CUDA_OVERHEAD_GIB * GIB * t.use_gpu
        return {
            "sharded_state": state / GIB, "all_gathered_params": gathered / GIB, "unsharded_grads": grads / GIB,
            "activations": activations / GIB, "activations_per_sample": per_sample / GIB,
            "overhead": (CUDA_OVERHEAD_GIB * t.use_gpu) + transient * FRAGMENTATION / GIB, "total": total / GIB,
        }

    layouts = {}
    for kind in LAYOUTS:
        if kind == "hsdp" and (W % per_node or W // per_node < 2):
            continue  # one node: hsdp would be fsdp
        mesh = mesh_for(kind, W, per_node)
        layouts[kind] = {"mesh": list(mesh), "memory_gib": memory_of(kind, mesh[1])}
    device_gib = device_memory_gib or (gpu_memory_gib if t.use_gpu else host_memory_gib() / per_node)
    layout = choose_layout(cfg, W, per_node, layouts["ddp"]["memory_gib"]["total"] * GIB, device_gib * GIB)
    memory = memory_of(layout.kind, layout.mesh[1])

    # ---- checks ---------------------------------------------------------------------------------------
    total_gib = memory["total"]
    if t.mesh and cfg.train.parallelism == "hsdp" and tuple(t.mesh) != mesh_for("hsdp", W, per_node):
        check("warning", "train.mesh", f"{list(t.mesh)} is not [nodes, workers per node] = {list(mesh_for('hsdp', W, per_node))}: "
              "shards would span nodes")
    if t.use_gpu:
        if total_gib > gpu_memory_gib:
            check("error", "train.batch_size", f"estimated {total_gib:.1f} GiB per GPU exceeds {gpu_memory_gib:.1f} GiB: "
                  "lower train.batch_size (raise train.grad_accum), model.max_pixels, or turn on "
                  "train.activation_checkpointing / add workers")
        elif total_gib > 0.9 * gpu_memory_gib:
            check("warning", "train.batch_size", f"estimated {total_gib:.1f} GiB per GPU is over 90% of {gpu_memory_gib:.1f} GiB")
        if W > GPUS_PER_NODE and W % GPUS_PER_NODE:
            check("warning", "train.num_workers", f"{W} workers do not fill nodes of {GPUS_PER_NODE} GPUs")
        if t.lr > 1e-4 and params["total"] > 1e9:
            check("warning", "train.lr", f"train.lr={t.lr:g} is far above the 1e-5..2e-5 used to fine-tune a "
                  f"{params['total'] / 1e9:.1f}B-parameter VLM")
        if c == 4:
            check("warning", "train.mixed_precision", "fp32 compute on GPU: twice the memory and far below bf16 speed")
    elif params["total"] > 1e9:
        check("warning", "train.use_gpu", f"{params['total'] / 1e9:.1f}B parameters on CPU workers: only a dry run is practical")
    if not ckpt and params["total"] > 1e9:
        check("warning", "train.activation_checkpointing", "off for a multi-billion-parameter model")
    if seq > text.max_position_embeddings:
        check("error", "model.max_pixels", f"sequence of {seq} tokens exceeds max_position_embeddings={text.max_position_embeddings}")
    multi_node = t.use_gpu and W > GPUS_PER_NODE
    if multi_node and "://" not in t.storage_path:
        check("warning", "train.storage_path", f"{t.storage_path!r} is a local path: a multi-node run needs s3:// "
              "(or a filesystem mounted on every node) for checkpoints")
    if multi_node and cfg.tracking.uri.startswith("sqlite"):
        check("warning", "tracking.uri", "a SQLite file is not shared between nodes: use an MLflow server")
    for uri in list(cfg.data.mixture) + [cfg.data.traces_dir]:
        if "://" not in uri and multi_node:
            check("warning", "data.mixture", f"{uri!r} is a local path: every node must have it")

    report = {
        "backbone": cfg.model.backbone, "architecture": source, "model_type": vlm.config.model_type,
        "params": params,
        "fsdp_units": {"decoder_layers": len(layers), "largest_layer": layer_params, "vision_blocks": len(blocks),
                       "largest_block": block_params, "root": root_params, "sharded": layout.sharded},
        "layout": {"kind": layout.kind, "mesh": list(layout.mesh), "why": layout.why}, "layouts": layouts,
        "world_size": W, "nodes": math.ceil(W / per_node), "workers_per_node": per_node, "use_gpu": t.use_gpu,
        "compute_dtype": "bf16" if c == 2 else "fp32",
        "batch": {"per_worker": t.batch_size, "grad_accum": t.grad_accum, "micro_batch": micro, "global": t.batch_size * W},
        "sequence": {"visual_tokens": visual_tokens, "crop_tokens": crop_tokens, "text_tokens": text_tokens,
                     "latent_positions": latent, "total": seq, "vision_patches": patches},
        "activation_checkpointing": ckpt,
        "memory_gib": memory, "gpu_memory_gib": gpu_memory_gib if t.use_gpu else None,
        "assumptions": list(ASSUMPTIONS), "checks": checks,
        "ok": not any(ch["level"] == "error" for ch in checks),
    }
    if strict and not report["ok"]:
        raise ConfigError("; ".join(f"{ch['key']}: {ch['message']}" for ch in checks if ch["level"] == "error"))
    return report


def _b(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def _memory_line(d: dict) -> str:
    mem = d["memory_gib"]
    unit, k = ("GiB", 1.0) if mem["total"] >= 1 else ("MiB", 1024.0)
    v = {key: f"{val * k:.1f}" for key, val in mem.items()}
    where = f"per GPU, of {d['gpu_memory_gib']:.1f} GiB" if d["gpu_memory_gib"] else "host RAM per worker"
    return (f"memory        {v['total']} {unit} ({where}) = state {v['sharded_state']} + params {v['all_gathered_params']}"
            f" + grads {v['unsharded_grads']} + activations {v['activations']} ({v['activations_per_sample']}/sample, "
            f"checkpointing {'on' if d['activation_checkpointing'] else 'off'}) + overhead {v['overhead']}")


def format_report(d: dict) -> str:
    p, s, b = d["params"], d["sequence"], d["batch"]
    lines = [
        f"backbone      {d['backbone']}  [{d['model_type']}; {d['architecture']}]",
        f"parameters    total {_b(p['total'])} = backbone {_b(p['backbone'])} (vision {_b(p['vision'])}, "
        f"language model {_b(p['language_model'])}) + LaRe heads {_b(p['lare_heads'])}",
        f"world         {d['world_size']} worker(s)" + (f", {d['nodes']} node(s) of {d['workers_per_node']} GPUs" if d["use_gpu"] else " on CPU")
        + f", compute {d['compute_dtype']}",
        f"layout        {d['layout']['kind']} mesh {d['layout']['mesh']} [replicate, shard]: {d['layout']['why']}",
        f"batch         {b['per_worker']} per worker = {b['grad_accum']} x micro-batch {b['micro_batch']}; global {b['global']}",
        f"sequence      {s['total']} tokens = {s['visual_tokens']} visual + {s['crop_tokens']} crop + {s['text_tokens']} text "
        f"+ {s['latent_positions']} latent; {s['vision_patches']} vision patches",
        _memory_line(d),
    ]
    for kind, lay in d["layouts"].items():
        m = lay["memory_gib"]
        unit, k = ("GiB", 1.0) if m["total"] >= 1 else ("MiB", 1024.0)
        lines.append(f"  {kind:<5} mesh {str(lay['mesh']):<8} {m['total'] * k:7.1f} {unit} per device (state "
                     f"{m['sharded_state'] * k:.1f}, params {m['all_gathered_params'] * k:.1f}, grads {m['unsharded_grads'] * k:.1f}, "
                     f"activations {m['activations'] * k:.1f})" + ("   <- chosen" if kind == d["layout"]["kind"] else ""))
    for ch in d["checks"]:
        lines.append(f"{ch['level'].upper():<13} {ch['key']}: {ch['message']}")
    lines.append("result        " + ("OK" if d["ok"] else "CONFIG ERRORS (see above)"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Dry run: parameter count, per-GPU memory estimate, config checks.")
    ap.add_argument("--config", help="YAML config file")
    ap.add_argument("overrides", nargs="*", help="section.key=value overrides")
    ap.add_argument("--gpu-memory-gib", type=float, default=H100_GIB, help="usable memory of one GPU (default: H100 80GB)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        report = dry_run(cfg, gpu_memory_gib=args.gpu_memory_gib)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
