"""FSDP2 bf16 training throughput of a real-size backbone on GPUs, with synthetic batches.

A Qwen2.5-VL-3B-size model (random weights: `random-qwen2.5-vl-3b`) with the LaRe heads, sharded exactly as
the training job shards it (lare/train/parallel.py), trained on synthetic refocus-like batches. Prints
tokens/s, peak GPU memory and MFU (model FLOPs utilisation: 6 x parameters x tokens/s over the GPUs' peak
dense bf16 FLOP/s; attention FLOPs are left out, so MFU is a lower bound), and writes bench/results/gpu_train.json.

    python bench/gpu_train.py                                  # one GPU
    torchrun --nproc_per_node=8 bench/gpu_train.py             # one node
    python bench/gpu_train.py --device cpu --preset tiny-qwen2.5-vl --steps 3 --warmup 1   # smoke test on CPU
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from lare.batch import build_batch, example_from_record
from lare.config import load_config
from lare.train.parallel import autocast, build_model, choose

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}  # dense, per GPU
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "gpu_train.json"


def synthetic_records(n: int, size: int, steps: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
        boxes = [sorted(rng.uniform(0, 1, 2)) for _ in range(2 * steps)]
        records.append(dict(
            id=f"s{i}", image=buf.getvalue(), question="What colour is the shape directly right of the red circle?",
            answer="blue", choices=[],
            steps=[{"text": f"Look at region {j}: there is a small shape next to it.",
                    "bbox": [boxes[2 * j][0], boxes[2 * j + 1][0], boxes[2 * j][1] + 1e-3, boxes[2 * j + 1][1] + 1e-3]}
                   for j in range(steps)]))
    return records


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="random-qwen2.5-vl-3b", help="model.backbone preset (or checkpoint path)")
    ap.add_argument("--paradigm", default="lare")
    ap.add_argument("--batch", type=int, default=8, help="samples per GPU per step")
    ap.add_argument("--image-size", type=int, default=448, help="square image side (448 = 256 visual tokens)")
    ap.add_argument("--latent-steps", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--parallelism", default="fsdp", choices=["auto", "ddp", "fsdp", "hsdp"],
                    help="train.parallelism (fsdp: FSDP2 even on one GPU, its bf16 param casting as on a cluster)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    if "RANK" not in os.environ:  # plain `python`: a one-process group, so FSDP2 runs as under torchrun
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if args.device == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    side = args.image_size
    cfg = load_config(None, [
        f"model.backbone={args.preset}", f"method.paradigm={args.paradigm}", f"method.latent_steps={args.latent_steps}",
        f"model.max_pixels={side * side}", f"train.batch_size={args.batch}", "train.mixed_precision=auto",
        f"train.parallelism={args.parallelism}", f"train.num_workers={world}",
        f"train.activation_checkpointing={'true' if args.activation_checkpointing else 'false'}", "data.max_steps=3"])
    t0 = time.time()
    layout = choose(cfg, world, int(os.environ.get("LOCAL_WORLD_SIZE", world)), device)
    model = build_model(cfg, rank, world, device, layout)
    compute = autocast(cfg, layout, device)
    build_s = time.time() - t0
    n_params = sum(p.numel() for p in model.parameters())  # DTensor.numel() is the global size
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), foreach=True)
    records = synthetic_records(args.batch * 4, side, steps=3, seed=rank)
    batches = [build_batch([example_from_record(r, 3) for r in records[i * args.batch:(i + 1) * args.batch]],
                           model.processor, cfg, stage=None, fixed_slots=True).to(device) for i in range(4)]
    tokens_per_batch = [int(b.attention_mask.sum()) for b in batches]

    def step(i: int) -> float:
        with compute:
            out = model(batches[i % len(batches)])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out.loss.item()

    for i in range(args.warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    dist.barrier()
    t0 = time.perf_counter()
    tokens = 0
    for i in range(args.steps):
        step(i)
        tokens += tokens_per_batch[i % len(batches)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    total = torch.tensor([tokens], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    tokens_per_s = total.item() / elapsed
    peak = peak_tflops(device)
    result = {
        "preset": args.preset, "paradigm": args.paradigm, "world_size": world, "batch_per_gpu": args.batch,
        "image_size": side, "latent_steps": args.latent_steps, "activation_checkpointing": args.activation_checkpointing,
        "layout": layout.kind, "mesh": list(layout.mesh),
        "parameters": n_params, "build_s": round(build_s, 1), "step_s": elapsed / args.steps,
        "tokens_per_s": tokens_per_s, "tokens_per_s_per_gpu": tokens_per_s / world,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "mfu": 6 * n_params * tokens_per_s / (peak * 1e12 * world) if peak else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
    }
    if rank == 0:
        print(f"{'preset':<22} {'gpus':>4} {'params':>8} {'step s':>7} {'tok/s':>10} {'tok/s/gpu':>10} {'peak GiB':>9} {'MFU':>6}")
        mem = f"{result['peak_memory_gib']:.1f}" if result["peak_memory_gib"] is not None else "-"
        mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "-"
        print(f"{args.preset:<22} {world:>4} {n_params / 1e9:>7.2f}B {result['step_s']:>7.3f} {tokens_per_s:>10.0f} "
              f"{tokens_per_s / world:>10.0f} {mem:>9} {mfu:>6}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
