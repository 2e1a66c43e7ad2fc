"""The environment LaRe starts Ray's processes with: every socket on 127.0.0.1, and no secret in Ray's logs.

Loopback (a Ray started by a job through ensure_ray below, and the head of infra/local/stack.py):
- Ray binds its gRPC servers (GCS, raylet, object manager, every worker and driver) to 127.0.0.1 only when the node IP
  is exactly 127.0.0.1, else to the wildcard address. It rewrites 127.0.0.1 to the machine's own address unless
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set *before* `import ray` in that process; apply() also corrects the
  value in a process that imported ray already.
- torch.distributed's TCPStore, the rendezvous Ray Train opens on rank 0 at MASTER_ADDR:MASTER_PORT, always listens
  on the wildcard address (torch has no setting for it). worker_setup() runs in every Ray worker (Ray's worker
  process setup hook, given through the environment) and makes rank 0 open that store on a socket bound to
  MASTER_ADDR when MASTER_ADDR is a loopback address (the node IP of a loopback Ray).
- gloo listens on the address of GLOO_SOCKET_IFNAME (else whatever the host name resolves to): set to the loopback
  interface. A local Ray is one node, so nothing needs another interface.

Secrets: environment variables given to Ray through `runtime_env` are written in clear to runtime_env_agent.log
under Ray's temp dir. Credentials therefore never go through runtime_env: a Ray started by the job inherits the
job's environment (raylet, then every worker); on a cluster they come from the cluster's own environment (the
stack's head, a Kubernetes Secret, an instance role). runtime_env_vars() keeps what may go through runtime_env.

This module is imported by every Ray worker (the setup hook): standard library only at import time.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import socket
import sys

HOST = "127.0.0.1"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# ray._private.ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR: what ray.init(runtime_env={"worker_process_setup_hook":
# ...}) sets for the workers. Given in the environment it reaches every worker of a raylet started with it, also the
# workers of jobs submitted to the stack (Ray ignores a driver's runtime_env under `ray job submit`).
SETUP_HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
SETUP_HOOK = "lare.rayenv.worker_setup"
LOOPBACK_IFNAME = "lo" if sys.platform.startswith("linux") else "lo0"

log = logging.getLogger("lare.rayenv")


def is_loopback(host: str | None) -> bool:
    return bool(host) and (host in LOOPBACK_HOSTS or host.startswith("127."))


def address_host(address: str) -> str:
    """The host of a Ray address: 127.0.0.1:6379, ray://127.0.0.1:10001, http://[::1]:8265 -> 127.0.0.1, ::1."""
    rest = address.split("://", 1)[-1].split("/", 1)[0]
    if rest.startswith("["):
        return rest[1:rest.find("]")]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest


def environment() -> dict[str, str]:
    """What a loopback Ray's processes need in their environment (set before the raylet starts: workers inherit it)."""
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "GLOO_SOCKET_IFNAME": LOOPBACK_IFNAME, SETUP_HOOK_ENV: SETUP_HOOK}


def apply() -> dict:
    """Prepare this process to start (or join) a Ray on 127.0.0.1; returns the extra ray.init() arguments.

    Sets environment() in os.environ (an interface or a setup hook the caller chose is kept), corrects Ray's
    already-imported constant, and patches this process's own torch rendezvous (Ray Train's local mode runs it
    in the driver)."""
    for key, value in environment().items():
        if key == "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER":
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # read when ray is imported: a later change of the variable is not seen
        constants.ENABLE_RAY_CLUSTER = False
    worker_setup()
    return {"_node_ip_address": HOST}


