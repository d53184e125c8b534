"""Stages run as Ray jobs on a real `ray start --head` cluster: `ray job submit` and `vllama submit`."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from harness.media_shards import image_members, video_members, write_media_shard

from pipelines import shards, storage
from pipelines.features import format as fmt

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
    jobs = [job for job in sorted((REPO / "jobs").glob("*.py")) if not job.name.startswith("_")]  # _train: shared code
    assert len(jobs) >= 8, [job.name for job in jobs]
    for job in jobs:
        assert (REPO / "jobs" / "runtime_envs" / f"{job.stem}.yaml").exists(), f"{job.name} has no runtime env"
        doc = job.read_text()
        assert "ray job submit" in doc and f"jobs/{job.name}" in doc, f"{job.name}: docstring lacks the submit line"
        assert f"--runtime-env jobs/runtime_envs/{job.stem}.yaml" in doc, f"{job.name}: submit line lacks its env"


def test_vllama_submit_extracts_features_from_s3_media_into_an_s3_store(
    ray_cluster, s3_bucket, sample_data, tmp_path, capsys
):
    """jobs/extract_features.py on the cluster: media shards and tiny encoder weights on S3 -> a store on S3."""
    from orchestration.cli import main

    media = f"{s3_bucket}/shards"
    picked = {"webvid": sample_data.videos[:2], "llava_cc3m": sample_data.images[:2]}
    media_stats = {
        "webvid": write_media_shard(
            f"{media}/webvid", 0, [(s.id, video_members(sample_data, s)) for s in picked["webvid"]]
        ),
        "llava_cc3m": write_media_shard(
            f"{media}/llava_cc3m", 0, [(s.id, image_members(sample_data, s)) for s in picked["llava_cc3m"]]
        ),
    }
    weights = tmp_path / "encoders"
    assert main(["features", "demo-weights", str(weights)]) == 0
    for path in weights.iterdir():
        storage.write_bytes(f"{s3_bucket}/weights/{path.name}", path.read_bytes())
    capsys.readouterr()

    code = main(
        ["submit", "extract_features", "--address", ray_cluster.dashboard_url, "--config", "configs/features/tiny.yaml",
         f"sources.webvid={media}/webvid", f"sources.llava_cc3m={media}/llava_cc3m", f"root={s3_bucket}/features",
         f"encoders.weights={s3_bucket}/weights", f"encoders.cache_dir={tmp_path / 'weights-cache'}",
         "preprocess.num_frames=4", "progress=false"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    assert "submitted extract_features as job " in printed and ": SUCCEEDED" in printed
    assert "2 shards computed, 0 up to date, 0 failed" in printed and "samples: 4 ok / 0 failed" in printed
    store = printed.split("  store: ")[1].split()[0]
    assert store.startswith(f"{s3_bucket}/features/")

    manifest = fmt.read_manifest(store)
    assert manifest["fingerprint"] == store.rsplit("/", 1)[1]
    assert manifest["encoders"]["weights_sha256"] == {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in weights.iterdir()
    }
    assert manifest["dims"]["vl"] == [2, "T", 32, 64] and manifest["views"] == 2
    for dataset, samples in picked.items():
        entry = manifest["datasets"][dataset]
        assert (entry["source"], entry["samples"], entry["failed"]) == (f"{media}/{dataset}", 2, 0)
        shard = entry["shards"]["00000"]
        assert shard["source_sha256"] == media_stats[dataset]["tar_sha256"]  # lineage: which media it came from
        assert fmt.complete_shards(store, dataset) == [0]
        tar = fmt.shard_uri(store, dataset, 0)
        data = storage.read_bytes(tar)
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (shard["tar_sha256"], shard["tar_bytes"])
        got = list(fmt.iter_shard(tar))
        assert [(x.key, x.text) for x in got] == [(s.id, s.caption) for s in samples]
        frames = 4 if dataset == "webvid" else 1  # an image is a one-frame video
        for x, s in zip(got, samples, strict=True):
            assert x.vl.shape == (2, frames, 32, 64) and x.ibv.shape == (2, frames, 64)
            assert x.vl.dtype == x.ibv.dtype == np.float16 and np.isfinite(x.vl).all()
            has_audio = dataset == "webvid" and s.has_audio  # the first clip has sound, the second none
            assert (x.iba.shape if has_audio else x.iba) == ((8, 64) if has_audio else None)
