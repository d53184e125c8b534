"""`vllama demo` end to end, as `make demo` runs it: sample data served on loopback -> WebVid ingest ->
feature store -> VL stage 1 (two Ray Train workers, DeepSpeed on CPU) -> captions of held-out videos.

This is also the test that the model learns what it sees, through every real stage: the tiny LLaMA
knows caption text but has never seen a video, the encoders are random (fan-in scaled), and only
the VL branch is trained; the held-out videos' captions must name the shape's colour far above
chance (1/8). A second run must reuse everything and redo nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from harness.net import free_port

CHANCE = 1 / 8  # eight colours in the sample palette


def run_demo(out, port: int) -> tuple[str, float]:
    env = {**os.environ, "RAY_ADDRESS": "local"}  # its own Ray, never a cluster another test started
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "demo", "--out", str(out), "--port", str(port)],
        capture_output=True, text=True, env=env, timeout=1500,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout, seconds


@pytest.mark.slow
def test_demo_learns_then_reuses_everything(tmp_path):
    out = tmp_path / "demo"
    port = free_port()
    first, first_s = run_demo(out, port)
    print(first)
    for stage in ("ingest_webvid", "features", "train"):
        assert re.search(rf"\] {stage} \(.*\): done, ", first), f"{stage} did not run:\n{first}"
    assert re.search(r"160 training and 40 held-out videos", first)
    assert re.search(r"samples: 160 ok", first) or "160 ok" in first, first
    assert re.search(r"MLflow run [0-9a-f]{32}", first) and "mlflow ui --backend-store-uri" in first
    generated = re.search(r"generated: '(.*)'\n\s+true:\s+'(.*)'", first)
    assert generated and generated.group(1), first
    hits, total = map(int, re.search(r"colour named right in (\d+)/(\d+) held-out captions", first).groups())
    assert total == 40
    print(f"held-out colour accuracy {hits}/{total} = {hits / total:.2f}, chance {CHANCE:.3f}")
    assert hits / total >= 3 * CHANCE, first

    second, second_s = run_demo(out, port)
    assert "features (configs/features/tiny.yaml): reused, nothing to do" in second, second
    assert "reused: the store already holds every media shard's features" in second
    assert "vl_stage1_demo: already finished" in second
    assert "tiny LLaMA: reused" in second and "encoders: reused" in second
    assert f"colour named right in {hits}/{total}" in second  # same weights, greedy: the same captions
    assert re.search(r"MLflow run [0-9a-f]{32}: open its UI", second)
    assert second_s < first_s / 2, (first_s, second_s)
