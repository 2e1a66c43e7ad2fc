"""How the model is laid out on the workers: one DeviceMesh [replicate, shard] for every layout, mixed precision,
activation checkpointing.

- ddp  [W, 1]: every worker holds the whole model; the gradients are all-reduced in buckets once per step
  (DistributedDataParallel through the composable `replicate`, so the model keeps its own class and methods).
- fsdp [1, W]: FSDP2 `fully_shard` of every decoder layer and every vision block, then the root (LaReModel, whose
  forward runs the whole latent loop), sharded over all workers.
- hsdp [nodes, per node]: the same FSDP2 units on the 2-D mesh: sharded within a node, replicated across nodes.

The layout is chosen once per run (`choose`) and is the same on every rank. Sharded layouts never hold a full copy
off rank 0: rank 0 builds or loads the weights on CPU, every rank builds the architecture on the meta device, shards
it, allocates its shard and receives the weights by broadcast.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from lare.config import Config
from lare.model import LaReModel
from lare.sizing import GIB, Layout, dry_run

log = logging.getLogger("lare.train")


def device_memory_bytes(device: torch.device, local_world: int) -> float:
    """What one worker may use: its GPU, or on CPU this host's RAM shared by the workers on it."""
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    import psutil

    return psutil.virtual_memory().total / max(1, local_world)


def choose(cfg: Config, world: int, local_world: int, device: torch.device) -> Layout:
    """train.parallelism for this run, the same on every rank: the smallest device and the node sizes are agreed by
    an all-reduce first (a node with fewer workers than another makes hsdp's mesh impossible: fsdp then)."""
    memory = device_memory_bytes(device, local_world)
    per_node = local_world
    if world > 1 and dist.is_initialized():
        t = torch.tensor([memory, local_world, -local_world], dtype=torch.float64,
                         device=device if device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        memory, per_node = t[0].item(), int(t[1].item()) if int(t[1].item()) == -int(t[2].item()) else world
    sized = replace(cfg, train=replace(cfg.train, num_workers=world))
    chosen = dry_run(sized, workers_per_node=per_node, device_memory_gib=memory / GIB)["layout"]  # sizing.choose_layout
    return Layout(chosen["kind"], tuple(chosen["mesh"]), chosen["why"])


def compute_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """The forward/backward dtype under mixed precision; None keeps the stored dtype."""
    mp = cfg.train.mixed_precision
    if mp == "bf16" or (mp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(cfg: Config, layout: Layout, device: torch.device):
    """The context of every forward: ddp computes in bf16 by autocast over fp32 weights; FSDP2 casts its gathered
    parameters itself (MixedPrecisionPolicy), so sharded layouts and fp32 need nothing."""
    dtype = compute_dtype(cfg, device)
    if dtype is None or layout.sharded:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_mesh(layout: Layout, device: torch.device) -> DeviceMesh:
    return init_device_mesh(device.type, layout.mesh, mesh_dim_names=("replicate", "shard"))


def apply_activation_checkpointing(model: LaReModel) -> None:
    """Recompute in backward what the latent loop allows: each decoder layer's MLP (the layer's attention
    writes the KV cache, which a replay would write twice) and every vision block (no cache there)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    for layer in model.vlm.model.language_model.layers:
        layer.mlp = checkpoint_wrapper(layer.mlp, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    model.vlm.model.visual.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def build_model(cfg: Config, rank: int, world: int, device: torch.device, layout: Layout | None = None) -> LaReModel:
    """The training model on this worker, laid out as `layout` (default: ddp over `world` workers)."""
    layout = layout or Layout("ddp", (world, 1), "default")
    if not layout.sharded:
        return _replicated(cfg, world, device, layout)
    return _sharded(cfg, rank, device, layout)


def _replicated(cfg: Config, world: int, device: torch.device, layout: Layout) -> LaReModel:
    model = LaReModel.build(cfg)  # the same seed on every rank; DDP also broadcasts rank 0's weights at wrap time
    if cfg.train.activation_checkpointing:
        apply_activation_checkpointing(model)
    freeze(model, cfg)
    model = model.to(device)
    if world > 1:
        from torch.distributed._composable import replicate

        # find_unused_parameters: a paradigm leaves some heads out of its graph (direct has no refocus), and a
        # frozen tower has no gradients to wait for. The tiny and real models fit one bucket of 25 MB ... 100s of.
        replicate(model, device_mesh=make_mesh(layout, device)["replicate"], find_unused_parameters=True)
    return model


def _sharded(cfg: Config, rank: int, device: torch.device, layout: Layout) -> LaReModel:
    reference = LaReModel.build(cfg) if rank == 0 else None  # model.dtype: how the weights are read
    dtype = compute_dtype(cfg, device)
    # Sharded master weights in fp32 whenever compute is lower precision (bf16 weights are copied up).
    master = replace(cfg, model=replace(cfg.model, dtype="float32")) if dtype else cfg
    model = LaReModel.build(master, device="meta")
    if cfg.train.activation_checkpointing:
        apply_activation_checkpointing(model)
    mesh = make_mesh(layout, device)
    mesh = mesh if layout.kind == "hsdp" else mesh["shard"]  # a 2-D mesh is FSDP2's HSDP; 1-D shards over all
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    # Decoder layers run once per latent step: keeping them gathered until backward (reshard_after_forward
    # off) trades one unsharded copy of the language model for K+1 fewer all-gathers per step.
    for layer in model.vlm.model.language_model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=cfg.train.reshard_after_forward)
    for block in model.vlm.model.visual.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    model.to_empty(device=device)

    # Broadcast in the master dtype: every rank's receiving shard has it.
    master_dtype = next(model.parameters()).dtype
    full = {k: (v.to(master_dtype) if v.is_floating_point() else v) for k, v in reference.state_dict().items()} \
        if rank == 0 else {}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    # Buffers outside the state dict (rotary frequencies) were left uninitialised by to_empty: rank 0 has them.
    ref_buffers = dict(reference.named_buffers()) if rank == 0 else {}
    for name, buf in model.named_buffers():
        if rank == 0:
            buf.copy_(ref_buffers[name].to(buf.device, buf.dtype))
        dist.broadcast(buf, src=0)
    del reference, full
    freeze(model, cfg)
    return model


def freeze(model: LaReModel, cfg: Config) -> None:
    """Parameters the config keeps fixed get no gradient (and so no optimizer state)."""
    if cfg.train.freeze_vision:
        model.vlm.model.visual.requires_grad_(False)


def reshard(model) -> None:
    """FSDP2 reshards in backward; a forward without one (generation) leaves the root and the decoder layers
    gathered, their plain tensors registered in place of the sharded parameters. An optimizer built then
    would hold the gathered copies (which never get gradients) and checkpoints could not map it back."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
