"""Helpers shared by the infrastructure tests: the repository root, the stack CLI, listening sockets."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "infra" / "local" / "stack.py"
KUBERAY_SCHEMAS = REPO.parent / "shared" / "schemas" / "kuberay"  # ../shared/schemas/kuberay from the repo root
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def run_stack(state_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python infra/local/stack.py --state-dir DIR ARGS` with this interpreter; output captured."""
    return subprocess.run([sys.executable, str(STACK), "--state-dir", str(state_dir), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def stack_env(state_dir: Path) -> dict:
    """The test process's environment plus what `up` wrote to env.json (what `source .stack/env` gives)."""
    env = dict(os.environ)
    env.update(json.loads((state_dir / "env.json").read_text()))
    return env


def http_json(url: str, token: str | None = None, data: dict | None = None, timeout: float = 10) -> tuple[int, object]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, headers=headers, data=body, method="POST" if data is not None else "GET")
    try:
        with NO_PROXY.open(req, timeout=timeout) as r:
            raw = r.read().decode()
            return r.status, (json.loads(raw) if raw.strip() else None)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def session_members(sid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(entry))
    return out


def listening_sockets(pids: list[int]) -> list[tuple[str, int, int]]:
    """(local address, port, pid) of every TCP socket in LISTEN state owned by `pids` (Linux /proc)."""
    inode_pid = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if m:
                inode_pid[m.group(1)] = pid
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inode_pid:  # 0A = LISTEN
                addr, port = cols[1].split(":")
                found.append((_addr(addr), int(port, 16), inode_pid[cols[9]]))
    return found


def _addr(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]  # /proc stores each 32-bit word in host order
    b = b"".join(words)
    if b[:12] == b"\0" * 10 + b"\xff\xff":  # IPv4-mapped ::ffff:a.b.c.d
        return "::ffff:" + ".".join(str(x) for x in b[12:])
    return ":".join(b[i:i + 2].hex() for i in range(0, 16, 2))


LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "0000:0000:0000:0000:0000:0000:0000:0001"}
