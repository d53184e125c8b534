"""Start and stop the real services the tests talk to: each one a process group on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.net import free_port, wait_http

BIN = Path(sys.executable).parent


@contextlib.contextmanager
def process_group(
    cmd: list[str], log: Path, env: dict | None = None, grace: float = 20.0
) -> Iterator[subprocess.Popen]:
    """Run `cmd` in its own session; on exit SIGTERM the whole group, SIGKILL after `grace` seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        yield proc
    finally:
        _stop_group(proc, grace)


def _stop_group(proc: subprocess.Popen, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    # Children (uvicorn workers, raylets) may outlive the leader: sweep the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    env: dict[str, str]  # what a client process needs to reach it


@contextlib.contextmanager
def moto_server(workdir: Path) -> Iterator[S3Server]:
    """moto in server mode: a real HTTP S3 API that s3fs, boto3 and pyarrow talk to."""
    port = free_port()
    cmd = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with process_group(cmd, workdir / "moto.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/moto-api/", timeout=60, proc=proc)
        env = {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        yield S3Server(url, env)


@dataclass(frozen=True)
class MlflowServer:
    tracking_uri: str


@contextlib.contextmanager
def mlflow_server(workdir: Path) -> Iterator[MlflowServer]:
    """`mlflow server` with a sqlite backend and local artifacts, served over HTTP."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(BIN / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination", (workdir / "artifacts").as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    # MLflow 3's server also starts its GenAI job runner: seven huey consumers that poll the backend,
    # together more than one core of this 2-core machine for as long as the server lives. Tracking
    # does not use them.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with process_group(cmd, workdir / "mlflow.log", env=env) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", timeout=120, proc=proc)
        yield MlflowServer(url)


@dataclass(frozen=True)
class RayHead:
    gcs_address: str  # for ray.init(address=...)
    dashboard_url: str  # for `ray job submit --address` and JobSubmissionClient


@contextlib.contextmanager
def ray_head(workdir: Path, num_cpus: int = 2, env: dict | None = None) -> Iterator[RayHead]:
    """A separate Ray cluster started with `ray start --head --block`, as a platform team runs one.

    `--block` keeps the head in the foreground; SIGTERM to it drains and stops every Ray
    process it started, without touching other Ray instances on the machine.
    """
    port, dash = free_port(), free_port()
    temp = Path("/tmp") / f"ray-head-{port}"  # Ray's socket paths must stay short
    cmd = [
        str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        "--port", str(port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
        "--num-cpus", str(num_cpus), "--temp-dir", str(temp),
        "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
    ]  # fmt: skip
    # Job entrypoints say `python ...`: it must be this environment's python, as in a cluster image.
    env = dict(env if env is not None else os.environ)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    # A test cluster holds nothing worth draining (Ray waits up to 30 s for that): kill it after 3 s.
    with process_group(cmd, workdir / "ray-head.log", env=env, grace=3) as proc:
        url = f"http://127.0.0.1:{dash}"
        wait_http(f"{url}/api/version", timeout=120, proc=proc)
        _wait_job_api(url)
        yield RayHead(f"127.0.0.1:{port}", url)


def _wait_job_api(url: str, timeout: float = 60.0) -> None:
    """The dashboard answers before the job agent is ready; wait until job listing works."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    while True:
        try:
            JobSubmissionClient(url).list_jobs()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
