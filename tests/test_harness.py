"""Each test fixture really works: real services on loopback, observed with plain clients."""

from __future__ import annotations

import concurrent.futures
import http.client
import socket
import time
import urllib.parse
from pathlib import Path

import pytest
import requests


def test_s3_object_round_trips_through_s3fs(s3_bucket, s3_server):
    import s3fs

    fs = s3fs.S3FileSystem()  # endpoint and credentials come from the environment the fixture set
    fs.pipe(f"{s3_bucket}/a/b.bin", b"\x00payload\xff")
    assert fs.cat(f"{s3_bucket}/a/b.bin") == b"\x00payload\xff"
    assert fs.ls(f"{s3_bucket}/a", detail=False) == [f"{s3_bucket[5:]}/a/b.bin"]
    # The object is really on the moto server: another client (boto3) sees it there.
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url)
    assert s3.get_object(Bucket=s3_bucket[5:], Key="a/b.bin")["Body"].read() == b"\x00payload\xff"


def test_s3_buckets_are_per_test(s3_bucket):
    import s3fs

    assert s3fs.S3FileSystem().ls(s3_bucket) == []


def test_mlflow_run_is_read_back_with_client(mlflow_server, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(mlflow_server.tracking_uri)
    exp = mlflow.set_experiment(f"harness-{time.time_ns()}")
    (tmp_path / "note.txt").write_text("artifact body")
    with mlflow.start_run() as run:
        mlflow.log_param("lr", 1e-4)
        for step, loss in enumerate([3.0, 2.0, 1.5]):
            mlflow.log_metric("loss", loss, step=step)
        mlflow.log_artifact(str(tmp_path / "note.txt"))
    mlflow.set_tracking_uri(None)

    client = MlflowClient(mlflow_server.tracking_uri)
    got = client.get_run(run.info.run_id)
    assert got.info.experiment_id == exp.experiment_id
    assert got.info.status == "FINISHED"
    assert got.data.params == {"lr": "0.0001"}
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [3.0, 2.0, 1.5]
    local = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "dl"))
    assert Path(local).read_text() == "artifact body"


def test_ray_task_runs(ray_local):
    @ray_local.remote
    def square(x):
        import os

        return x * x, os.getpid()

    results = ray_local.get([square.remote(i) for i in range(4)])
    assert [r[0] for r in results] == [0, 1, 4, 9]
    assert all(pid != __import__("os").getpid() for _, pid in results)  # ran in worker processes


def test_ray_workers_reach_the_s3_server(ray_local, s3_bucket):
    import s3fs

    s3fs.S3FileSystem().pipe(f"{s3_bucket}/from-driver", b"hi")

    @ray_local.remote
    def read(uri):
        import s3fs

        return s3fs.S3FileSystem().cat(uri)

    assert ray_local.get(read.remote(f"{s3_bucket}/from-driver")) == b"hi"


@pytest.mark.slow
def test_ray_head_cluster_runs_a_submitted_job(ray_cluster, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_cluster.dashboard_url)
    (tmp_path / "hello.py").write_text(
        "import ray\nray.init()\nprint('sum', ray.get(ray.remote(lambda: 41 + 1).remote()))\n"
    )
    job = client.submit_job(entrypoint="python hello.py", runtime_env={"working_dir": str(tmp_path)})
    deadline = time.monotonic() + 180
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"job {job} still {status}"
        time.sleep(1)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)
    assert "sum 42" in client.get_job_logs(job)


# --- the media server: every misbehaviour is observable by a plain HTTP client -------------------


def _a_video(sample_data) -> str:
    return next(s.file for s in sample_data.videos)


