"""MLflow tracking for a training job, logged from rank 0 with `MlflowClient` (no global run state).

One MLflow run per training job: rank 0 creates it, its id goes into every checkpoint, and a resumed
job (a restarted worker group or a re-run with the same name) continues it. Tracking never stops
training: if the server cannot be reached, the first failure is reported once and every later call
is skipped.

Where runs go: `tracking.uri`, else `$MLFLOW_TRACKING_URI`, else a sqlite store in the run
directory (`{run_dir}/mlflow.db`, artifacts in `{run_dir}/mlartifacts`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines import storage

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
# A server that is gone must not stall the step loop for minutes of retries with backoff.
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def resolve_uri(configured: str | None, run_dir: str) -> str:
    """The tracking URI to use: configured, then $MLFLOW_TRACKING_URI, then sqlite in the run directory."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if storage.is_remote(run_dir):
        raise ValueError(
            f"the run directory {run_dir} is remote, where a sqlite MLflow store cannot live; "
            "set tracking.uri or MLFLOW_TRACKING_URI to your MLflow server"
        )
    local = Path(run_dir.removeprefix("file://")).resolve()
    local.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{local / 'mlflow.db'}"


def reachable(uri: str, timeout: float = 5.0) -> str | None:
    """None if an http(s) tracking server answers its health check (other stores are local), else why not."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered: reachable, whatever the status
    except OSError as e:
        return str(getattr(e, "reason", e))


def flat_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config dict -> {"optim.init_lr": "0.0001", "data.train.0.name": "webvid", ...}."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_params(value, f"{name}."))
        elif isinstance(value, list | tuple) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                flat.update(flat_params(item, f"{name}.{i}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


class Tracker:
    """Best-effort MLflow logging for one run; `enabled` turns False at the first unreachable call."""

    def __init__(self, uri: str, run_id: str | None, experiment_id: str | None = None):
        from mlflow import MlflowClient

        self.uri, self.run_id, self.experiment_id = uri, run_id, experiment_id
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.enabled = run_id is not None

    @classmethod
    def start(cls, uri: str, experiment: str, run_name: str, run_id: str | None, artifact_root: str | None) -> Tracker:
        """Continue `run_id`, or create a run; a disabled tracker if the server is unreachable."""
        for key, value in HTTP_SETTINGS.items():
            os.environ.setdefault(key, value)
        why = reachable(uri)
        if why is not None:
            log.warning("MLflow at %s is unreachable (%s): training goes on WITHOUT tracking", uri, why)
            return cls(uri, None)
        tracker = cls(uri, None)
        try:
            tracker._open(experiment, run_name, run_id, artifact_root)
        except Exception as e:  # any MLflow/HTTP/database error: report once, train on
            log.warning("MLflow at %s failed (%s): training goes on WITHOUT tracking", uri, e)
            tracker.enabled = False
        return tracker

    def _open(self, experiment: str, run_name: str, run_id: str | None, artifact_root: str | None) -> None:
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_root)
        else:
            self.experiment_id = found.experiment_id
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            log.info("MLflow: continuing run %s at %s", run_id, self.uri)
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=run_name).info.run_id
            log.info("MLflow: created run %s (%s) at %s", run_id, run_name, self.uri)
        self.run_id, self.enabled = run_id, True

    def _call(self, what: str, fn, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            self.enabled = False
            log.warning("MLflow %s failed (%s): training goes on, tracking is off from here", what, e)
            return None

    def log_params(self, params: Mapping[str, str]) -> None:
        """Params not yet on the run (a resumed run keeps its first values; changed ones are listed)."""
        run = self._call("get_run", self.client.get_run, self.run_id)
        if run is None:
            return
        existing = run.data.params
        changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
        if changed:
            log.warning("MLflow params keep their first values; this attempt changed %s", ", ".join(changed))
        from mlflow.entities import Param

        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), PARAMS_PER_BATCH):
            self._call("log_params", self.client.log_batch, self.run_id, params=new[i : i + PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._call("log_metrics", self.client.log_batch, self.run_id, metrics=batch)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self._call("log_artifact", self.client.log_artifact, self.run_id, local_path, artifact_path)

    def log_text(self, text: str, name: str, artifact_path: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text)
            self.log_artifact(str(path), artifact_path)

    def register(self, name: str, artifact_path: str, description: str) -> int | None:
        """Register the run's `artifact_path` folder as a new version of model `name`; its version."""
        if not self.enabled:
            return None
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):  # already registered by an earlier run
            self.client.create_registered_model(name)
        found = self._call("search_model_versions", self.client.search_model_versions, f"name='{name}'")
        mine = [v for v in found or [] if v.run_id == self.run_id and v.source.endswith(f"/{artifact_path}")]
        if mine:  # a re-run of a finished job: its weights are registered already
            return int(mine[0].version)
        version = self._call(
            "register_model",
            self.client.create_model_version,
            name,
            source=f"runs:/{self.run_id}/{artifact_path}",
            run_id=self.run_id,
            description=description,
        )
        return int(version.version) if version is not None else None

    def finish(self, status: str) -> None:
        """FINISHED or FAILED, as it happened."""
        self._call("set_terminated", self.client.set_terminated, self.run_id, status)
