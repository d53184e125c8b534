"""Stages run as Ray jobs on a real `ray start --head` cluster: `ray job submit` and `vllama submit`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import shards, storage

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


@pytest.fixture
def webvid_on_s3(sample_data, media_server, s3_bucket):
    """A WebVid CSV on S3 whose rows point at the media server, and an output prefix on S3."""
    from pipelines.sample_data import SampleManifest  # noqa: F401  (documents the fixture's type)

    csv = f"{s3_bucket}/in/webvid.csv"
    sample_data.write_webvid_csv(csv, base_url=f"{media_server.base_url}/files", split="train")
    n = len(sample_data.select("video", "train"))
    return csv, f"{s3_bucket}/shards/webvid", n


def _overrides(csv: str, out: str) -> list[str]:
    return [f"csv={csv}", f"out={out}", "samples_per_shard=4", "transcode.enabled=false", "progress=false"]


def _assert_ingested(out: str, n: int) -> None:
    done = shards.complete_shards(out)
    assert done == list(range((n + 3) // 4))
    ok = sum(shards.read_stats(out, i)["categories"].get("ok", 0) for i in done)
    assert ok == n
    assert storage.exists(storage.join(out, "_summary.json"))


def test_ray_job_submit_runs_a_stage_to_s3(ray_cluster, webvid_on_s3):
    csv, out, n = webvid_on_s3
    cmd = [
        str(BIN / "ray"), "job", "submit", "--address", ray_cluster.dashboard_url, "--working-dir", str(REPO),
        "--runtime-env", "jobs/runtime_envs/ingest_webvid.yaml", "--",
        "python", "jobs/ingest_webvid.py", "--config", "configs/ingest_webvid/tiny.yaml", *_overrides(csv, out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout.lower()
    _assert_ingested(out, n)


def test_vllama_submit_follows_the_job_and_reports_success(ray_cluster, webvid_on_s3, capsys):
    from orchestration.cli import main

    csv, out, n = webvid_on_s3
    code = main(
        [
            "submit",
            "ingest_webvid",
            "--address",
            ray_cluster.dashboard_url,
            "--config",
            "configs/ingest_webvid/tiny.yaml",
        ]
        + _overrides(csv, out)
    )
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    assert "submitted ingest_webvid as job " in printed and ": SUCCEEDED" in printed
    assert "% success" in printed  # the job's own summary came through the followed logs
    _assert_ingested(out, n)


def test_vllama_submit_reports_a_failed_job(ray_cluster, capsys):
    from orchestration.cli import main

    code = main(["submit", "ingest_webvid", "--address", ray_cluster.dashboard_url, "--config", "configs/nope.yaml"])
    printed = capsys.readouterr().out
    assert code == 1
    assert ": FAILED" in printed
    assert "configs/nope.yaml: config file not found" in printed  # the job's error reached the user


def test_every_job_has_a_runtime_env_and_a_submit_line():
    for job in sorted((REPO / "jobs").glob("*.py")):
        assert (REPO / "jobs" / "runtime_envs" / f"{job.stem}.yaml").exists(), f"{job.name} has no runtime env"
        doc = job.read_text()
        assert "ray job submit" in doc and f"jobs/{job.name}" in doc, f"{job.name}: docstring lacks the submit line"
