"""Session-wide fixtures: synthetic trace records (tests/helpers.py), and the servers tests need, each on a
free loopback port and stopped by its PID: one local Ray for the session, a moto S3 endpoint, an MLflow
tracking server."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# Fake, test-only S3 credentials (forced: tests must never reach a real account), set before Ray starts so its
# workers inherit them. The secret is distinctive so a test can prove it is never printed.
FAKE_SECRET = "lare-fake-secret-never-logged"
os.environ.update(AWS_ACCESS_KEY_ID="lare-fake-key-id", AWS_SECRET_ACCESS_KEY=FAKE_SECRET, AWS_DEFAULT_REGION="us-east-1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers import free_loopback_port, record  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def records():
    """Three traces: different image sizes and aspect ratios, 1-3 steps, a step without a box, options."""
    return [
        record("a", 224, 224),
        record("b", 150, 100, question="Is the square larger than the triangle?", answer="yes", choices=["yes", "no"],
               steps=[{"text": "Find the square.", "bbox": [0.5, 0.1, 0.9, 0.5]},
                      {"text": "Find the triangle.", "bbox": None},
                      {"text": "Compare their sizes.", "bbox": [0.0, 0.0, 1.0, 1.0]}], seed=1),
        record("c", 90, 200, question="How many blue shapes are in the top-left quarter?", answer="2",
               steps=[{"text": "Look at the top-left quarter.", "bbox": [0.0, 0.0, 0.5, 0.5]},
                      {"text": "Count the blue shapes.", "bbox": [0.05, 0.1, 0.45, 0.4]}], seed=2),
    ]


@pytest.fixture
def free_port() -> int:
    return free_loopback_port()


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session, on loopback only. More logical CPUs than cores: Ray Train workers
    reserve theirs, and Ray Data's read tasks and Tune trials must still get scheduled (stack notes)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    tmp = tempfile.mkdtemp(prefix="lr", dir="/tmp")  # short: Ray's socket paths have a length limit
    from lare.rayenv import ensure_ray

    ensure_ray(num_cpus=6, _temp_dir=tmp, log_to_driver=False)  # the jobs' own start-up: every socket on loopback
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()  # our own child, by its PID
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                _stop(proc)
                raise RuntimeError(f"{what} did not start ({url})")
            time.sleep(0.3)


@pytest.fixture(scope="module")
def moto_s3():
    """A real S3 endpoint (moto_server) on 127.0.0.1 (pyarrow's C++ S3 client ignores moto's in-process mock).
    Yields its URL and points AWS_ENDPOINT_URL at it for the module."""
    port = free_loopback_port()
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    _wait_http(url + "/moto-api/", proc, "moto_server")
    previous = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = url
    yield url
    if previous is None:
        os.environ.pop("AWS_ENDPOINT_URL", None)
    else:
        os.environ["AWS_ENDPOINT_URL"] = previous
    _stop(proc)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite store, local artifacts) on a free loopback port; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_loopback_port()
    exe = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen([exe, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--artifacts-destination", (root / "artifacts").as_uri(), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_http(url + "/health", proc, "mlflow server", timeout=120)
    yield url
    _stop(proc)
