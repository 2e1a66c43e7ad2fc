"""What latent refocusing costs on the tiny preset (CPU).

(a) one training step (forward, backward, AdamW) of `lare` with K latent slots against `text_cot` whose
    reasoning is K text tokens: the same sequence length, but LaRe's latents run one position at a time.
(b) generation with K latent steps: the KV-cached loop against the naive loop that re-runs the whole
    sequence for every latent step and every answer token.
(c) where one latent step's time goes (batch `--batch`, `--threads` threads), in generation and in the training
    forward: the decoder's layers, the refocus and fusion, the cache and mask bookkeeping, and the rest (Python,
    the loop's own tensor work). The step's wall time comes from a plain timer; its split from the
    record_function ranges of lare/model (torch.profiler, run separately so its overhead stays out of the wall
    time). The training step is also split into forward, backward and optimizer for both paradigms.

Prints a table and writes bench/results/latent_cost.json. Timings are medians over repeats, the four variants timed
in turn within each repeat, so load on a shared machine hits them alike and the ratios compare like with like; the
targets are judged on them. The same ratios from the thread's CPU time and from each variant's fastest call are
written too, with the machine's load average at start and end: on a loaded machine they show what the code costs
when it gets a core.

    python bench/latent_cost.py [--ks 4 8] [--batch 8] [--repeats 15] [--backbone tiny-qwen2.5-vl]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.autograd.profiler import record_function  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from lare.batch import build_batch, example_from_record  # noqa: E402
from lare.config import load_config  # noqa: E402
from lare.model import LaReModel  # noqa: E402
from lare.model.sequence import Prompt  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "latent_cost.json"
TARGETS = {"train_step_ratio_lare_over_textcot": ("<=", 1.4), "infer_speedup_kv_over_naive": (">=", 2.2)}  # at K=8
TARGET_K = "8"


def make_records(n: int, image_size: int, seed: int = 0) -> list[dict]:
    """n traces with a square image and one step (its text is sized per paradigm below)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)).save(buf, "PNG")
        records.append(dict(id=f"b{i}", image=buf.getvalue(), question="What colour is the star?", answer="red",
                            steps=[{"text": "a", "bbox": None}]))
    return records


def interleaved_times(fns: dict, repeats: int, warmup: int = 2) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds of each call of each function, timed alternately so load on a shared machine hits
    all alike. CPU time is this thread's (torch runs on it with one thread): it leaves out the time the thread
    waited for a core, which wall time on a loaded machine is mostly made of."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            fn()
            cpu[name].append(time.thread_time() - c0)
            times[name].append(time.perf_counter() - t0)
    return times, cpu


def config(args, *overrides):
    side = args.image_size
    return load_config(None, [f"model.backbone={args.backbone}", f"model.max_pixels={side * side}", *overrides])


def train_step(paradigm: str, K: int, records, args):
    """(a closure doing one optimizer step, the reasoning length in positions, its list of (forward, backward,
    optimizer) seconds, one entry per call)."""
    cfg = config(args, f"method.paradigm={paradigm}", f"method.latent_steps={K}", "method.latents_per_step=1",
                 "data.max_steps=1")
    model = LaReModel.build(cfg).train()
    # The optimizer training builds (lare/train/loop.py make_optimizer, not imported: it pulls in Ray): the
    # per-parameter loop of the default CPU AdamW would weigh the heads' parameters, not the latent loop.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                  weight_decay=cfg.train.weight_decay, betas=(0.9, 0.95), foreach=True)
    batch = build_batch([example_from_record(r, 1) for r in records], model.processor, cfg, stage=None)
    phases = []

    def step():
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model(batch).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        phases.append((t1 - t0, t2 - t1, time.perf_counter() - t2))

    reasoning = int(batch.num_slots) if paradigm == "lare" else _reasoning_tokens(batch, model)
    return step, reasoning, phases


def _phase_medians(phases: list[tuple[float, float, float]]) -> dict[str, float]:
    return {name: statistics.median(p[i] for p in phases) for i, name in enumerate(("forward_s", "backward_s", "optimizer_s"))}


def _reasoning_tokens(batch, model) -> int:
    """Supervised text tokens before 'Answer:' in the first sample (the text CoT's reasoning length)."""
    labels = batch.labels[0][batch.labels[0] != -100].tolist()
    lead = model.processor.encode("Answer: ")
    for i in range(len(labels) - len(lead) + 1):
        if labels[i:i + len(lead)] == lead:
            return i
    return len(labels)


def inference(K: int, records, args, kv_cache: bool):
    cfg = config(args, "method.paradigm=lare", f"method.latent_steps={K}")
    model = LaReModel.build(cfg).eval()
    prompts = build_batch([example_from_record(r, 3) for r in records], model.processor, cfg, prompt_only=True)
    return lambda: model(prompts, mode="generate", max_new_tokens=args.answer_tokens, kv_cache=kv_cache)


