"""How the model is laid out on the workers: FSDP2 sharding, mixed precision, activation checkpointing.

FSDP2 (`fully_shard`) wraps every decoder layer and every vision block, then the root (LaReModel, whose
forward runs the whole latent loop). Rank 0 builds or loads the weights on CPU; every rank builds the same
architecture on the meta device, shards it, allocates its shard and receives the weights by broadcast, so
no rank but the first ever holds a full copy.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from lare.config import Config
from lare.model import LaReModel


def uses_fsdp(cfg: Config, world: int, device: torch.device) -> bool:
    return cfg.train.fsdp and (world > 1 or device.type == "cuda")


def compute_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """The FSDP2 param dtype for forward/backward; None keeps the stored dtype."""
    mp = cfg.train.mixed_precision
    if mp == "bf16" or (mp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def apply_activation_checkpointing(model: LaReModel) -> None:
    """Recompute in backward what the latent loop allows: each decoder layer's MLP (the layer's attention
    writes the KV cache, which a replay would write twice) and every vision block (no cache there)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    for layer in model.vlm.model.language_model.layers:
        layer.mlp = checkpoint_wrapper(layer.mlp, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    model.vlm.model.visual.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def build_model(cfg: Config, rank: int, world: int, device: torch.device) -> LaReModel:
    """The training model on this worker: sharded with FSDP2 when several workers or a GPU."""
    if not uses_fsdp(cfg, world, device):
        model = LaReModel.build(cfg)
        if cfg.train.activation_checkpointing:
            apply_activation_checkpointing(model)
        freeze(model, cfg)
        return model.to(device)

    reference = LaReModel.build(cfg) if rank == 0 else None  # model.dtype: how the weights are read
    dtype = compute_dtype(cfg, device)
    # Sharded master weights in fp32 whenever compute is lower precision (bf16 weights are copied up).
    master = replace(cfg, model=replace(cfg.model, dtype="float32")) if dtype else cfg
    model = LaReModel.build(master, device="meta")
    if cfg.train.activation_checkpointing:
        apply_activation_checkpointing(model)
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    # Decoder layers run once per latent step: keeping them gathered until backward (reshard_after_forward
    # off) trades one unsharded copy of the language model for K+1 fewer all-gathers per step.
    for layer in model.vlm.model.language_model.layers:
        fully_shard(layer, mp_policy=mp, reshard_after_forward=cfg.train.reshard_after_forward)
    for block in model.vlm.model.visual.blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
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
