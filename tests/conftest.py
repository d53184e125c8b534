"""Session fixtures: real services on loopback, each started once and torn down cleanly.

- `s3_server` / `s3_bucket`: moto in server mode; s3fs, boto3 and Ray workers talk HTTP to it.
- `mlflow_server`: `mlflow server` with a sqlite backend.
- `ray_local`: a local Ray runtime (`ray.init`); `ray_cluster`: a `ray start --head` cluster
  for job submission.
- `sample_data` / `media_server`: generated media served over HTTP, with faults on purpose.
"""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Processes the tests start (Ray workers, CLI subprocesses) import this checkout's packages.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray >= 2.52 turns token authentication on by itself in some paths (a new local cluster, or a
# token left in ~/.ray); one explicit token for every cluster, client and job of the session keeps
# them agreeing, as a platform team's cluster would.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PYTHONUNBUFFERED", "1")
# img2dataset (CC3M) imports albumentations, which otherwise asks PyPI for updates in every Ray worker.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def s3_server(services_dir):
    """A moto S3 server. Its endpoint and test credentials are exported to this process's
    environment, so s3fs here and in every process started later (Ray workers) reach it."""
    from harness.services import moto_server

    with moto_server(services_dir / "moto") as server:
        saved = {k: os.environ.get(k) for k in server.env}
        os.environ.update(server.env)
        yield server
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket for one test: `s3://<name>`. Emptied and removed afterwards."""
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server.endpoint_url})
    name = f"test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    yield f"s3://{name}"
    fs.invalidate_cache()
    if fs.exists(name):
        fs.rm(name, recursive=True)


@pytest.fixture(scope="session")
def mlflow_server(services_dir):
    from harness.services import mlflow_server

    with mlflow_server(services_dir / "mlflow") as server:
        yield server


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """A local Ray runtime for the session. Starts after the S3 server so workers inherit its endpoint."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_cluster(services_dir, s3_server):
    """A `ray start --head` cluster on loopback, for `ray job submit` and JobSubmissionClient."""
    from harness.services import ray_head

    with ray_head(services_dir / "ray-head", num_cpus=2, env=dict(os.environ)) as head:
        yield head


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    """A small generated dataset (videos, images, every source format) shared by the session."""
    from pipelines.sample_data import SampleDataConfig, generate

    out = tmp_path_factory.mktemp("sample-data")
    return generate(SampleDataConfig(out=str(out), videos=12, images=8, seed=0))


@pytest.fixture
def media_server(sample_data):
    """The sample data served over HTTP on 127.0.0.1, fresh counters per test."""
    from harness.media_server import MediaServer

    with MediaServer(Path(sample_data.root)) as server:
        yield server
