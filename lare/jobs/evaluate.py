"""Evaluate LaRe models on the benchmarks with Ray Data batch inference; results, plots and MLflow.

    lare-eval --model runs:/<run id>/model --model /exports/direct \\
        --benchmarks refocus,pope,mmbench,scienceqa,mmvp,mmstar,mmmu_pro --data-root /data/benchmarks

--model takes a LaRe export directory (local or s3://), runs:/<run id>/<path> or models:/<name>/<version>;
repeat it (or give a comma-separated list) to compare paradigms in one run. Each model is evaluated with the
paradigm it was trained with (its lare_config.json): --paradigm only selects which of the given models to run,
it never changes a model's paradigm (the trained heads would not match).

Inference runs as Ray Data batch inference: an actor pool (--concurrency actors, each with --num-gpus-per-actor
GPUs; 0 on CPU) loads each model once per actor. It connects to the Ray cluster in $RAY_ADDRESS, else starts a
local Ray bound to 127.0.0.1 (so it runs unchanged as `ray job submit -- python jobs/evaluate.py ...`).
--no-ray runs everything in this process instead.

Outputs in --out: results.json (every score, the protocol of each benchmark, settings), results.csv and
results.md (the headline table: accuracy, mean tokens per answer by component, latency per sample),
predictions.jsonl (one line per item, model and ablation), accuracy_vs_tokens.png, heatmaps/*.png (each latent
step's refocus over the image, and the decoded regions when the model has a pixel decoder). All of it is logged
to MLflow: into --mlflow-run-id when given; else, when the models came from one runs:/<id>, into a new
evaluation run nested under <id>; else into a new run of experiment `lare-eval`.

Exit status: 0 on success; 2 on a user error (unknown option or benchmark, missing model or data, unreachable
tracking server), one line on stderr (its traceback too with --debug or LARE_DEBUG=1); 1 on a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from pathlib import Path

from lare.cli import UserError, add_job_flags, main_guard, ray_for, run_cli, start
from lare.config import PARADIGMS
from lare.eval.readers import BENCHMARKS
from lare.eval.inference import INPUT_ABLATIONS
from lare.model import ABLATIONS

log = logging.getLogger("lare.evaluate")


def _csv(values: list[str] | None) -> list[str]:
    """Repeated flags and comma-separated lists, both: --model a --model b,c -> [a, b, c]."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    from lare.eval.run import DEFAULT_BENCHMARKS

    ap = argparse.ArgumentParser(prog="lare-eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, metavar="DIR|URI",
                    help="LaRe export directory (local or s3://), runs:/<run id>/<path> or models:/<name>/<version>; "
                         "repeat or comma-separate to compare models")
    ap.add_argument("--benchmarks", default=",".join(DEFAULT_BENCHMARKS),
                    help=f"comma-separated, from {', '.join(sorted(BENCHMARKS))} (default: %(default)s)")
    ap.add_argument("--data-root", required=True, help="folder holding the benchmark files (docs/benchmarks.md)")
    ap.add_argument("--paradigm", action="append", metavar="NAME",
                    help="evaluate only the given models trained with these paradigms (direct, text_cot, crop, latent, "
                         "lare); it selects models, it never changes the paradigm a model was trained with")
    ap.add_argument("--limit", type=int, default=None,
                    help="at most N questions per benchmark stratum (POPE category, MMBench circular group, MMVP pair, "
                         "MMMU-Pro setting, refocus split)")
    ap.add_argument("--batch-size", type=int, default=8, help="rows per generation batch (images travel in the batch: keep it small)")
    ap.add_argument("--concurrency", type=int, default=1,
                    help="model actors in the Ray Data pool; keep it below the CPUs on a CPU machine (default 1)")
    ap.add_argument("--num-gpus-per-actor", type=float, default=0, help="GPUs per actor (0 = CPU inference)")
    ap.add_argument("--ablation", action="append", metavar="NAME",
                    help=f"one of {', '.join([*ABLATIONS, *INPUT_ABLATIONS])}; repeat to evaluate several (default none). "
                         "Ablations that do not apply to a paradigm (no latents, no refocus) are skipped for it; "
                         "other_image answers each question about another row's image (how much the model looks); "
                         "gold_boxes gives a crop model the trace's boxes to crop, gold_focus makes each lare slot "
                         "look at its trace step's box (oracles; refocus only)")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="decoding budget (default: the model's data.max_answer_tokens for latent paradigms, "
                         "data.max_new_tokens for text ones)")
    ap.add_argument("--heatmaps", type=int, default=4, help="refocus heatmap figures per model and ablation (default 4)")
    ap.add_argument("--out", default=None, help="output folder (default outputs/eval/<timestamp>)")
    ap.add_argument("--tracking-uri", default=None,
                    help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    ap.add_argument("--mlflow-run-id", default=None, help="log into this existing MLflow run")
    ap.add_argument("--no-tracking", action="store_true", help="do not log to MLflow (runs:/ models still need it)")
    ap.add_argument("--no-ray", action="store_true", help="run inference in this process instead of a Ray Data actor pool")
    ap.add_argument("--skip-missing", action="store_true", help="skip benchmarks without files instead of failing")
    ap.add_argument("--tracking-timeout", type=float, default=10.0, help="seconds to wait for the tracking server")
    add_job_flags(ap)
    args = ap.parse_args(argv)
    args.model = _csv(args.model)
    args.benchmarks = _csv([args.benchmarks])
    args.paradigm = _csv(args.paradigm)
    args.ablation = _csv(args.ablation) or ["none"]
    for a in args.ablation:
        if a not in ABLATIONS and a not in INPUT_ABLATIONS:
            ap.error(f"--ablation {a}: must be one of {', '.join([*ABLATIONS, *INPUT_ABLATIONS])}")
    for p in args.paradigm:
        if p not in PARADIGMS:
            ap.error(f"--paradigm {p}: must be one of {', '.join(PARADIGMS)}")
    for b in args.benchmarks:
        if b not in BENCHMARKS:
            ap.error(f"--benchmarks: unknown benchmark {b!r}; known: {', '.join(sorted(BENCHMARKS))}")
    if args.concurrency < 1 or args.batch_size < 1:
        ap.error("--concurrency and --batch-size must be >= 1")
    return args


def check_local_inputs(args) -> None:
    """The local paths of the request, checked before Ray starts (a typo fails in a second, not after a cluster
    start): --data-root, and each model directory that is not a URI."""
    from lare.eval.inference import read_model_config

    if not Path(args.data_root).expanduser().exists():
        raise UserError(f"--data-root {args.data_root} does not exist (the folder holding the benchmark files, "
                        "docs/benchmarks.md)")
    for spec in args.model:
        if "://" not in spec and not spec.startswith(("runs:/", "models:/")):
            read_model_config(spec)  # ModelNotFound names what is missing


# The evaluation's own exceptions for a request it cannot serve: user errors (see lare.cli), never bugs.
def _user_errors() -> tuple[type[Exception], ...]:
    from lare.eval.readers import BenchmarkFileError, MissingBenchmarkFiles
    from lare.eval.run import EvalError, ModelNotFound
    from lare.tracking import TrackingUnavailable

    return ModelNotFound, MissingBenchmarkFiles, BenchmarkFileError, EvalError, TrackingUnavailable


@main_guard
def main(argv=None) -> dict:
    args = parse_args(argv)
    start(args.verbose, data_progress=True)  # Ray Data's bars show the batch inference
    try:
        return evaluate_job(args)
    except _user_errors() as e:
        raise UserError(str(e)) from e


def evaluate_job(args) -> dict:
    from lare.eval.run import evaluate
    from lare.tracking import check_reachable, quick_client_env, ui_hint

    check_local_inputs(args)
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    needs_mlflow = not args.no_tracking or any(m.startswith(("runs:/", "models:/")) for m in args.model)
    if needs_mlflow:
        quick_client_env()
        check_reachable(uri, args.tracking_timeout)  # fail in seconds, before models load or Ray starts
    out = Path(args.out or Path("outputs") / "eval" / time.strftime("%Y%m%d-%H%M%S")).resolve()

    # Spare logical CPUs: Ray Data's own tasks must still get scheduled beside the model actors.
    with contextlib.nullcontext() if args.no_ray else ray_for(max(os.cpu_count() or 1, args.concurrency) + 2, args.verbose):
        summary = evaluate(
            args.model, args.benchmarks, args.data_root, out=out, paradigms=args.paradigm, limit=args.limit,
            batch_size=args.batch_size, concurrency=args.concurrency, num_gpus_per_actor=args.num_gpus_per_actor,
            ablations=args.ablation, max_new_tokens=args.max_new_tokens, heatmaps=args.heatmaps,
            use_ray=not args.no_ray, tracking_uri=uri, track=not args.no_tracking,
            mlflow_run_id=args.mlflow_run_id, skip_missing=args.skip_missing)
    print((out / "results.md").read_text())
    print(json.dumps({k: summary[k] for k in ("out", "mlflow_run_id", "wall_s")}, indent=1))
    if summary["mlflow_run_id"]:
        print(ui_hint(uri))
    return summary


def run() -> None:
    """The lare-eval console script and jobs/evaluate.py."""
    run_cli(main)
