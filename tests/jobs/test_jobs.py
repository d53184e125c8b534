"""Each job script is the matching `vllama` subcommand: same arguments, run from any directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JOBS = sorted(p.name for p in (REPO / "jobs").glob("*.py"))


@pytest.mark.parametrize("job", JOBS)
def test_job_help_runs_from_outside_the_checkout(job, tmp_path):
    """As under `ray job submit`, where the working dir is an uploaded copy and PYTHONPATH is not ours."""
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / job), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--config" in proc.stdout and "KEY=VALUE" in proc.stdout
