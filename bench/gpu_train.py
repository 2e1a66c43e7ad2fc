"""bf16 training throughput of a real-size backbone on GPUs, with synthetic batches: lare against text_cot.

A Qwen2.5-VL-3B-size model (random weights: `random-qwen2.5-vl-3b`) with the LaRe heads, laid out exactly as the
training job lays it out (lare/train/parallel.py; FSDP2 by default, also on one GPU), trained on synthetic
refocus-like batches: `lare` with K latent slots and `text_cot` whose reasoning is the same number of text tokens.
Prints and writes (bench/results/gpu.json) per paradigm: step time, tokens/s, peak GPU memory and MFU, and the
lare/text_cot step-time ratio; with --tests-junit, the summary of the `gpu` tests run before it (bench/gpu_check.sh).

MFU = model FLOPs per step / step time / (GPUs x peak dense bf16 FLOP/s). Model FLOPs per sample (PaLM, appendix B;
recomputation by activation checkpointing not counted, as MFU defines it):
    6 * N_lm * S  +  12 * L * H * Q * S^2 / 2          (language model: matmuls, causal attention scores and values)
  + 6 * N_vis * P +  12 * L_v * H_v * Q_v * P * W      (vision tower: matmuls, windowed attention of W patches)
with S the sequence length (visual + text + latent tokens), P the vision patches, N_* the parameters outside the
embeddings, L layers, H heads, Q head dim, W the attention span of a patch (the window, or P in full-attention
blocks, averaged over blocks).

    python bench/gpu_train.py                                  # one GPU
    torchrun --nproc_per_node=8 bench/gpu_train.py             # one node
    python bench/gpu_train.py --device cpu --preset tiny-qwen2.5-vl --steps 2 --warmup 1 --image-size 112   # smoke test
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
import xml.etree.ElementTree as ET
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
RESULTS = ROOT / "bench" / "results" / "gpu.json"
STEPS = 3  # reasoning steps per trace


def synthetic_records(n: int, size: int, step_text: str, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
        boxes = [sorted(rng.uniform(0, 1, 2)) for _ in range(2 * STEPS)]
        records.append(dict(
            id=f"s{i}", image=buf.getvalue(), question="What colour is the shape directly right of the red circle?",
            answer="blue", choices=[],
            steps=[{"text": step_text, "bbox": [boxes[2 * j][0], boxes[2 * j + 1][0], boxes[2 * j][1] + 1e-3,
                                                 boxes[2 * j + 1][1] + 1e-3]} for j in range(STEPS)]))
    return records


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def model_flops_per_sample(model, seq: int, patches: int) -> float:
    """The formula in the module docstring."""
    vlm = model.vlm
    text, vision = vlm.config.text_config, vlm.config.vision_config
    lm = vlm.model.language_model
    n_lm = sum(p.numel() for p in lm.layers.parameters())
    n_vis = sum(p.numel() for p in vlm.model.visual.blocks.parameters())
    q = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    lm_flops = 6 * n_lm * seq + 12 * text.num_hidden_layers * text.num_attention_heads * q * seq * seq / 2
    heads_v = getattr(vision, "num_heads", None) or vision.num_attention_heads
    qv = vision.hidden_size // heads_v
    depth = getattr(vision, "depth", None) or vision.num_hidden_layers
    full = set(getattr(vision, "fullatt_block_indexes", None) or range(depth))  # no windows: every block is full
    window = min(patches, (getattr(vision, "window_size", 0) // vision.patch_size) ** 2 or patches)
    span = (len(full) * patches + (depth - len(full)) * window) / depth
    vis_flops = 6 * n_vis * patches + 12 * depth * heads_v * qv * patches * span
    return lm_flops + vis_flops


def tests_summary(path: Path | None) -> dict | None:
    if not path or not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    cases = [{"name": c.get("name"), "ok": not any(ch.tag in ("failure", "error") for ch in c),
              "skipped": any(ch.tag == "skipped" for ch in c)} for c in suite.iter("testcase")]
    return {"passed": sum(c["ok"] and not c["skipped"] for c in cases), "failed": sum(not c["ok"] for c in cases),
            "skipped": sum(c["skipped"] for c in cases), "cases": cases}


def measure(paradigm: str, args, rank: int, world: int, device: torch.device) -> dict:
    side = args.image_size
    cfg = load_config(None, [
        f"model.backbone={args.preset}", f"method.paradigm={paradigm}", f"method.latent_steps={args.latent_steps}",
        f"model.max_pixels={side * side}", f"train.batch_size={args.batch}", "train.mixed_precision=auto",
        f"train.parallelism={args.parallelism}", f"train.num_workers={world}",
        f"train.activation_checkpointing={'true' if args.activation_checkpointing else 'false'}", f"data.max_steps={STEPS}"])
    torch.manual_seed(0)
    t0 = time.time()
    layout = choose(cfg, world, int(os.environ.get("LOCAL_WORLD_SIZE", world)), device)
    model = build_model(cfg, rank, world, device, layout)
    compute = autocast(cfg, layout, device)
    build_s = time.time() - t0
    n_params = sum(p.numel() for p in model.parameters())  # DTensor.numel() is the global size
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), foreach=True)

    # text_cot reasons in as many text tokens as lare has latent slots: the same sequence, run in parallel
    tok = model.processor.tokenizer
    per_step = max(1, args.latent_steps // STEPS)
    words = tok.decode(tok("Look at the small shape next to the marked region and compare colours.")["input_ids"][:per_step])
    records = synthetic_records(args.batch * 4, side, words, seed=rank)
    batches = [build_batch([example_from_record(r, STEPS) for r in records[i * args.batch:(i + 1) * args.batch]],
                           model.processor, cfg, stage=None, fixed_slots=True).to(device) for i in range(4)]
    tokens_per_batch = [int(b.attention_mask.sum()) for b in batches]
    merge = model.vlm.config.vision_config.spatial_merge_size
    patches = int(batches[0].image_grid_thw.prod(-1).sum()) // args.batch
    seq = batches[0].input_ids.shape[1]
    flops_per_step = args.batch * model_flops_per_sample(model, seq, patches)

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
    peak = peak_tflops(device)
    step_s = elapsed / args.steps
    result = {
        "paradigm": paradigm, "layout": layout.kind, "mesh": list(layout.mesh), "parameters": n_params,
        "build_s": round(build_s, 1), "step_s": step_s, "sequence_tokens": seq, "vision_patches_per_sample": patches,
        "merge": merge, "tokens_per_s": total.item() / elapsed, "tokens_per_s_per_gpu": total.item() / elapsed / world,
        "model_tflops_per_step_per_gpu": flops_per_step / 1e12,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "mfu": flops_per_step / step_s / (peak * 1e12) if peak else None,
    }
    del model, optimizer, batches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="random-qwen2.5-vl-3b", help="model.backbone preset (or checkpoint path)")
    ap.add_argument("--paradigms", nargs="+", default=["lare", "text_cot"])
    ap.add_argument("--batch", type=int, default=8, help="samples per GPU per step")
    ap.add_argument("--image-size", type=int, default=448, help="square image side (448 = 256 visual tokens)")
    ap.add_argument("--latent-steps", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--parallelism", default="fsdp", choices=["auto", "ddp", "fsdp", "hsdp"],
                    help="train.parallelism (fsdp: FSDP2 even on one GPU, its bf16 param casting as on a cluster)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tests-junit", type=Path, help="JUnit XML of the gpu tests, summarised into the JSON")
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
    runs = {p: measure(p, args, rank, world, device) for p in args.paradigms}
    result = {
        "preset": args.preset, "world_size": world, "batch_per_gpu": args.batch, "image_size": args.image_size,
        "latent_steps": args.latent_steps, "activation_checkpointing": args.activation_checkpointing,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "runs": runs,
        "lare_over_textcot_step_time": runs["lare"]["step_s"] / runs["text_cot"]["step_s"]
        if {"lare", "text_cot"} <= set(runs) else None,
        "tests": tests_summary(args.tests_junit),
    }
    if rank == 0:
        print(f"{'paradigm':<10} {'layout':<6} {'gpus':>4} {'params':>8} {'seq':>5} {'step s':>7} {'tok/s/gpu':>10} "
              f"{'peak GiB':>9} {'MFU':>6}")
        for p, r in runs.items():
            mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
            print(f"{p:<10} {r['layout']:<6} {world:>4} {r['parameters'] / 1e9:>7.2f}B {r['sequence_tokens']:>5} "
                  f"{r['step_s']:>7.3f} {r['tokens_per_s_per_gpu']:>10.0f} {mem:>9} {mfu:>6}")
        if result["lare_over_textcot_step_time"]:
            print(f"lare/text_cot step time: {result['lare_over_textcot_step_time']:.2f}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
