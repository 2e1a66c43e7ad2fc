"""MLflow: one run per training, created by the driver and re-attached on resume; rank 0 logs into it.

A tracking server that is down at start is a clear error within seconds. An outage mid-run is not fatal:
metrics are buffered, a warning is printed, and they are sent when the server answers again.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from lare.config import Config
from lare.storage import read_text, redact, redact_obj, write_text

log = logging.getLogger("lare.tracking")


class TrackingUnavailable(RuntimeError):
    pass


def resolve_uri(cfg: Config) -> str:
    return cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float) -> None:
    """Fail fast, naming the server, when an HTTP tracking server does not answer."""
    if uri.startswith(("http://", "https://")):
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(_health_request(uri), timeout=min(3.0, timeout)) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError) as e:
                error = e
            time.sleep(0.5)
        raise TrackingUnavailable(
            f"MLflow tracking server {redact(uri)} did not answer within {timeout:.0f}s ({redact(error)}). Start it "
            "(`make up` starts one on 127.0.0.1) or point tracking.uri / MLFLOW_TRACKING_URI at a running one; "
            "tracking.enabled=false trains without tracking.")
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)


def _health_request(uri: str) -> urllib.request.Request:
    """GET <uri>/health; user info in the URI (http://user:password@host) becomes a Basic header (urllib would
    take it for part of the host name)."""
    parts = urllib.parse.urlsplit(uri.rstrip("/") + "/health")
    if parts.username is None:
        return urllib.request.Request(parts.geturl())
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    user = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    return urllib.request.Request(parts._replace(netloc=netloc).geturl(),
                                  headers={"Authorization": "Basic " + base64.b64encode(user.encode()).decode()})


def quick_client_env() -> None:
    """MLflow retries an HTTP call for minutes by default; training must not stall on an outage."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def sanitize(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", name)


# ---- redaction (lare.storage.redact / redact_obj): everything written to MLflow, exports and reports ---------------
def redacted_config(cfg: Config) -> Config:
    """The config as it may be shown: logged to MLflow (params, config.yaml) and written into exports."""
    return Config.from_dict(redact_obj(cfg.to_dict()))


def flat_params(cfg: Config) -> dict[str, str]:
    return {sanitize(k): redact(v)[:6000] for k, v in redacted_config(cfg).flat().items()}


def experiment_id(client, uri: str, name: str, artifact_location: str = "") -> str:
    """The experiment called `name`, created when missing (with a SQLite store, its artifacts next to the database)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = artifact_location or None
    if artifacts is None and uri.startswith("sqlite:///"):
        artifacts = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=artifacts)


def ui_hint(uri: str, experiment: str = "") -> str:
    """How a person opens this run's tracking store (never with its credentials)."""
    if not uri.startswith("sqlite"):
        return f"MLflow UI: {redact(uri)}"
    where = f"  (then open http://127.0.0.1:5000{', experiment ' + experiment if experiment else ''})"
    # With the interpreter that ran the job: mlflow is installed there, not necessarily on PATH.
    return f"MLflow UI: {sys.executable} -m mlflow ui --backend-store-uri {redact(uri)} --host 127.0.0.1 --port 5000{where}"


