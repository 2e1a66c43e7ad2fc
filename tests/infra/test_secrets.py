"""No secret in any log or artifact: a short training (jobs/train.py, one Ray Train run) and an evaluation
(jobs/evaluate.py, Ray Data), each started as a user would, with dummy AWS keys and an MLflow password in the
environment, and credentials in the URIs they are given: the tracking URI http://user:password@127.0.0.1:PORT of a
real MLflow server, and the model as s3://KEY:SECRET@bucket/export?endpoint_override=... (pyarrow's form, the
secret percent-encoded) on a moto S3. Afterwards every file under Ray's temp dir (both sessions), the MLflow
server's store, artifacts and log, the Ray Train storage (checkpoints, export), the evaluation's output and the
jobs' own output is searched for each secret. The query-string forms other tools use (?access_key=..&secret_key=..)
are covered by test_redaction_covers_every_form.

The workers still get the credentials (they read S3 and log to MLflow): from the environment Ray was started
with, which the test checks in a live training worker. While the jobs run, their listeners are also checked to
be on loopback (the real jobs' start-up path, next to tests/infra/test_loopback.py's minimal run).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from infra_helpers import REPO
from test_loopback import ListenerWatch, cmdline, job_env, process_tree, short_tmp

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"),
                                                   reason="reads processes from /proc (Linux)")]

BUCKET = "lare-secrets"
ENV_SECRETS = {"AWS_ACCESS_KEY_ID": "AKIALAREENVKEY7QX1", "AWS_SECRET_ACCESS_KEY": "lare-env-secret/Zq81+kVw",
               "MLFLOW_TRACKING_PASSWORD": "lare-mlflow-pw-3vK9d"}
URI_PASSWORD = "lare-uri-pw-Q7x2m"  # in the tracking URI
URI_ACCESS_KEY, URI_SECRET_KEY = "AKIALAREURIKEY2PZ8", "lare/uri/secret-8Hq2w"  # a '/' in it, as AWS keys have
SECRETS = {**{f"${k}": v for k, v in ENV_SECRETS.items()}, "tracking URI password": URI_PASSWORD,
           "S3 URI access key": URI_ACCESS_KEY, "S3 URI secret key": URI_SECRET_KEY}
TINY = ["model.backbone=tiny-qwen2.5-vl", "method.latent_steps=2", "method.latents_per_step=1", "train.batch_size=4",
        "train.epochs_per_stage=1", "train.start_stage=2", "train.log_every=1", "train.warmup_steps=2",
        "data.num_val_samples=4", "train.cpus_per_worker=1", "train.num_workers=1", "train.checkpoint_every=100"]


def creds_uri(endpoint: str, key: str) -> str:
    """pyarrow's form of an S3 URI with credentials: s3://KEY:SECRET@bucket/key (the secret percent-encoded)."""
    host = urllib.parse.urlparse(endpoint).netloc
    secret = urllib.parse.quote(URI_SECRET_KEY, safe="")
    return f"s3://{URI_ACCESS_KEY}:{secret}@{BUCKET}/{key}?endpoint_override={host}&scheme=http"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow(root: Path) -> tuple[subprocess.Popen, int]:
    """An MLflow server whose store, artifacts and log are all under root (searched afterwards)."""
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "mlflow")
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen([exe, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                                 "--artifacts-destination", (root / "artifacts").as_uri(), "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 120
    while True:
        try:
            with opener.open(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                raise RuntimeError(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # our own child, by its PID
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_job(argv: list[str], env: dict, log: Path, marker: str, timeout: float, on_tick=None):
    """Run a job to its end with its listeners watched; on_tick(pids) is called while it runs."""
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        with ListenerWatch(proc.pid, marker=marker) as watch:
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                if on_tick:
                    on_tick(process_tree(proc.pid, marker))
                time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()  # our own child, past its time
        proc.wait()
    assert proc.returncode == 0, f"{argv[0]} exited {proc.returncode}:\n{log.read_text()[-5000:]}"
    return watch


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, ray_session, moto_s3):
    import boto3

    from lare.storage import upload_dir
    from pipelines.build import build_traces

    root = tmp_path_factory.mktemp("secrets")
    traces = root / "traces"
    build_traces("refocus", str(traces), seed=0, options={"num_train": 16, "num_val": 4, "num_test": 4, "num_hard": 0})
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket=BUCKET)
    (root / "mlflow").mkdir()
    server, port = start_mlflow(root / "mlflow")
    tracking = f"http://lare:{URI_PASSWORD}@127.0.0.1:{port}"

    tmp = short_tmp("ls")  # Ray's temp dir (RAY_TMPDIR) and every temp file of the jobs (TMPDIR)
    env = job_env(tmp, MLFLOW_TRACKING_USERNAME="lare", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
                  **ENV_SECRETS)
    (root / "logs").mkdir()
    seen_worker_env: dict[str, str] = {}

    def worker_environment(pids):
        if not seen_worker_env:
            for pid in pids:
                if cmdline(pid).startswith("ray::RayTrainWorker"):
                    seen_worker_env.update(environ(pid))

    try:
        train = run_job(["jobs/train.py", *TINY, f"data.traces_dir={traces}", "train.experiment=secrets",
                         f"train.storage_path={root / 'runs'}", f"tracking.uri={tracking}"],
                        env, root / "logs" / "train.log", tmp, timeout=480, on_tick=worker_environment)
        sessions = {"train": set((Path(tmp) / "ray").glob("session_2*"))}
        upload_dir(root / "runs" / "secrets" / "export", creds_uri(moto_s3, "export"))
        evaluate = run_job(["jobs/evaluate.py", "--model", creds_uri(moto_s3, "export"), "--benchmarks", "refocus",
                            "--data-root", str(traces), "--limit", "2", "--batch-size", "2", "--concurrency", "1",
                            "--heatmaps", "1", "--max-new-tokens", "4", "--out", str(root / "eval"),
                            "--tracking-uri", tracking], env, root / "logs" / "evaluate.log", tmp, timeout=300)
        sessions["evaluate"] = set((Path(tmp) / "ray").glob("session_2*")) - sessions["train"]
        stop(server)  # its log complete
        scanned = {"ray temp dir": Path(tmp), "mlflow server": root / "mlflow", "ray train storage": root / "runs",
                   "evaluation output": root / "eval", "job output": root / "logs"}
        job_of = {str(d): job for job, ds in sessions.items() for d in ds}

        def where(path: str) -> str:  # which job's Ray session a file is in
            return next((f"{path} ({job} job's Ray)" for d, job in job_of.items() if path.startswith(d + "/")), path)

        hits = {label: [where(f) for f in grep(scanned.values(), value)] for label, value in SECRETS.items()}
        files = [p for d in scanned.values() for p in d.rglob("*") if p.is_file()]
        yield {"root": root, "store": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}", "hits": hits, "files": files,
               "worker_env": dict(seen_worker_env), "watches": {"train": train, "evaluate": evaluate}, "port": port}
    finally:
        stop(server)
        shutil.rmtree(tmp, ignore_errors=True)


def grep(dirs, value: str) -> list[str]:
    """Files holding `value`, as is or URL-encoded."""
    needles = {value.encode(), urllib.parse.quote(value, safe="").encode(), urllib.parse.quote_plus(value).encode()}
    found = []
    for d in dirs:
        for path in Path(d).rglob("*"):
            try:
                if path.is_file() and not path.is_symlink():
                    data = path.read_bytes()
                    if any(n in data for n in needles):
                        found.append(str(path))
            except OSError:
                continue
    return found


def test_no_secret_in_any_log_or_artifact(jobs):
    names = {p.name for p in jobs["files"]}
    # Where the leaks were: Ray's runtime-env log, the exported config, the logged config.
    assert "runtime_env_agent.log" in names, "Ray's temp dir was not where the test looked"
    assert {"lare_config.json", "config.yaml", "mlflow.db", "server.log", "results.json"} <= names, sorted(names)[:50]
    leaks = {label: files for label, files in jobs["hits"].items() if files}
    assert not leaks, "secrets found:\n" + "\n".join(f"  {label}: {files}" for label, files in leaks.items())


def test_workers_still_get_the_credentials_from_their_environment(jobs):
    env = jobs["worker_env"]
    assert env, "no live Ray Train worker was seen"
    for key, value in ENV_SECRETS.items():
        assert env.get(key) == value, f"the training worker lacks {key}"


def test_logged_and_exported_configs_are_redacted(jobs):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(jobs["store"])  # the server's own store, read directly
    runs = {r.info.run_name: r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    train = next(r for r in runs.values() if "data.traces_dir" in r.data.params)
    uri = train.data.params["tracking.uri"]
    assert uri == f"http://***@127.0.0.1:{jobs['port']}", uri
    exported = json.loads((jobs["root"] / "runs" / "secrets" / "export" / "lare_config.json").read_text())
    assert exported["tracking"]["uri"] == uri
    evaluation = next(r for r in runs.values() if any(k.endswith("/source") for k in r.data.params))
    source = next(v for k, v in evaluation.data.params.items() if k.endswith("/source"))
    assert source.startswith(f"s3://***@{BUCKET}/export?endpoint_override="), source


def test_the_real_jobs_listen_on_loopback_only(jobs):
    for name, watch in jobs["watches"].items():
        assert watch.seen, f"{name}: no listener seen (the scan did not work)"
        exposed = watch.exposed()
        assert not exposed, f"{name} listened beyond loopback:\n" + "\n".join(map(str, exposed))


def test_redaction_covers_every_form(monkeypatch):
    """User info (a '/' in the password too), query-string credentials, presigned URLs, credential-named fields,
    and the values of the environment's credential variables wherever they appear."""
    from lare.config import load_config
    from lare.storage import redact as redact_text, redact_obj
    from lare.tracking import flat_params, redacted_config

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-from-the-env-42")
    cases = {
        "s3://b/p?access_key=AK1&secret_key=ab/cd/ef&endpoint_override=127.0.0.1:9000":
            "s3://b/p?access_key=***&secret_key=***&endpoint_override=127.0.0.1:9000",
        "https://user:pa/ss@host/x": "https://***@host/x",
        "s3://AK:se%2Fcr@bucket/k?scheme=http": "s3://***@bucket/k?scheme=http",
        "https://tok@host/x": "https://***@host/x",
        "https://h/o?X-Amz-Credential=AK/1/us&X-Amz-Signature=f00d&X-Amz-Date=1":
            "https://h/o?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Date=1",
        "error: password=hunter22 token=abc max_new_tokens=5": "error: password=*** token=*** max_new_tokens=5",
        "login pw-from-the-env-42 failed": "login *** failed",
        "http://127.0.0.1:5000/x": "http://127.0.0.1:5000/x", "s3://bucket/path@v2/x": "s3://bucket/path@v2/x",
    }
    for text, expected in cases.items():
        assert redact_text(text) == expected, text
    assert redact_obj({"hf_token": "abc", "max_new_tokens": 3, "s3://b/m?secret_key=zz": 1.0, "public_uri": "https://u:p@h",
                       "l": ["https://a:b@c"]}) == {"hf_token": "***", "max_new_tokens": 3, "s3://b/m?secret_key=***": 1.0,
                                                  "public_uri": "https://***@h", "l": ["https://***@c"]}
    cfg = load_config(None, ["data.traces_dir=s3://b/t?access_key=AK&secret_key=S/K",
                             'data.mixture={"s3://AK:S%2FK@b/m": 1.0}', "tracking.uri=https://u:p/w@h"])
    public = redacted_config(cfg)
    assert (public.data.traces_dir, public.data.mixture, public.tracking.uri) == \
        ("s3://b/t?access_key=***&secret_key=***", {"s3://***@b/m": 1.0}, "https://***@h")
    text = public.to_yaml() + json.dumps(flat_params(cfg))
    assert not any(s in text for s in ("AK", "S/K", "S%2FK", "u:p")), text
