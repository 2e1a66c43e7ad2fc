"""`make demo`: the main job end to end on the bundled default, on a laptop: a small paradigm comparison.

Fine-tunes LaRe and two baselines (crop, the thinking-with-images paradigm LaRe claims to match with fewer tokens,
and direct) from the bundled pretrained tiny Qwen3-VL on the same rows of the refocus benchmark v2 (configs/demo.yaml;
traces built when missing), two at a time as a Ray Tune grid through the training job; evaluates each export on the
held-out `test` and `hard` splits; prints one table: accuracy per question family with 95 % intervals, chance and a
question-only baseline, and tokens (inference and total) per paradigm. Every printed number is logged to MLflow (a
parent run with a child per paradigm). Ray runs on 127.0.0.1 for the demo and is shut down at the end.

The full comparison (every paradigm and ablation, 3 seeds, more rows) is bench/paradigms.py.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from lare.cli import add_job_flags, main_guard, run_cli, start

ROOT = Path(__file__).resolve().parents[2]  # the checkout: configs/demo.yaml, and runs/ and outputs/ beside it
CONFIG = ROOT / "configs" / "demo.yaml"
VARIANTS = ["lare", "crop", "direct"]
EVAL_ROWS = 256  # per split (test and hard)
LARE_ABLATIONS = ["none", "zero_latents"]  # the full comparison also shuffles and flattens the refocus maps


@main_guard
def main(argv=None) -> dict:
    from lare.compare import Comparison
    from lare.compare import run as run_comparison
    from lare.config import load_config
    from lare.tracking import resolve_uri, ui_hint

    ap = argparse.ArgumentParser(prog="make demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of configs/demo.yaml")
    add_job_flags(ap)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # two runs at once on a laptop: one thread each
    start(args.verbose)
    t0 = time.time()
    cfg = load_config(CONFIG).with_absolute_paths(ROOT)
    comparison = Comparison(config=CONFIG, name="lare-demo", variants=VARIANTS, seeds=1, eval_limit=EVAL_ROWS, lare_ablations=LARE_ABLATIONS,
                            input_ablations=[], max_concurrent=2, storage=str(ROOT / "runs"), bootstrap=1000, overrides=args.overrides,
                            on_change="restart")  # a demo after a config or backbone change trains again
    out = ROOT / "outputs" / "demo" / "comparison.json"
    result = run_comparison(comparison, out, verbose=args.verbose)
    uri = resolve_uri(cfg)
    print(f"\nwhole demo {(time.time() - t0) / 60:.1f} min on {os.cpu_count()} cores")
    print(f"result table (JSON): {out}")
    print(f"models (HF-style, load without Ray): {ROOT / 'runs' / 'lare-demo' / 'trials'}/lare-demo-<paradigm>-s0/export")
    print(f"traces: {Path(cfg.data.traces_dir)}")
    print(ui_hint(uri, "lare-demo"))
    return result


def run() -> None:
    """jobs/demo.py (make demo)."""
    run_cli(main)
