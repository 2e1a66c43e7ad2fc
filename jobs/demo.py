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

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # every run's progress line, not "repeated 3x across cluster"

CONFIG = ROOT / "configs" / "demo.yaml"
VARIANTS = ["lare", "crop", "direct"]
EVAL_ROWS = 256  # per split (test and hard)


def main(argv=None) -> dict:
    from lare.compare import Comparison, run
    from lare.config import load_config
    from lare.tracking import resolve_uri

    t0 = time.time()
    cfg = load_config(CONFIG).with_absolute_paths(ROOT)
    comparison = Comparison(config=CONFIG, name="lare-demo", variants=VARIANTS, seeds=1, eval_limit=EVAL_ROWS,
                            max_concurrent=2, storage=str(ROOT / "runs"), bootstrap=1000, overrides=list(argv or []))
    out = ROOT / "outputs" / "demo" / "comparison.json"
    result = run(comparison, out, root_dir=ROOT)
    uri = resolve_uri(cfg)
    print(f"\nwhole demo {(time.time() - t0) / 60:.1f} min on {os.cpu_count()} cores")
    print(f"result table (JSON): {out}")
    print(f"models (HF-style, load without Ray): {ROOT / 'runs' / 'lare-demo' / 'trials'}/lare-demo-<paradigm>-s0/export")
    print(f"traces: {Path(cfg.data.traces_dir)}")
    print(f"MLflow UI: {sys.executable} -m mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
          "  (then open http://127.0.0.1:5000, experiment lare-demo)")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