def ensure_ray(num_cpus: int | None = None, **init_kwargs) -> None:
    """Use the Ray already initialised; else connect to RAY_ADDRESS when set; else start a local Ray on 127.0.0.1
    only (a bare ray.init() could attach to someone else's cluster on this machine). Every job starts Ray here.

    Its workers inherit this process's environment, credentials included (never passed through runtime_env, which
    Ray logs). init_kwargs go to ray.init (e.g. _temp_dir, log_to_driver, object_store_memory)."""
    import ray

    if ray.is_initialized():
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout: lare/ and pipelines/
    address = os.environ.get("RAY_ADDRESS")
    if address:
        # A cluster on this machine's loopback (the local stack): this driver must stay on loopback too.
        loopback = apply() if is_loopback(address_host(address)) else {}
        # Workers on other machines get this checkout's packages shipped with the job (whatever is installed there).
        packages = [os.path.join(root, p) for p in ("lare", "pipelines") if os.path.isdir(os.path.join(root, p))]
        ray.init(address=address, runtime_env={"py_modules": packages}, **{**loopback, **init_kwargs})
        return
    loopback = apply()  # before ray.init: the raylet and every worker inherit the environment
    # Local workers inherit the environment: the packages import from any working directory, installed or not.
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root] + paths)
    ray.init(address="local", num_cpus=num_cpus, **{"include_dashboard": False, **loopback, **init_kwargs})


# ---- secrets ------------------------------------------------------------------------------------------------------
_SECRET_WORDS = {"SECRET", "PASSWORD", "PASSWD", "TOKEN", "CREDENTIAL", "CREDENTIALS", "APIKEY"}
_SECRET_PARTS = ("ACCESS_KEY", "API_KEY", "PRIVATE_KEY")


def is_secret_name(name: str) -> bool:
    """AWS_SECRET_ACCESS_KEY, AWS_ACCESS_KEY_ID, AWS_SESSION_TOKEN, MLFLOW_TRACKING_PASSWORD/_TOKEN, HF_TOKEN, ...
    (whole words: TOKENIZERS_PARALLELISM is not one)."""
    upper = name.upper()
    return bool(_SECRET_WORDS & set(upper.split("_"))) or any(p in upper for p in _SECRET_PARTS)


def runtime_env_vars(env: dict[str, str]) -> dict[str, str]:
    """The variables of `env` that may go through a runtime_env (Ray logs those): everything but credentials."""
    return {k: v for k, v in env.items() if not is_secret_name(k)}


# ---- the torch rendezvous on loopback (runs in Ray workers) --------------------------------------------------------
def worker_setup() -> None:
    """Ray's worker process setup hook: patch torch.distributed's rendezvous when (if ever) it is imported.
    Importing torch here would cost every Ray worker a second and hundreds of MB."""
    _after_import("torch.distributed.rendezvous", _patch_rendezvous)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs fn(module) right after `name` is first executed (a post-import hook)."""

    def __init__(self, name: str, fn):
        self.name, self.fn, self.busy = name, fn, False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name or self.busy:
            return None
        self.busy = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader, fn = spec.loader, self.fn

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                fn(module)

        spec.loader = Loader()
        return spec


def _after_import(name: str, fn) -> None:
    if name in sys.modules:
        fn(sys.modules[name])
    elif not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, fn))


def _patch_rendezvous(rendezvous) -> None:
    original = getattr(rendezvous, "_create_c10d_store", None)
    if original is None or getattr(original, "_lare_loopback", False):
        if original is None:
            log.warning("torch.distributed.rendezvous has no _create_c10d_store: the TCPStore keeps torch's binding")
        return

    def create_store(hostname, port, rank, world_size, timeout, use_libuv=True, *args, **kwargs):
        """Rank 0 hosts the store: on a socket bound to a loopback MASTER_ADDR (torch would listen on all addresses)."""
        agent_store = getattr(rendezvous, "_torchelastic_use_agent_store", lambda: False)()
        if rank != 0 or args or kwargs or agent_store or not is_loopback(hostname):
            return original(hostname, port, rank, world_size, timeout, use_libuv, *args, **kwargs)
        from torch.distributed import TCPStore

        host = HOST if hostname == "localhost" else hostname
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(socket.SOMAXCONN)
        except OSError:
            sock.close()
            raise
        # The store owns the listening socket from here (multi_tenant: later stores on this port reuse its server).
        return TCPStore(host_name=hostname, port=port, world_size=world_size, is_master=True, timeout=timeout,
                        multi_tenant=True, use_libuv=use_libuv, master_listen_fd=sock.detach())

    create_store._lare_loopback = True
    rendezvous._create_c10d_store = create_store


if __name__ == "__main__":  # `eval "$(python -m lare.rayenv)"` before a `ray start --node-ip-address=127.0.0.1` by hand
    import shlex

    print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in environment().items()))