def test_media_server_serves_files(media_server, sample_data):
    rel = _a_video(sample_data)
    r = requests.get(media_server.url(rel), timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "video/mp4"
    assert r.content == (Path(sample_data.root) / rel).read_bytes()


@pytest.mark.parametrize("code", [403, 404, 500, 503])
def test_media_server_status_codes(media_server, sample_data, code):
    r = requests.get(media_server.url(_a_video(sample_data), f"status/{code}"), timeout=10)
    assert r.status_code == code


def test_media_server_429_with_retry_after_then_success(media_server, sample_data):
    url = media_server.url(_a_video(sample_data), "retry-after/2/1")
    first, second, third = (requests.get(url, timeout=10) for _ in range(3))
    assert (first.status_code, first.headers["Retry-After"]) == (429, "1")
    assert second.status_code == 429
    assert third.status_code == 200 and third.headers["Content-Type"] == "video/mp4"


def test_media_server_slow_response_times_out(media_server, sample_data):
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(media_server.url(_a_video(sample_data), "slow/3"), timeout=0.5)


def test_media_server_cuts_connection_mid_body(media_server, sample_data):
    rel = _a_video(sample_data)
    size = (Path(sample_data.root) / rel).stat().st_size
    parsed = urllib.parse.urlparse(media_server.url(rel, "cut"))
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    conn.request("GET", parsed.path)
    resp = conn.getresponse()
    assert int(resp.headers["Content-Length"]) == size
    with pytest.raises(http.client.IncompleteRead) as err:
        resp.read()
    assert 0 < len(err.value.partial) < size


def test_media_server_html_served_as_video(media_server, sample_data):
    r = requests.get(media_server.url(_a_video(sample_data), "html-as-video"), timeout=10)
    assert r.headers["Content-Type"] == "video/mp4"
    assert r.content.lstrip().lower().startswith(b"<!doctype html")


def test_media_server_truncated_mp4_is_not_decodable(media_server, sample_data, tmp_path):
    import subprocess

    from pipelines.media import ffmpeg_bin

    rel = _a_video(sample_data)
    r = requests.get(media_server.url(rel, "truncated"), timeout=10)
    assert r.status_code == 200
    assert len(r.content) == int(r.headers["Content-Length"]) < (Path(sample_data.root) / rel).stat().st_size
    (tmp_path / "t.mp4").write_bytes(r.content)
    proc = subprocess.run(
        [ffmpeg_bin(), "-v", "error", "-i", str(tmp_path / "t.mp4"), "-f", "null", "-"], capture_output=True
    )
    assert proc.returncode != 0 or proc.stderr  # ffmpeg refuses or reports errors


@pytest.mark.parametrize("route", ["huge/20", "huge-chunked"])
def test_media_server_huge_body(media_server, sample_data, route):
    with requests.get(media_server.url(_a_video(sample_data), route), stream=True, timeout=10) as r:
        if route.startswith("huge/"):
            assert int(r.headers["Content-Length"]) == 20 * 10**9
        else:
            assert "Content-Length" not in r.headers
        got = 0
        for chunk in r.iter_content(1 << 16):
            got += len(chunk)
            if got >= 8 << 20:  # far more than any sample: the body keeps coming
                break
    assert got >= 8 << 20


def test_media_server_counts_concurrent_connections(media_server, sample_data):
    media_server.latency = 0.5
    url = media_server.url(_a_video(sample_data))
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        codes = list(pool.map(lambda _: requests.get(url, timeout=10).status_code, range(5)))
    assert codes == [200] * 5
    assert media_server.peak_connections == 5
    assert media_server.connections == 0
    assert media_server.requests[urllib.parse.urlparse(url).path] == 5


def test_media_server_binds_other_loopback_hosts(sample_data):
    """Several "domains" on one machine: 127.0.0.2 is loopback too (for per-domain limits)."""
    from harness.media_server import MediaServer

    with MediaServer(Path(sample_data.root), host="127.0.0.2") as server:
        assert server.base_url.startswith("http://127.0.0.2:")
        assert requests.get(server.url(_a_video(sample_data)), timeout=10).status_code == 200
    with socket.socket() as s:  # and it is released on exit
        assert s.connect_ex(("127.0.0.2", server.port)) != 0
