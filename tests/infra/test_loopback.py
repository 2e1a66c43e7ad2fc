"""Nothing a job's Ray opens listens beyond loopback: GCS, raylet, object manager, agents, every worker, and the
torch.distributed store and gloo pairs of a 2-worker Ray Train run.

The driver is a fresh process started the way the jobs start Ray (lare.rayenv.ensure_ray, with `ray` imported
before it, as pipelines.build does), from an environment without any of the loopback settings: ensure_ray must
set them itself. Every process it started is its descendant (or names its Ray temp dir); while the run is alive,
their TCP listeners are read from /proc (sockets of /proc/PID/fd in /proc/net/tcp{,6}).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from infra_helpers import LOOPBACK, REPO, listening_sockets

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"),
                                                   reason="reads sockets and processes from /proc (Linux)")]

# Listeners allowed beyond loopback, as {process name fragment: why}. Empty: every one binds 127.0.0.1. A new entry
# needs its reason in docs/infra.md ("Loopback only").
ALLOWED_BEYOND_LOOPBACK: dict[str, str] = {}
# What the jobs' environment may hold but ensure_ray must supply by itself.
LOOPBACK_ENV = ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "GLOO_SOCKET_IFNAME",
                "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR")

DRIVER = r"""
import json, os, sys, time
from pathlib import Path

import ray  # before ensure_ray: its constants are read at import, without the loopback setting

from lare.rayenv import ensure_ray

out = Path(sys.argv[1])
ensure_ray(num_cpus=4, log_to_driver=False)

from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer


def train_fn(config):
    import torch
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    t = torch.ones(1) * (rank + 1)
    dist.all_reduce(t)  # gloo, through the store Ray Train opened on rank 0
    out = Path(config["out"])
    info = {"pid": os.getpid(), "sum": t.item(), "backend": dist.get_backend(),
            "master": [os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])]}
    (out / f"rank{rank}.json").write_text(json.dumps(info))
    deadline = time.monotonic() + 180
    while not (out / "go").exists() and time.monotonic() < deadline:  # stay alive while the test looks
        time.sleep(0.2)
    ray.train.report({"sum": t.item()})


trainer = TorchTrainer(train_fn, train_loop_config={"out": str(out)},
                       scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                       run_config=RunConfig(name="loopback", storage_path=str(out / "runs"),
                                            failure_config=FailureConfig(max_failures=0, controller_failure_limit=0)))
result = trainer.fit()
print("RESULT " + json.dumps(result.metrics), flush=True)
ray.shutdown()
"""


# ---- processes and their listeners (shared with test_secrets.py) --------------------------------------------------
def _stat(pid: str) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def process_tree(root: int, marker: str | None = None) -> list[int]:
    """`root` and its descendants; with `marker`, also any process whose command line holds it (Ray's temp dir:
    a helper that re-parented itself still names it)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(entry)) and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
            if marker and marker in cmdline(int(entry)):
                children.setdefault(-1, []).append(int(entry))
    found, todo = set(), [root, *children.get(-1, [])]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return sorted(found)


class ListenerWatch:
    """Samples the TCP listeners of a process tree every `every` seconds while it runs: {(addr, port, pid): command}."""

    def __init__(self, root: int, marker: str | None = None, every: float = 0.5):
        self.root, self.marker, self.every = root, marker, every
        self.seen: dict[tuple[str, int, int], str] = {}
        self.commands: set[str] = set()  # every command line of a listener, at every sample (Ray renames workers)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> list[tuple[str, int, int]]:
        socks = listening_sockets(process_tree(self.root, self.marker))
        for s in socks:
            cmd = cmdline(s[2])[:120]
            self.seen.setdefault(s, cmd)
            self.commands.add(cmd)
        return socks

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    def exposed(self) -> list[tuple[str, int, int, str]]:
        return sorted((a, p, pid, cmd) for (a, p, pid), cmd in self.seen.items()
                      if a not in LOOPBACK and not any(k in cmd for k in ALLOWED_BEYOND_LOOPBACK))


def job_env(tmp: str, **extra: str) -> dict[str, str]:
    """This environment without the loopback settings (ensure_ray must add them), Ray's temp dir in `tmp`."""
    env = {k: v for k, v in os.environ.items() if k not in LOOPBACK_ENV}
    env.update(OMP_NUM_THREADS="1", RAY_TMPDIR=tmp, TMPDIR=tmp, PYTHONPATH=str(REPO), RAY_DATA_DISABLE_PROGRESS_BARS="1",
               **extra)
    return env


def short_tmp(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # Ray's socket paths must stay under 107 bytes


# ---- the test -----------------------------------------------------------------------------------------------------
def test_ray_train_with_gloo_listens_on_loopback_only(tmp_path):
    import shutil

    tmp = short_tmp("lb")
    out = tmp_path / "out"
    out.mkdir()
    log = tmp_path / "driver.log"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(script), str(out)], cwd=REPO, env=job_env(tmp), stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with ListenerWatch(proc.pid, marker=tmp) as watch:
            deadline = time.monotonic() + 300
            while not all((out / f"rank{r}.json").exists() for r in (0, 1)):
                assert proc.poll() is None, f"driver exited {proc.returncode}:\n{log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, f"workers not up after 300 s:\n{log.read_text()[-4000:]}"
                time.sleep(0.3)
            time.sleep(1.0)
            live = watch.sample()  # both workers are inside the run: store, gloo pairs, every Ray process
            (out / "go").write_text("")
            assert proc.wait(timeout=180) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()  # our own child
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    exposed = watch.exposed()
    report = "\n".join(f"  {a}:{p} pid {pid} {cmd}" for a, p, pid, cmd in exposed)
    assert not exposed, f"listening beyond loopback:\n{report}"

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["sum"] == 3.0 and r["backend"] == "gloo" for r in ranks), ranks
    master_addr, master_port = ranks[0]["master"]
    assert master_addr == "127.0.0.1", f"Ray Train's MASTER_ADDR is the node IP: {master_addr}"
    assert "RESULT" in log.read_text()

    by_cmd = {}
    for (addr, port, pid), cmd in watch.seen.items():
        by_cmd.setdefault(cmd.split()[0].rsplit("/", 1)[-1], []).append((addr, port))
    # The scan saw what it must: Ray's servers, the store on MASTER_PORT and both workers' listeners (gloo).
    assert {"gcs_server", "raylet"} <= set(by_cmd), f"Ray's servers not found among {sorted(by_cmd)}"
    assert any(p == master_port for _, p, _ in live), f"no listener on MASTER_PORT {master_port}: {sorted(live)}"
    worker_pids = {r["pid"] for r in ranks}
    assert worker_pids <= {pid for _, _, pid in live}, f"workers {worker_pids} not listening: {sorted(live)}"


def test_the_setup_hook_variable_is_rays():
    """lare.rayenv names Ray's internal variable for the worker setup hook itself (it imports nothing at worker
    start): after a Ray upgrade this says why the store would be back on the wildcard address."""
    from ray._private import ray_constants

    from lare import rayenv

    assert rayenv.SETUP_HOOK_ENV == ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR
    assert rayenv.environment()[rayenv.SETUP_HOOK_ENV] == f"{rayenv.worker_setup.__module__}.{rayenv.worker_setup.__name__}"
