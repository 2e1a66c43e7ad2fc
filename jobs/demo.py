"""`make demo`: the main job end to end on the bundled default, on a laptop.

Builds the refocus traces (when missing), trains the tiny Qwen2.5-VL preset in `lare` mode through Ray
Train (jobs/train.py with configs/demo.yaml: the colour-only attribute questions of the refocus benchmark, which a
random-init model learns in minutes on a CPU), evaluates the exported model on the held-out `test` split,
prints a result table against a question-only baseline, and says where to look. Ray is started on
127.0.0.1 for the demo and shut down at the end: nothing keeps running.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONFIG = ROOT / "configs" / "demo.yaml"
EVAL_ROWS = 256  # per split (test and hard)


def question_only_baseline(traces: str, split: str, ids: set[str]) -> dict[str, float]:
    """Accuracy per family, on the rows `ids` of `split`, of the best guess from the question text alone
    (the majority answer of the training rows with the same question, else of the same family)."""
    from pipelines.io import read_traces_table

    train = read_traces_table(traces, "train").drop_columns(["image"]).to_pylist()
    test = [r for r in read_traces_table(traces, split).drop_columns(["image"]).to_pylist() if r["id"] in ids]
    by_question, by_family = defaultdict(Counter), defaultdict(Counter)
    for r in train:
        by_question[r["question"]][r["answer"]] += 1
        by_family[json.loads(r["meta"])["family"]][r["answer"]] += 1
    hits, total = Counter(), Counter()
    for r in test:
        family = json.loads(r["meta"])["family"]
        guess = (by_question.get(r["question"]) or by_family[family]).most_common(1)[0][0]
        if r["choices"] and guess not in r["choices"]:
            guess = r["choices"][0]
        hits[family] += guess == r["answer"]
        total[family] += 1
    per_family = {f: 100.0 * hits[f] / total[f] for f in total}
    per_family["overall"] = 100.0 * sum(hits.values()) / max(1, sum(total.values()))
    return per_family


def main() -> None:
    import ray

    import jobs.train as train_job
    from lare.config import load_config
    from lare.eval.run import evaluate_model

    t0 = time.time()
    cfg = load_config(CONFIG).with_absolute_paths()
    ray.init(address="local", num_cpus=(os.cpu_count() or 2) + 2, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        summary = train_job.main(["--config", str(CONFIG)])
        t_train = time.time() - t0
        evaluation = evaluate_model(summary["export"], ["refocus"], cfg.data.traces_dir, use_ray=False,
                                    batch_size=32, limit=EVAL_ROWS)
    finally:
        ray.shutdown()

    (row,) = [r for r in evaluation["results"] if r["benchmark"] == "refocus"]
    test = row["metrics"]["by_split"]["test"]
    tokens = row["tokens"]
    baseline = question_only_baseline(cfg.data.traces_dir, "test", {p["id"] for p in evaluation["predictions"]})
    data = ", ".join(f"{k}={v}" for k, v in cfg.data.source_options.items() if k in ("families", "colour_only"))
    print(f"\nLaRe demo: tiny Qwen2.5-VL preset, lare paradigm, refocus benchmark ({data}; {test['n']} test rows)\n")
    print(f"| {'question family':<16} | {'LaRe accuracy':>13} | {'question-only':>13} |")
    print(f"|{'-' * 18}|{'-' * 15}|{'-' * 15}|")
    for family in sorted(k for k in baseline if k != "overall"):
        acc = test["by_family"].get(family, {}).get("acc", float("nan"))
        print(f"| {family:<16} | {acc:>12.1f}% | {baseline[family]:>12.1f}% |")
    print(f"| {'overall':<16} | {test['acc']:>12.1f}% | {baseline['overall']:>12.1f}% |")
    hard = row["metrics"]["by_split"].get("hard")
    if hard:
        print(f"| {'hard split':<16} | {hard['acc']:>12.1f}% | {'':>13} |")
    print(f"\nmean tokens per answer: {tokens['total']:.1f} (visual {tokens['visual']:.1f}, prompt {tokens['prompt_text']:.1f}, "
          f"latent {tokens['latent']:.1f}, generated {tokens['generated']:.1f})")
    print(f"trained {summary['steps']} steps in {t_train / 60:.1f} min; whole demo {(time.time() - t0) / 60:.1f} min")
    print(f"\nmodel (HF-style, loads without Ray): {summary['export']}")
    print(f"checkpoints: {Path(cfg.train.storage_path).resolve() / cfg.train.experiment}")
    print(f"traces: {Path(cfg.data.traces_dir).resolve()}")
    uri = summary["mlflow_uri"]
    print(f"MLflow UI: {sys.executable} -m mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
          "  (then open http://127.0.0.1:5000)")


if __name__ == "__main__":
    main()
