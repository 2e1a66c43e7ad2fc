#!/usr/bin/env python3
"""The local development stack on 127.0.0.1: an S3 endpoint (moto), an MLflow tracking server and a Ray head.

    python infra/local/stack.py up       # start what is not running, wait until healthy, write .stack/env
    python infra/local/stack.py status   # table of services; exit 0 only when all are healthy
    python infra/local/stack.py down     # stop everything this stack started, newest first
    source .stack/env                    # then: ray job submit --working-dir . -- python jobs/train.py ...

Everything lives in the state dir (default .stack/ in the repository root): one PID file and one JSON record
per service, logs/, the MLflow SQLite store and artifacts, Ray's temp dir, the Ray auth token and `env`
(a sourceable file with RAY_ADDRESS, MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL and moto's dummy credentials).
Ports are free ports picked at start and kept across restarts when still free. Every server binds
127.0.0.1 only. Ray runs with token authentication; the token is a file in the state dir (mode 0600) that
`env` points to. `down` keeps data (SQLite store, artifacts); moto keeps its buckets in memory only.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import procs  # beside this script (run as `python infra/local/stack.py`)
from lare import rayenv  # the Ray settings the jobs use too (the project is installed: make install)

REPO = Path(__file__).resolve().parents[2]
HOST = rayenv.HOST  # every server binds this address only
BUCKET = "lare-dev"
# moto accepts any credentials; these are the conventional dummies, not secrets.
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
# Real credentials or profiles from the caller's shell are not handed to the dev stack (it only talks to moto).
DROP_ENV = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
            "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")
# Ray socket paths must stay under the 107-byte AF_UNIX limit: Ray appends about this much to its temp dir.
RAY_SOCKET_SUFFIX = len("/session_2026-01-01_00-00-00_000000_1234567/sockets/plasma_store")
# Direct HTTP opener: health checks must never go through a proxy from the environment.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def bin_path(name: str) -> str:
    """The console script next to this interpreter (the project's environment), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"stack: '{name}' not found next to {sys.executable} nor on PATH: install the project (make install)")
    return found


def free_port(preferred: int = 0) -> int:
    """`preferred` when it can be bound on 127.0.0.1, else a port the kernel picks."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            # As the servers do: a port whose old connections linger in TIME_WAIT is free to listen on.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")


def http_get(url: str, timeout: float = 2.0, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with HTTP.open(req, timeout=timeout) as r:
            return r.status, r.read(2048).decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (OSError, ValueError) as e:
        return 0, str(e)


# ---- state ------------------------------------------------------------------------------------------
class State:
    def __init__(self, root: Path):
        self.root = root

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        # A nested .gitignore keeps the whole folder out of git and out of `ray job submit --working-dir .`
        # uploads (Ray honours .gitignore files while packaging), even before the root .gitignore lists it.
        gi = self.root / ".gitignore"
        if not gi.exists():
            gi.write_text("# written by infra/local/stack.py: everything here is local state\n*\n")

    def record_path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def pid_path(self, name: str) -> Path:
        return self.root / f"{name}.pid"

    def load(self, name: str) -> dict | None:
        try:
            return json.loads(self.record_path(name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def save(self, rec: dict) -> None:
        tmp = self.record_path(rec["name"]).with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rec, indent=2))
        tmp.replace(self.record_path(rec["name"]))
        self.pid_path(rec["name"]).write_text(f"{rec['pid']}\n")

    def forget(self, name: str) -> None:
        for p in (self.record_path(name), self.pid_path(name)):
            p.unlink(missing_ok=True)

    def orphan_pid(self, name: str) -> int | None:
        """A PID file without its record: we cannot prove the process is ours, so it is never signalled."""
        if self.record_path(name).exists() or not self.pid_path(name).exists():
            return None
        try:
            return int(self.pid_path(name).read_text().strip())
        except ValueError:
            return -1


# ---- services ---------------------------------------------------------------------------------------
@dataclass
class Ctx:
    """What one `up` decided: the state dir, ports of every service, settings."""

    state: State
    ports: dict = field(default_factory=dict)
    artifacts: str = "local"
    num_cpus: int | None = None
    object_store_mb: int = 0
    ray_auth: bool = True
    token_path: Path | None = None
    ray_temp: Path | None = None

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.ports['moto']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.ports['mlflow']}"

    def artifact_destination(self) -> str:
        if self.artifacts == "s3":
            return f"s3://{BUCKET}/mlflow-artifacts"
        return str(self.state.root.resolve() / "mlartifacts")

    def base_env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
        env.update(DUMMY_AWS)
        no_proxy = ",".join(filter(None, [HOST, "localhost", env.get("NO_PROXY", "")]))
        env.update(NO_PROXY=no_proxy, no_proxy=no_proxy, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                   PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
        return env


def moto_cmd(ctx: Ctx):
    return [bin_path("moto_server"), "-H", HOST, "-p", str(ctx.ports["moto"])], ctx.base_env()


def moto_health(ctx: Ctx, rec: dict) -> tuple[bool, str]:
    code, _ = http_get(f"http://{HOST}:{rec['ports']['moto']}/moto-api/")
    return code == 200, f"GET /moto-api/ -> {code or 'no answer'}"


def mlflow_cmd(ctx: Ctx):
    db = ctx.state.root.resolve() / "mlflow.db"
    argv = [bin_path("mlflow"), "server", "--backend-store-uri", f"sqlite:///{db}",
            "--artifacts-destination", ctx.artifact_destination(), "--host", HOST,
            "--port", str(ctx.ports["mlflow"]), "--workers", "1"]
    env = ctx.base_env()
    env.update(MLFLOW_S3_ENDPOINT_URL=ctx.s3_url, AWS_ENDPOINT_URL=ctx.s3_url,
               # Server-side job execution (GenAI evaluation jobs) is not used by LaRe; it forks about
               # eight worker processes (~700 MB) that a laptop stack does not need.
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    return argv, env


def mlflow_health(ctx: Ctx, rec: dict) -> tuple[bool, str]:
    code, body = http_get(f"http://{HOST}:{rec['ports']['mlflow']}/health")
    return code == 200 and body.strip() == "OK", f"GET /health -> {code or 'no answer'}"


RAY_PORTS = ("gcs", "dashboard", "client", "node_manager", "object_manager", "agent_http", "agent_grpc",
             "runtime_env_agent", "metrics")


def ray_cmd(ctx: Ctx):
    p = ctx.ports["ray"]
    argv = [bin_path("ray"), "start", "--head", "--block", "--disable-usage-stats",
            f"--node-ip-address={HOST}", f"--port={p['gcs']}", f"--temp-dir={ctx.ray_temp}",
            "--include-dashboard=true", f"--dashboard-host={HOST}", f"--dashboard-port={p['dashboard']}",
            f"--ray-client-server-port={p['client']}", f"--node-manager-port={p['node_manager']}",
            f"--object-manager-port={p['object_manager']}", f"--dashboard-agent-listen-port={p['agent_http']}",
            f"--dashboard-agent-grpc-port={p['agent_grpc']}", f"--runtime-env-agent-port={p['runtime_env_agent']}",
            f"--metrics-export-port={p['metrics']}"]
    if ctx.num_cpus is not None:
        argv.append(f"--num-cpus={ctx.num_cpus}")
    if ctx.object_store_mb:
        argv.append(f"--object-store-memory={ctx.object_store_mb * 1024 * 1024}")
    env = ctx.base_env()
    # Jobs submitted to this head inherit its environment: they find MLflow and S3 without extra flags.
    env.update(RAY_ADDRESS=f"{HOST}:{p['gcs']}", MLFLOW_TRACKING_URI=ctx.mlflow_url,
               AWS_ENDPOINT_URL=ctx.s3_url, MLFLOW_S3_ENDPOINT_URL=ctx.s3_url)
    env.update(ray_auth_env(ctx))
    # Loopback for what runs inside the head too: gloo's interface and the worker setup hook that keeps the
    # torch.distributed store of a job's Ray Train workers on 127.0.0.1 (the raylet's workers inherit this).
    env.update(rayenv.environment())
    # On SIGTERM Ray drains the node (for Serve) for up to 30 s, waiting for idle workers to return their leases.
    # A dev head has no Serve traffic to move: a short drain keeps `down` quick after jobs ran.
    env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "3")
    return argv, env


def ray_auth_env(ctx: Ctx) -> dict:
    if not ctx.ray_auth:
        return {"RAY_AUTH_MODE": "disabled"}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(ctx.token_path)}


def ray_health(ctx: Ctx, rec: dict) -> tuple[bool, str]:
    p = rec["ports"]["ray"]
    base = f"http://{HOST}:{p['dashboard']}"
    code, body = http_get(f"{base}/api/gcs_healthz")
    if code != 200:
        return False, f"GCS health -> {code or 'no answer'}"
    code, _ = http_get(f"http://{HOST}:{p['agent_http']}/api/local_raylet_healthz")
    if code != 200:
        return False, f"raylet health -> {code or 'no answer'}"
    token = None
    if rec.get("token_path"):
        try:
            token = Path(rec["token_path"]).read_text().strip()
        except FileNotFoundError:
            return False, "auth token file missing"
    code, body = http_get(f"{base}/api/version", token=token)  # the job server, through token auth
    if code != 200:
        return False, f"job API /api/version -> {code or 'no answer'}"
    return True, "GCS, raylet and job API healthy"


@dataclass
class Service:
    name: str
    cmd: object
    health: object
    timeout: float  # seconds to become healthy on this 2-core machine, with margin


SERVICES = [Service("moto", moto_cmd, moto_health, 30), Service("mlflow", mlflow_cmd, mlflow_health, 120),
            Service("ray", ray_cmd, ray_health, 120)]
BY_NAME = {s.name: s for s in SERVICES}


def endpoint(rec: dict) -> str:
    if rec["name"] == "ray":
        p = rec["ports"]["ray"]
        return f"gcs {HOST}:{p['gcs']}  dashboard http://{HOST}:{p['dashboard']}"
    return f"http://{HOST}:{rec['ports'][rec['name']]}"


def service_state(ctx: Ctx, svc: Service) -> tuple[str, dict | None, str]:
    """(healthy | unhealthy | stopped | stale, record, detail)."""
    rec = ctx.state.load(svc.name)
    orphan = ctx.state.orphan_pid(svc.name)
    if rec is None:
        if orphan is not None:
            return "stale", None, f"PID file without record (pid {orphan}); not ours to signal"
        return "stopped", None, ""
    if not procs.is_ours(rec["pid"], rec["start_token"]):
        left = procs.leftovers(rec["pid"], rec["start_token"])
        extra = f"; {len(left)} of its helper processes still running" if left else ""
        return "stale", rec, f"pid {rec['pid']} is gone or is another process{extra}"
    ok, detail = svc.health(ctx, rec)
    return ("healthy" if ok else "unhealthy"), rec, detail


# ---- commands ---------------------------------------------------------------------------------------
def make_ctx(args) -> Ctx:
    state = State(Path(args.state_dir))
    return Ctx(state=state, artifacts=getattr(args, "artifacts", "local"), num_cpus=getattr(args, "num_cpus", None),
               object_store_mb=getattr(args, "object_store_mb", 0), ray_auth=not getattr(args, "no_ray_auth", False))


def ray_temp_dir(state: State, previous: dict | None) -> Path:
    if previous and previous.get("temp_dir"):
        return Path(previous["temp_dir"])
    temp = state.root.resolve() / "ray"
    if len(str(temp)) + RAY_SOCKET_SUFFIX > 100:  # a deep checkout: socket paths would not fit
        return Path(tempfile.mkdtemp(prefix="lare-ray-"))
    return temp


def plan_ports(ctx: Ctx, recs: dict) -> None:
    """Keep each service's previous ports when free (URLs stay stable across restarts)."""
    for name in ("moto", "mlflow"):
        prev = (recs.get(name) or {}).get("ports", {}).get(name, 0)
        ctx.ports[name] = prev if recs.get(name, {}).get("_running") else free_port(prev)
    prev_ray = (recs.get("ray") or {}).get("ports", {}).get("ray", {})
    if recs.get("ray", {}).get("_running"):
        ctx.ports["ray"] = prev_ray
    else:
        taken: set[int] = set()
        ports = {}
        for key in RAY_PORTS:
            port = free_port(prev_ray.get(key, 0))
            while port in taken:
                port = free_port()
            taken.add(port)
            ports[key] = port
        ctx.ports["ray"] = ports


def wait_healthy(ctx: Ctx, svc: Service, rec: dict, proc=None) -> tuple[bool, str]:
    deadline = time.monotonic() + svc.timeout
    detail = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False, f"exited with status {proc.returncode}"
        if proc is None and not procs.is_ours(rec["pid"], rec["start_token"]):
            return False, "process is gone"
        ok, detail = svc.health(ctx, rec)
        if ok:
            return True, detail
        time.sleep(0.5)
    return False, f"not healthy after {svc.timeout:.0f} s ({detail})"


def log_tail(path: str, lines: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def create_bucket(ctx: Ctx) -> None:
    """PUT /bucket on moto (it needs no signature); 409 = it already exists."""
    req = urllib.request.Request(f"{ctx.s3_url}/{BUCKET}", method="PUT", data=b"")
    try:
        HTTP.open(req, timeout=5).close()
    except urllib.error.HTTPError as e:
        if e.code != 409:
            raise


def env_vars(ctx: Ctx, ray_rec: dict) -> dict:
    p = ray_rec["ports"]["ray"]
    env = {
        "RAY_ADDRESS": f"{HOST}:{p['gcs']}",
        "RAY_API_SERVER_ADDRESS": f"http://{HOST}:{p['dashboard']}",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "MLFLOW_TRACKING_URI": ctx.mlflow_url,
        "AWS_ENDPOINT_URL": ctx.s3_url,
        "MLFLOW_S3_ENDPOINT_URL": ctx.s3_url,
        **DUMMY_AWS,
        "LARE_S3_BUCKET": BUCKET,
        "NO_PROXY": ",".join(filter(None, [HOST, "localhost", os.environ.get("NO_PROXY", "")])),
    }
    env["no_proxy"] = env["NO_PROXY"]
    if ray_rec.get("token_path"):
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=ray_rec["token_path"])
    else:
        env.update(RAY_AUTH_MODE="disabled")
    return env


def write_env(ctx: Ctx, env: dict) -> Path:
    path = ctx.state.root / "env"
    lines = ["# Written by infra/local/stack.py up. Load it with:  source .stack/env",
             "# The AWS keys are moto's dummies; the Ray token is in the file RAY_AUTH_TOKEN_PATH names."]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    path.write_text("\n".join(lines) + "\n")
    (ctx.state.root / "env.json").write_text(json.dumps(env, indent=2))
    return path


def cmd_up(args) -> int:
    ctx = make_ctx(args)
    ctx.state.init()
    recs, started, failed = {}, [], None
    for svc in SERVICES:  # find what runs already and drop stale records
        st, rec, detail = service_state(ctx, svc)
        if st == "stale":
            if rec is not None and procs.stop_leftovers(rec["pid"], rec["start_token"]):
                detail += " (stopped)"
            print(f"{svc.name}: stale PID file removed ({detail})")
            ctx.state.forget(svc.name)
            rec = rec and {**rec, "_running": False}
        elif rec is not None:
            rec["_running"] = True
        recs[svc.name] = rec or {}
    plan_ports(ctx, recs)
    running_ray = recs["ray"].get("_running")
    if running_ray:
        ctx.token_path = Path(recs["ray"]["token_path"]) if recs["ray"].get("token_path") else None
        ctx.ray_auth = ctx.token_path is not None
        ctx.ray_temp = Path(recs["ray"]["temp_dir"])
    else:
        ctx.ray_temp = ray_temp_dir(ctx.state, recs["ray"])
        if ctx.ray_auth:
            ctx.token_path = ctx.state.root.resolve() / "ray_auth_token"
            ctx.token_path.write_text(secrets.token_hex(32))  # 256 bits, as `ray get-auth-token --generate`
            ctx.token_path.chmod(0o600)

    if recs["mlflow"].get("_running") and recs["mlflow"].get("artifacts") != ctx.artifacts:
        print(f"mlflow: already running with --artifacts {recs['mlflow'].get('artifacts')}; "
              f"run `down` first to switch to {ctx.artifacts}")
    wanted = {"num_cpus": args.num_cpus, "object_store_mb": args.object_store_mb, "auth": not args.no_ray_auth}
    if running_ray and recs["ray"].get("settings", wanted) != wanted:
        print(f"ray: started with {recs['ray'].get('settings')}, not {wanted}: run `down` first to apply them")
    if running_ray and recs["ray"].get("env_urls") != [ctx.mlflow_url, ctx.s3_url]:
        print("ray: WARNING its jobs inherit MLflow/S3 URLs from its start "
              f"({recs['ray'].get('env_urls')}); they changed: run `down` and `up` to refresh them")

    for svc in SERVICES:
        if recs[svc.name].get("_running"):
            continue
        argv, env = svc.cmd(ctx)
        log = ctx.state.root / "logs" / f"{svc.name}.log"
        proc = procs.spawn(argv, env, log, cwd=REPO)
        rec = {"name": svc.name, "pid": proc.pid, "start_token": procs.start_token(proc.pid), "argv": argv,
               "ports": {svc.name: ctx.ports[svc.name]}, "log": str(log), "started_at": time.time()}
        if svc.name == "mlflow":
            rec["artifacts"] = ctx.artifacts
            rec["artifact_destination"] = ctx.artifact_destination()
        if svc.name == "ray":
            rec.update(temp_dir=str(ctx.ray_temp), token_path=str(ctx.token_path) if ctx.ray_auth else None,
                       env_urls=[ctx.mlflow_url, ctx.s3_url], settings=wanted)
        ctx.state.save(rec)
        started.append((svc, rec, proc))
        print(f"{svc.name}: starting (pid {proc.pid}, log {log})", flush=True)

    for name in ("moto", "mlflow", "ray"):  # wait for everything: started in parallel, checked in order
        svc = BY_NAME[name]
        mine = next(((r, p) for s, r, p in started if s.name == name), None)
        rec, proc = mine if mine else (recs[name], None)
        ok, detail = wait_healthy(ctx, svc, rec, proc)
        if not ok:
            failed = (svc, rec, detail)
            break
        print(f"{name}: healthy ({detail})" if mine else f"{name}: already running (pid {rec['pid']})", flush=True)
        if name == "moto":
            create_bucket(ctx)

    if failed:
        svc, rec, detail = failed
        print(f"\n{svc.name}: FAILED: {detail}\n--- last lines of {rec['log']} ---\n{log_tail(rec['log'])}\n---",
              file=sys.stderr)
        for s, r, _ in reversed(started):  # undo this call only; what ran before stays up
            print(f"{s.name}: {procs.stop(r['pid'], r['start_token'])}", file=sys.stderr)
            ctx.state.forget(s.name)
            if s.name == "ray" and r.get("token_path"):
                Path(r["token_path"]).unlink(missing_ok=True)
        return 1
    ray_rec = ctx.state.load("ray")
    path = write_env(ctx, env_vars(ctx, ray_rec))
    print(f"\nstack is up. Load its environment with:  source {path}")
    print_table(ctx)
    return 0


def cmd_status(args) -> int:
    ctx = make_ctx(args)
    if not ctx.state.root.exists():
        print(f"no stack state in {ctx.state.root}")
        return 3
    rows = print_table(ctx, as_json=getattr(args, "json", False))
    return 0 if all(r["state"] == "healthy" for r in rows) else 3


def print_table(ctx: Ctx, as_json: bool = False) -> list[dict]:
    rows = []
    for svc in SERVICES:
        st, rec, detail = service_state(ctx, svc)
        rows.append({"service": svc.name, "state": st, "pid": rec["pid"] if rec else None,
                     "endpoint": endpoint(rec) if rec else "", "log": rec["log"] if rec else "", "detail": detail})
    if as_json:
        print(json.dumps(rows, indent=2))
        return rows
    fmt = "{:<8} {:<10} {:>8}  {:<58} {}"
    print(fmt.format("SERVICE", "STATE", "PID", "ENDPOINT", "DETAIL"))
    for r in rows:
        print(fmt.format(r["service"], r["state"], r["pid"] or "-", r["endpoint"] or "-", r["detail"]))
    return rows


def cmd_down(args) -> int:
    ctx = make_ctx(args)
    if not ctx.state.root.exists():
        print(f"no stack state in {ctx.state.root}: nothing to stop")
        return 0
    code = 0
    for svc in reversed(SERVICES):  # Ray first (jobs write to MLflow and S3), moto last
        rec = ctx.state.load(svc.name)
        orphan = ctx.state.orphan_pid(svc.name)
        if rec is None:
            if orphan is not None:
                print(f"{svc.name}: removed a PID file without record (pid {orphan}); nothing signalled")
                ctx.state.forget(svc.name)
            continue
        if not procs.is_ours(rec["pid"], rec["start_token"]):
            n = procs.stop_leftovers(rec["pid"], rec["start_token"])
            extra = f"; stopped {n} helper processes it left behind" if n else ""
            print(f"{svc.name}: stale PID file removed (pid {rec['pid']} is gone or is another process{extra})")
            ctx.state.forget(svc.name)
            continue
        result = procs.stop(rec["pid"], rec["start_token"], grace=args.timeout)
        print(f"{svc.name}: {result} (pid {rec['pid']})", flush=True)
        if result.startswith("still alive"):
            code = 1
            continue
        ctx.state.forget(svc.name)
        if svc.name == "ray" and rec.get("token_path"):
            Path(rec["token_path"]).unlink(missing_ok=True)
    for name in ("env", "env.json"):
        (ctx.state.root / name).unlink(missing_ok=True)
    return code


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state-dir", default=os.environ.get("LARE_STACK_DIR", str(REPO / ".stack")),
                    help="where PID files, logs, data and env live (default: .stack/ in the repo, or $LARE_STACK_DIR)")
    sub = ap.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start missing services and wait until all are healthy")
    up.add_argument("--artifacts", choices=("local", "s3"), default="local",
                    help="MLflow artifact store: a local folder in the state dir (kept across restarts), or "
                         f"s3://{BUCKET}/mlflow-artifacts on moto (in memory: lost at down)")
    up.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of the Ray head (default: all cores)")
    up.add_argument("--object-store-mb", type=int, default=0, help="Ray object store size in MiB (default: Ray's)")
    up.add_argument("--no-ray-auth", action="store_true",
                    help="start Ray with RAY_AUTH_MODE=disabled (any local user could then submit jobs)")
    st = sub.add_parser("status", help="print the services; exit 0 when all are healthy, 3 otherwise")
    st.add_argument("--json", action="store_true")
    down = sub.add_parser("down", help="stop the services this stack started (by PID, newest first)")
    down.add_argument("--timeout", type=float, default=30.0, help="seconds each service gets to exit after SIGTERM")
    args = ap.parse_args(argv)
    return {"up": cmd_up, "status": cmd_status, "down": cmd_down}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
