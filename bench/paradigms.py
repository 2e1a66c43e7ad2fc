"""The paradigm comparison on the refocus benchmark (v2): same backbone, data, supervision signal and budget for all.

Every variant is trained from the same backbone (configs/paradigms.yaml: the bundled pretrained tiny Qwen3-VL) on the
same training rows for the same number of epochs, through the real training job, with 3 seeds, as one Ray Tune grid
(variant x seed, two trials at a time; Ray starts once, an MLflow parent run holds a child run per trial, and the
same --name resumes an interrupted comparison). Each trial then evaluates its export on the held-out `test` and
`hard` splits (lare also with its latents zeroed, its refocus maps shuffled across samples and made uniform, and
reading through the trace's boxes; crop also with the trace's boxes written for it and cropped: oracles that tell
using a region apart from finding it), and says where each answer looked against the traces' boxes.

Variants: direct, text_cot, crop (thinking with images), latent (Coconut: z_t = h_t, no reconstruction), lare, and
the ablations lare_no_refocus (latent slots with the reconstruction objective, no refocus), lare_no_recon,
lare_no_forcing (the boxes through the focus loss only, no focus forcing) and lare_no_focus (no box supervision). Reported per family and overall: accuracy with 95 % bootstrap intervals over rows and seeds, paired
differences lare - each baseline with intervals, tokens as totals and as inference tokens (latent + generated +
crop), and per family the chance level and a question-only baseline on the same rows.

    python bench/paradigms.py                                     # the full comparison (see the wall time it reports)
    python bench/paradigms.py --seeds 1 --rows 64 --variants ...  # a reduced run (what the test does)
    python bench/paradigms.py --name NAME --add-ablations gold_boxes  # a finished comparison gains an ablation
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lare.cli import add_job_flags, main_guard, run_cli, start
from lare.compare import VARIANTS, Comparison, add_ablations, analyse_only, run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "paradigms.json"


def parse_args(argv=None) -> tuple[Comparison, Path, bool]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "paradigms.yaml", help="base config of every run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=0, help="training rows per run (0 = the config's data.num_train_samples)")
    ap.add_argument("--epochs-per-stage", type=int, default=0, help="epochs per curriculum stage (0 = the config's)")
    ap.add_argument("--eval-limit", type=int, default=0, help="rows per split evaluated (0 = all)")
    ap.add_argument("--eval-batch", type=int, default=32)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--max-concurrent", type=int, default=2, help="trials at once")
    ap.add_argument("--traces", default="", help="refocus traces (default: the config's data.traces_dir, built if missing)")
    ap.add_argument("--name", default="paradigms", help="the comparison's name: Tune experiment, MLflow parent; reuse it to resume")
    ap.add_argument("--storage", default=str(ROOT / "runs"), help="where trials keep checkpoints and predictions")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--analyse-only", action="store_true", help="report the trials finished so far; train nothing")
    ap.add_argument("--add-ablations", nargs="+", default=[], metavar="ABLATION",
                    help="evaluate the finished trials again with these evaluation-time ablations (e.g. gold_boxes), "
                         "merge them into their predictions and report; train nothing")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples per interval")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    add_job_flags(ap)
    a = ap.parse_args(argv)
    fields = {k: v for k, v in vars(a).items() if k not in ("out", "analyse_only", "add_ablations", "debug", "verbose")}
    return Comparison(**fields), a


@main_guard
def main(argv=None) -> dict:
    comparison, a = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # two trials at once on 2 cores: one thread each
    start(a.verbose)
    if a.add_ablations:
        add_ablations(comparison, a.add_ablations)
    done = a.analyse_only or a.add_ablations
    result = analyse_only(comparison, a.out) if done else run(comparison, a.out, verbose=a.verbose)
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    run_cli(main)
