#!/usr/bin/env python3
"""Check the running stack from the client side, the way jobs use it:

- MLflow: create a run against MLFLOW_TRACKING_URI, log a param, a metric and an artifact, then find the
  run again by a search and read the artifact back through the server (artifact proxying);
- S3: put an object into the dev bucket at AWS_ENDPOINT_URL with boto3 and get it back.

    source .stack/env && python infra/local/smoke.py     # prints a JSON summary; exit 1 on any failure
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path


def need(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"smoke: ${name} is not set: `source .stack/env` first (python infra/local/stack.py up)")
    return value


def check_mlflow(uri: str, tag: str) -> dict:
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    experiment = "lare-stack-smoke"
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"smoke-{tag}") as run:
        mlflow.log_param("probe", tag)
        mlflow.log_metric("answer", 42.0, step=1)
        with tempfile.TemporaryDirectory() as tmp:
            note = Path(tmp, "note.txt")
            note.write_text(f"smoke {tag}\n")
            mlflow.log_artifact(str(note))
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id], filter_string=f"params.probe = '{tag}'")
    if len(found) != 1 or found[0].info.run_id != run.info.run_id:
        raise AssertionError(f"run {run.info.run_id} not found by search (got {[r.info.run_id for r in found]})")
    got = found[0]
    if got.info.status != "FINISHED" or got.data.metrics.get("answer") != 42.0:
        raise AssertionError(f"run {got.info.run_id}: status {got.info.status}, metrics {got.data.metrics}")
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(got.info.run_id, "note.txt", tmp)
        text = Path(local).read_text()
    if text != f"smoke {tag}\n":
        raise AssertionError(f"artifact round trip returned {text!r}")
    return {"experiment_id": exp.experiment_id, "run_id": got.info.run_id, "artifact_uri": got.info.artifact_uri}


def check_s3(endpoint: str, bucket: str, tag: str) -> dict:
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(retries={"max_attempts": 2}, connect_timeout=5))
    key = f"smoke/{tag}.txt"
    body = f"lare smoke {tag}".encode()
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    if got != body:
        raise AssertionError(f"s3://{bucket}/{key}: read back {got!r}")
    return {"object": f"s3://{bucket}/{key}", "bytes": len(got)}


def main() -> int:
    tracking = need("MLFLOW_TRACKING_URI")
    endpoint = need("AWS_ENDPOINT_URL")
    bucket = os.environ.get("LARE_S3_BUCKET", "lare-dev")
    tag = f"{int(time.time())}-{uuid.uuid4().hex[:8]}"
    result = {"tag": tag}
    try:
        result["s3"] = check_s3(endpoint, bucket, tag)
        result["mlflow"] = check_mlflow(tracking, tag)
    except Exception as e:  # report which check failed, then fail
        result["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(result, indent=2))
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
