"""Serve a trained model with Ray Serve: `lare-serve --model DIR|s3://...|runs:/<id>/model|models:/NAME/VERSION`
(or python jobs/serve.py ..., the same job).

An OpenAI-compatible API (POST /v1/chat/completions, GET /v1/models) whose answers also carry the token account and,
per latent step, where the model looked; POST /v1/refocus.png draws that; GET / is a page to ask and see it;
GET /healthz. Bound to 127.0.0.1 unless --host says otherwise. On a cluster: `serve deploy infra/serve/lare.yaml`
or the RayService manifest under infra/k8s. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import signal
import threading

from lare.cli import add_job_flags, main_guard, ray_for, run_cli, start
from lare.rayenv import HOST


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="lare-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a LaRe export: folder, s3://, runs:/<id>/model or models:/NAME/VERSION")
    ap.add_argument("--name", default="", help="the model's name in the API (default: the export folder's name)")
    ap.add_argument("--host", default=HOST, help="address to listen on (default 127.0.0.1: give another one explicitly to expose it)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--replicas", type=int, default=1, help="model replicas (each loads the model once)")
    ap.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica")
    ap.add_argument("--max-batch-size", type=int, default=8, help="concurrent requests grouped into one generation")
    ap.add_argument("--batch-wait-ms", type=float, default=50.0, help="how long a batch waits to fill")
    ap.add_argument("--image-root", default="", help="a folder images may also be given from by path ('' = data: URLs only)")
    ap.add_argument("--max-tokens", type=int, default=64, help="the largest max_tokens a request may ask for")
    ap.add_argument("--tracking-uri", default="", help="MLflow tracking URI for runs:/ and models:/ (default $MLFLOW_TRACKING_URI)")
    add_job_flags(ap)
    return ap.parse_args(argv)


def application_args(args: argparse.Namespace) -> dict:
    return {"model": args.model, "name": args.name, "num_replicas": args.replicas, "num_gpus": args.num_gpus,
            "max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_ms / 1000,
            "image_root": args.image_root, "max_tokens_limit": args.max_tokens, "tracking_uri": args.tracking_uri}


@main_guard
def main(argv=None, stop: threading.Event | None = None) -> int:
    """stop: set it to shut the service down (tests); the command line stops on Ctrl-C or SIGTERM."""
    args = parse_args(argv)
    start(args.verbose)
    from ray import serve

    from lare.serve.app import app_builder

    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    with ray_for(None, args.verbose):
        serve.start(http_options={"host": args.host, "port": args.port})
        try:
            serve.run(app_builder(application_args(args)), name="lare", route_prefix="/", blocking=False)
            print(f"serving {args.model} at http://{args.host}:{args.port}/  (the page; the API: /v1/chat/completions, "
                  "/v1/models, /v1/refocus.png, /healthz); Ctrl-C stops", flush=True)
            stop.wait()
        finally:
            serve.shutdown()
    return 0


def run() -> None:
    """The lare-serve console script and jobs/serve.py."""
    run_cli(main)