# The record_function ranges of lare/model, and what each counts in the breakdown (a range nested in another
# is taken out of the outer one).
RANGES = {"decoder": "lare.decoder", "refocus": "lare.refocus", "cache": "lare.cache", "mask": "lare.mask",
          "fuse": "lare.fuse_weights", "loop": "bench.latent_loop"}


def latent_breakdown(K: int, records, args, training: bool) -> dict:
    """Per latent step of `lare` at batch args.batch: wall ms and its split. `training`: the training batch's
    slots with autograd recording (the forward of a training step); else generation's slots, without."""
    cfg = config(args, "method.paradigm=lare", f"method.latent_steps={K}", "method.latents_per_step=1",
                 "data.max_steps=1")
    model = LaReModel.build(cfg).train(training)
    image_token_id = model.processor.image_token_id
    if training:
        batch = build_batch([example_from_record(r, 1) for r in records], model.processor, cfg, stage=None)
        end, slot_mask = batch.prefix_len, batch.slot_mask
    else:
        batch = build_batch([example_from_record(r, 3) for r in records], model.processor, cfg, prompt_only=True)
        end, slot_mask = batch.input_ids.shape[1], torch.ones(batch.size, K, dtype=torch.bool)

    def prompt():  # a fresh decode state for each run (the loop appends to it); not timed
        p = Prompt(model.vlm, image_token_id, batch, end, kv_cache=True)
        if training:
            positions = p.positions[:, :, end:end + K]
        else:  # as generate places the slots: after each sample's last prompt position
            next_pos = p.positions.masked_fill(batch.attention_mask[None] == 0, -1).amax(dim=(0, 2)) + 1
            positions = (next_pos[:, None] + torch.arange(K))[None].expand(3, -1, -1)
        return p, positions

    def loop(p, positions):
        with record_function(RANGES["loop"]):
            model.run_latents(p, positions, slot_mask)

    with torch.set_grad_enabled(training):
        for _ in range(2):
            loop(*prompt())
        walls = []
        for _ in range(args.repeats):
            p, positions = prompt()
            t0 = time.perf_counter()
            loop(p, positions)
            walls.append(time.perf_counter() - t0)
        runs = []
        for _ in range(args.repeats):
            runs.append(prompt())
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for p, positions in runs:
                loop(p, positions)
    total = {e.key: e.cpu_time_total for e in prof.key_averages() if e.key in RANGES.values()}
    t = {name: total.get(key, 0.0) for name, key in RANGES.items()}
    parts = {"decoder_forward": t["decoder"] - t["cache"] - t["mask"] - t["fuse"],
             "refocus": t["refocus"],
             "cache_bookkeeping": t["cache"] + t["mask"]}
    parts["python_other"] = max(0.0, t["loop"] - sum(parts.values()))
    wall_ms = statistics.median(walls) / K * 1e3
    share = {k: v / max(sum(parts.values()), 1e-9) for k, v in parts.items()}
    return {"step_ms": wall_ms, **{f"{k}_ms": wall_ms * v for k, v in share.items()},
            "share": share, "note": "ms = the step's wall time split by the profiler's shares of its ranges"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", type=int, nargs="+", default=[4, 8], help="latent step counts K")
    ap.add_argument("--image-sizes", type=int, nargs="+", default=[224, 448],
                    help="square image sides; 224 (the refocus benchmark) = 64 visual tokens, 448 = 256")
    ap.add_argument("--batch", type=int, default=8, help="samples per batch")
    ap.add_argument("--repeats", type=int, default=15, help="timed repeats (median reported)")
    ap.add_argument("--answer-tokens", type=int, default=4, help="answer tokens decoded after the latents")
    ap.add_argument("--backbone", default="tiny-qwen2.5-vl")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    result = {"backbone": args.backbone, "batch": args.batch, "threads": args.threads, "answer_tokens": args.answer_tokens,
              "repeats": args.repeats, "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "load_average_at_start": os.getloadavg(), "by_image_size": {}}
    print(f"latent cost, {args.backbone}, batch {args.batch}, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'px':>4} {'K':>3} {'lare pos':>8} {'cot tok':>7} {'lare ms':>8} {'cot ms':>8} {'ratio':>6} "
          f"{'kv ms':>8} {'naive ms':>9} {'speedup':>7}")
    for size in args.image_sizes:
        args.image_size = size
        per_k = result["by_image_size"][str(size)] = {}
        for K in args.ks:
            records = make_records(args.batch, size)
            lare_step, k_lare, lare_phases = train_step("lare", K, records, args)
            cot_step, k_text, cot_phases = train_step("text_cot", K, _fit_reasoning(records, K, args), args)
            times, cpu = interleaved_times({"lare": lare_step, "text_cot": cot_step,
                                       "kv": inference(K, records, args, kv_cache=True),
                                       "naive": inference(K, records, args, kv_cache=False)}, args.repeats)
            t = {name: statistics.median(ts) for name, ts in times.items()}
            best = {name: min(ts) for name, ts in times.items()}  # the least disturbed call, for a loaded machine
            c = {name: statistics.median(ts) for name, ts in cpu.items()}
            t_lare, t_text, t_kv, t_naive = t["lare"], t["text_cot"], t["kv"], t["naive"]
            per_k[str(K)] = {"train_step_s_lare": t_lare, "train_step_s_textcot": t_text,
                             "reasoning_positions_lare": k_lare, "reasoning_tokens_textcot": k_text,
                             "train_step_ratio_lare_over_textcot": t_lare / t_text,
                             "infer_s_kv": t_kv, "infer_s_naive": t_naive, "infer_speedup_kv_over_naive": t_naive / t_kv,
                             "fastest_call": {"train_step_ratio_lare_over_textcot": best["lare"] / best["text_cot"],
                                              "infer_speedup_kv_over_naive": best["naive"] / best["kv"]},
                             "cpu_time_median": {"train_step_ratio_lare_over_textcot": c["lare"] / c["text_cot"],
                                                 "infer_speedup_kv_over_naive": c["naive"] / c["kv"],
                                                 **{f"{name}_s": v for name, v in c.items()}},
                             "train_step_phases_lare": _phase_medians(lare_phases),
                             "train_step_phases_textcot": _phase_medians(cot_phases)}
            print(f"{size:>4} {K:>3} {k_lare:>8} {k_text:>7} {t_lare * 1e3:>8.1f} {t_text * 1e3:>8.1f} {t_lare / t_text:>6.2f} "
                  f"{t_kv * 1e3:>8.1f} {t_naive * 1e3:>9.1f} {t_naive / t_kv:>7.2f}")
    # The breakdowns after every timed round: the seconds right after a profiler session run slower (its
    # collection finishing), which would tilt the next round's timings.
    for size in args.image_sizes:
        args.image_size = size
        records = make_records(args.batch, size)
        for K in args.ks:
            result["by_image_size"][str(size)][str(K)]["latent_step_breakdown"] = {
                "generate": latent_breakdown(K, records, args, training=False),
                "train_forward": latent_breakdown(K, records, args, training=True)}

    # Headline keys: the bundled default's image size (the first one), per K.
    default = result["by_image_size"][str(args.image_sizes[0])]
    result["image_size"] = args.image_sizes[0]
    result["train_step_ratio_lare_over_textcot"] = {k: v["train_step_ratio_lare_over_textcot"] for k, v in default.items()}
    result["infer_speedup_kv_over_naive"] = {k: v["infer_speedup_kv_over_naive"] for k, v in default.items()}
    # Timings on a shared machine: what else ran shows here (1-minute, 5-minute, 15-minute load on its cores).
    result["load_average_at_end"] = os.getloadavg()
    result["targets"] = {}
    for key, (op, bound) in TARGETS.items():
        value = result[key].get(TARGET_K)
        ok = None if value is None else (value <= bound if op == "<=" else value >= bound)
        result["targets"][f"{key} at K={TARGET_K}"] = {"target": f"{op} {bound}", "value": value, "pass": ok}
        print(f"target {key} at K={TARGET_K} {op} {bound}: {value if value is None else round(value, 3)} "
              f"{'-' if ok is None else ('pass' if ok else 'FAIL')}")
    print("per latent step (ms, 224 px when measured):")
    for K, row in default.items():
        for mode, b in row["latent_step_breakdown"].items():
            print(f"  K={K} {mode:13s} step {b['step_ms']:.3f}: decoder {b['decoder_forward_ms']:.3f}, refocus "
                  f"{b['refocus_ms']:.3f}, cache {b['cache_bookkeeping_ms']:.3f}, other {b['python_other_ms']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


def _fit_reasoning(records, K: int, args) -> list[dict]:
    """Make the text CoT's reasoning exactly K tokens: step text + '\\n' (the words are single tokens)."""
    from lare.backbone import load_backbone
    from lare.config import ModelConfig

    _, processor = load_backbone(ModelConfig(backbone=args.backbone))
    out = []
    for r in records:
        words = max(1, K)
        while words > 1 and len(processor.step_ids(" ".join(["a"] * words), None)) > K:
            words -= 1
        out.append({**r, "steps": [{"text": " ".join(["a"] * words), "bbox": None}]})
    return out


if __name__ == "__main__":
    main()
