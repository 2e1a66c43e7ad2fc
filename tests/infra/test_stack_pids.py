"""PID-file safety of the local stack, without starting servers: stale files are cleaned up, a reused PID
or a PID file without its record is never signalled, and a dead leader's helpers are stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra_helpers import run_stack

from infra.local import procs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")


def alive(pid: int) -> bool:
    return procs.start_token(pid) is not None


def write_record(state: Path, name: str, pid: int, token: str | None) -> None:
    state.mkdir(parents=True, exist_ok=True)
    (state / f"{name}.json").write_text(json.dumps({"name": name, "pid": pid, "start_token": token, "ports": {name: 1},
                                                    "log": str(state / "x.log"), "argv": ["x"]}))
    (state / f"{name}.pid").write_text(f"{pid}\n")


@pytest.fixture
def sleeper():
    """A process of this test, which the stack must never touch."""
    p = subprocess.Popen(["sleep", "120"])
    yield p
    p.kill()
    p.wait()


def test_dead_pid_is_reported_stale_and_removed(tmp_path):
    p = subprocess.Popen(["true"])
    p.wait()
    write_record(tmp_path, "moto", p.pid, "12345")
    st = run_stack(tmp_path, "status", "--json")
    assert st.returncode == 3
    row = {r["service"]: r for r in json.loads(st.stdout)}["moto"]
    assert row["state"] == "stale" and str(p.pid) in row["detail"]
    down = run_stack(tmp_path, "down")
    assert down.returncode == 0 and "stale PID file removed" in down.stdout
    assert not (tmp_path / "moto.pid").exists() and not (tmp_path / "moto.json").exists()


def test_reused_pid_is_never_signalled(tmp_path, sleeper):
    # Same PID, different start time: the PID now belongs to another process.
    write_record(tmp_path, "mlflow", sleeper.pid, "1")
    assert run_stack(tmp_path, "status").returncode == 3
    down = run_stack(tmp_path, "down")
    assert down.returncode == 0 and "another process" in down.stdout
    time.sleep(0.2)
    assert sleeper.poll() is None, "down signalled a process it did not start"
    assert not (tmp_path / "mlflow.pid").exists()


def test_pid_file_without_record_is_never_signalled(tmp_path, sleeper):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "ray.pid").write_text(f"{sleeper.pid}\n")
    st = run_stack(tmp_path, "status", "--json")
    assert {r["service"]: r["state"] for r in json.loads(st.stdout)}["ray"] == "stale"
    down = run_stack(tmp_path, "down")
    assert "nothing signalled" in down.stdout
    time.sleep(0.2)
    assert sleeper.poll() is None
    assert not (tmp_path / "ray.pid").exists()


def spawn_leader_with_helper(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """A session leader that forks a helper ignoring SIGTERM, like a server with worker processes."""
    helper_pid = tmp_path / "helper.pid"
    (tmp_path / "helper.py").write_text(
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()))\n"
        "os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
        "time.sleep(120)\n")
    code = (f"import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, {str(tmp_path / 'helper.py')!r}, {str(helper_pid)!r}])\n"
            f"time.sleep(120)\n")
    leader = procs.spawn([sys.executable, "-c", code], dict(os.environ), tmp_path / "leader.log", cwd=tmp_path)
    deadline = time.monotonic() + 10
    while not helper_pid.exists():
        assert time.monotonic() < deadline, "helper did not start"
        time.sleep(0.05)
    return leader, int(helper_pid.read_text())


def test_stop_takes_down_the_whole_session(tmp_path):
    leader, helper = spawn_leader_with_helper(tmp_path)
    token = procs.start_token(leader.pid)
    assert set(procs.session_members(leader.pid)) >= {leader.pid, helper}
    result = procs.stop(leader.pid, token, grace=5)
    assert result == "killed", result  # the helper ignores SIGTERM: it needed SIGKILL
    leader.wait(5)
    assert not alive(helper) and procs.session_members(leader.pid) == []


def test_helpers_of_a_crashed_leader_are_stopped_by_up_and_down(tmp_path):
    leader, helper = spawn_leader_with_helper(tmp_path)
    write_record(tmp_path, "moto", leader.pid, procs.start_token(leader.pid))
    leader.send_signal(signal.SIGKILL)
    leader.wait(5)
    assert alive(helper) and procs.leftovers(leader.pid, "x") == [helper]
    st = run_stack(tmp_path, "status", "--json")
    assert "1 of its helper processes still running" in {r["service"]: r for r in json.loads(st.stdout)}["moto"]["detail"]
    down = run_stack(tmp_path, "down")
    assert "stopped 1 helper processes" in down.stdout, down.stdout
    assert not alive(helper)


def test_status_and_down_without_state(tmp_path):
    assert run_stack(tmp_path / "none", "status").returncode == 3
    assert run_stack(tmp_path / "none", "down").returncode == 0
