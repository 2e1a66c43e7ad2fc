"""Process bookkeeping for the local stack: start a service in its own session, recognise it again
later from a PID file, and stop exactly what was started (never by name, never `ray stop`).

A PID alone is not proof of ownership: PIDs are reused. Every record also stores the process's start
time as the kernel reports it; a PID whose start time differs is someone else's process and is never
signalled. Services run in a new session (setsid), so the helpers they fork (Ray's raylet and GCS,
MLflow's uvicorn and job workers) can be found and stopped with them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

LINUX = sys.platform.startswith("linux")


def start_token(pid: int) -> str | None:
    """A value that identifies one incarnation of `pid` (None when no such process)."""
    if LINUX:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return None
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] == "Z":  # a zombie has exited; only its parent's wait() is missing
            return None
        return fields[19]  # starttime, clock ticks after boot (field 22 of stat)
    try:  # macOS and other Unixes: ps is there
        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def is_ours(pid: int, token: str | None) -> bool:
    """True when `pid` is alive and is the very process recorded with `token`."""
    return token is not None and pid > 0 and start_token(pid) == token


def session_members(sid: int) -> list[int]:
    """PIDs whose session id is `sid` (Linux). Elsewhere: the process group, best effort."""
    if not LINUX:
        out = subprocess.run(["ps", "-o", "pid=,pgid=", "-A"], capture_output=True, text=True)
        return [int(p) for p, g in (line.split() for line in out.stdout.splitlines()) if int(g) == sid]
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":  # fields[3] = session id (field 6 of stat)
            pids.append(int(entry))
    return pids


def spawn(argv: list[str], env: dict, log: Path, cwd: Path) -> subprocess.Popen:
    """Start `argv` in a new session with stdout/stderr appended to `log`; stdin closed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(argv)}\n".encode())
        out.flush()
        return subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pids, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        _reap(alive)
        alive = [p for p in alive if start_token(p) is not None]
        if alive:
            time.sleep(0.2)
    return alive


def _reap(pids) -> None:
    """Collect exit statuses of our own children so they don't linger as zombies."""
    for p in pids:
        try:
            os.waitpid(p, os.WNOHANG)
        except ChildProcessError:
            pass


def stop(pid: int, token: str, grace: float = 30.0) -> str:
    """Stop the service `pid` (a session leader we started) and everything left in its session.

    SIGTERM to the leader first so it shuts its children down in its own order (Ray drains, then stops
    raylet before GCS); then SIGTERM, and after a short wait SIGKILL, to whatever of its session is left.
    New processes forked during shutdown are not chased: only the snapshot taken before the first signal.
    Returns a short description of what happened."""
    if not is_ours(pid, token):
        return "not running"
    # Snapshot the session (pid == session id, start_new_session=True) with each member's start time, so
    # that later signals only ever reach these very processes, even if a PID is reused meanwhile.
    members = {p: start_token(p) for p in session_members(pid) if p != pid}
    _signal(pid, signal.SIGTERM)
    if _wait_gone([pid], grace):
        _signal(pid, signal.SIGKILL)
        _wait_gone([pid], 5.0)
    left = [p for p, t in members.items() if is_ours(p, t)]
    how = "stopped"
    if left:  # helpers the leader did not take down with it (MLflow's job workers do this)
        for p in left:
            _signal(p, signal.SIGTERM)
        left = _wait_gone(left, 5.0)
        how = "stopped (leftover helpers terminated)"
    if left:
        for p in left:
            _signal(p, signal.SIGKILL)
        left = _wait_gone(left, 5.0)
        how = "killed"
    if is_ours(pid, token) or left:
        return f"still alive after SIGKILL: {[pid] if is_ours(pid, token) else []}{left}"
    return how


def leftovers(pid: int, token: str | None) -> list[int]:
    """Processes still in the session of a recorded leader that has died.

    A kernel never hands out a PID that is still some live process's session (or group) id, so while
    members of session `pid` exist, `pid` cannot have been reused: they are the dead leader's helpers
    (e.g. MLflow's uvicorn worker that keeps serving after its parent was killed). When `pid` is alive
    again as another process, our session is empty by that same rule."""
    if start_token(pid) is not None:  # the leader itself, or a reused PID: either way not leftovers
        return []
    return session_members(pid)


def stop_leftovers(pid: int, token: str | None) -> int:
    """SIGTERM, then SIGKILL, the helpers a dead leader left behind. Returns how many there were."""
    members = {p: start_token(p) for p in leftovers(pid, token)}
    for p in members:
        _signal(p, signal.SIGTERM)
    left = _wait_gone(list(members), 5.0)
    for p in left:
        if start_token(p) == members[p]:
            _signal(p, signal.SIGKILL)
    _wait_gone(left, 5.0)
    return len(members)