def open_run(cfg: Config, uri: str, run_id_uri: str, parent_run_id: str = "", experiment: str | None = None) -> str:
    """The MLflow run of this training: re-attached when the experiment ran before (resume), else new.
    parent_run_id nests it (a Tune trial under its sweep)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp_id = experiment_id(client, uri, experiment or cfg.train.experiment, cfg.tracking.artifact_location)
    previous = (read_text(run_id_uri) or "").strip()
    if previous:
        try:
            run = client.get_run(previous)
            if run.info.experiment_id == exp_id:
                client.update_run(previous, status="RUNNING")
                return previous
        except mlflow.exceptions.MlflowException:
            pass
    tags = {"lare.paradigm": cfg.method.paradigm}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=cfg.tracking.run_name or cfg.train.experiment, tags=tags)
    params = list(flat_params(cfg).items())
    from mlflow.entities import Param

    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params[i:i + 100]])
    write_text(run_id_uri, run.info.run_id)
    return run.info.run_id


class RunLogger:
    """Rank 0's handle on the run: buffered metrics, artifacts, system metrics; never raises on an outage."""

    def __init__(self, uri: str, run_id: str, system_metrics: bool = True, resumed: bool = False):
        quick_client_env()
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri, self.run_id = uri, run_id
        if redact(uri) != uri:  # MLflow prints "View run ... at: <tracking URI>/..." when a run ends
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        self.client = MlflowClient(uri)
        self.pending: list = []
        # After a restart the steps since the checkpoint are replayed (bit for bit on CPU): log each step once.
        self.resumed = resumed
        self.logged_through: dict[str, int] = {}
        self.last_warning = 0.0
        self.active = None
        if system_metrics:
            try:
                mlflow.set_tracking_uri(uri)
                self.active = mlflow.start_run(run_id=run_id, log_system_metrics=True)
            except Exception as e:  # system metrics are a nicety
                self._warn(f"system metrics off: {e}")

    def _warn(self, message: str) -> None:
        if time.monotonic() - self.last_warning > 30:
            log.warning("MLflow: %s", message)
            self.last_warning = time.monotonic()

    def metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for k, v in values.items():
            if v is None or (isinstance(v, float) and math.isnan(v)) or step <= self._logged_through(sanitize(k)):
                continue
            self.pending.append(Metric(sanitize(k), float(v), now, step))
        self.pending = self.pending[-200_000:]  # bounded while the server is away
        self.flush()

    def _logged_through(self, key: str) -> int:
        """The last step of `key` already in the run (asked once per key, and only after a restart)."""
        if not self.resumed:
            return -1
        if key not in self.logged_through:
            try:
                self.logged_through[key] = max((m.step for m in self.client.get_metric_history(self.run_id, key)),
                                               default=-1)
            except Exception as e:  # unreachable: a duplicate point is better than a lost one
                self._warn(f"could not read the history of {key}: {e}")
                return -1
        return self.logged_through[key]

    def tags(self, values: dict[str, str]) -> None:
        """Facts of the run that a resumed attempt may restate differently (tags can be overwritten; params cannot)."""
        try:
            for k, v in values.items():
                self.client.set_tag(self.run_id, k, v)
        except Exception as e:
            self._warn(f"could not set tags {sorted(values)}: {e}")

    def flush(self) -> bool:
        try:
            while self.pending:
                self.client.log_batch(self.run_id, metrics=self.pending[:1000])
                self.pending = self.pending[1000:]
            return True
        except Exception as e:
            self._warn(f"tracking server unreachable, {len(self.pending)} metric values kept for later ({type(e).__name__}: {e})")
            return False

    def artifacts(self, local: str | Path, artifact_path: str | None = None, retries: int = 3) -> bool:
        """Whether it was logged (after `retries` attempts it is given up, with a warning)."""
        for attempt in range(retries):
            try:
                if Path(local).is_dir():
                    self.client.log_artifacts(self.run_id, str(local), artifact_path)
                else:
                    self.client.log_artifact(self.run_id, str(local), artifact_path)
                return True
            except Exception as e:
                self._warn(f"artifact {local} not logged (attempt {attempt + 1}/{retries}): {e}")
                time.sleep(2 * (attempt + 1))
        return False

    def register(self, name: str, artifact_path: str = "model") -> str | None:
        """The MLflow model this run logged at `artifact_path` as a new version of registered model `name` (created
        when missing); returns models:/NAME/VERSION, or None with a warning when registering fails (the run and its
        artifacts stay). A run registers once: a job that runs its end again (a restart after publishing) gets its
        version back."""
        from mlflow.tracking import MlflowClient

        try:
            # The registry explicitly: MLflow's own default is the process-wide registry URI, not this run's store.
            registry = MlflowClient(self.uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or self.uri)
            source = f"{self.client.get_run(self.run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
            mine = [v for v in registry.search_model_versions(f"name = '{name}' and run_id = '{self.run_id}'")
                    if v.source == source]
            if mine:
                return f"models:/{name}/{mine[0].version}"
            if not registry.search_registered_models(f"name = '{name}'"):
                registry.create_registered_model(name)
            # The run's artifact location as the source, as mlflow.register_model does for a model in run artifacts
            version = registry.create_model_version(name, source, run_id=self.run_id).version
            return f"models:/{name}/{version}"
        except Exception as e:
            log.warning("MLflow: the model of run %s was not registered as %r: %s", self.run_id, name, redact(str(e)))
            return None

    def close(self, status: str = "FINISHED") -> None:
        self.flush()
        try:
            if self.active is not None:
                import mlflow

                mlflow.end_run(status=status)
            else:
                self.client.set_terminated(self.run_id, status=status)
        except Exception as e:
            self._warn(f"could not close the run: {e}")
