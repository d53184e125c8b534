"""Each job script is the matching `vllama` subcommand, run from the copy of the checkout that Ray uploads.

The copy is built by Ray's own working-dir packaging with the job's runtime env (its `excludes`, Ray's
default excludes and .gitignore), so a job that needs a file its runtime env leaves behind fails here.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
JOBS = sorted(p.name for p in (REPO / "jobs").glob("*.py") if not p.name.startswith("_"))  # _x.py: shared by jobs
TRAIN_STAGES = ("vl_stage1", "vl_stage2", "al_stage1", "al_stage2")


def _uploaded_copy(job: str, dest: Path) -> Path:
    """The working dir as `ray job submit --working-dir . --runtime-env jobs/runtime_envs/<job>.yaml` ships it."""
    from ray._private.runtime_env.packaging import create_package, unzip_package
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    env = yaml.safe_load((REPO / "jobs" / "runtime_envs" / f"{job}.yaml").read_text())
    package = dest.with_suffix(".zip")

    def pack(working_dir: str, excludes: list[str] | None = None, is_file: bool = False) -> None:
        create_package(working_dir, package, include_gitignore=True, excludes=excludes)

    upload_working_dir_if_needed({**env, "working_dir": str(REPO)}, include_gitignore=True, upload_fn=pack)
    unzip_package(str(package), str(dest), remove_top_level_directory=False, unlink_zip=True)
    return dest


def _start_job(copy: Path, job: str, *args: str, home: Path) -> subprocess.Popen:
    """As the job's driver runs: cwd is the uploaded copy, PYTHONPATH is not this checkout's."""
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(home), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, f"jobs/{job}.py", *args]
    return subprocess.Popen(cmd, cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# Each job is its stage's subcommand: its help names the stage's config folder.
CONFIG_FOLDER = {
    "extract_features": "configs/features/",
    **{f"ingest_{s}": f"configs/ingest_{s}/" for s in ("webvid", "cc3m", "llava595k", "instruct")},
    **{f"train_{s}": "configs/train/" for s in TRAIN_STAGES},
    "chain": "configs/chain/",
}


def test_every_job_is_listed():
    stems = {job.removesuffix(".py") for job in JOBS}
    assert stems <= CONFIG_FOLDER.keys()
    assert CONFIG_FOLDER.keys() <= stems


@pytest.mark.parametrize("job", JOBS)
def test_job_help_runs_from_the_uploaded_copy(job, tmp_path):
    stem = job.removesuffix(".py")
    copy = _uploaded_copy(stem, tmp_path / "working_dir")
    assert (copy / "jobs" / job).is_file() and not (copy / ".venv").exists()
    proc = _start_job(copy, stem, "--help", home=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "--config" in out and "KEY=VALUE" in out
    assert CONFIG_FOLDER[stem] in out


def _job_module(copy: Path, job: str):
    """The uploaded copy's jobs/<job>.py, imported (its `Path(__file__)` is in the copy)."""
    spec = importlib.util.spec_from_file_location(f"uploaded_{job}", copy / "jobs" / f"{job}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dry_run(out: str) -> dict:
    """The JSON `vllama train --dry-run` prints, after any log line DeepSpeed writes to stdout first."""
    return json.loads(out[out.index('{\n  "train"') :])


def test_train_jobs_default_to_their_7b_config_and_pass_overrides(tmp_path, monkeypatch, capsys):
    """Without --config a training job runs configs/train/<stage>_7b.yaml of the uploaded copy; overrides reach
    it; an explicit --config wins. In-process `--dry-run`s: torch and DeepSpeed are imported once, not per job."""
    copy = _uploaded_copy("train_vl_stage1", tmp_path / "working_dir")
    monkeypatch.chdir(copy)
    monkeypatch.setattr(sys, "path", list(sys.path))  # each job puts its working dir first; undone afterwards
    for stage in TRAIN_STAGES:
        job = _job_module(copy, f"train_{stage}")
        assert job.DEFAULT_CONFIG.relative_to(copy).as_posix() == f"configs/train/{stage}_7b.yaml"
        assert job.main(["--dry-run", f"name={stage}_smoke", "scaling.workers=16"]) == 0
        resolved = _dry_run(capsys.readouterr().out)
        want = yaml.safe_load(job.DEFAULT_CONFIG.read_text())
        train = resolved["train"]
        assert (train["name"], train["scaling"]["workers"]) == (f"{stage}_smoke", 16)  # the overrides
        assert (train["stage"], train["storage_path"], train["model"]["llm"], train["model"]["branch"]) == (
            want["stage"],
            want["storage_path"],
            want["model"]["llm"],
            want["model"]["branch"],
        )
        assert train["optim"] == {**train["optim"], **want["optim"]}  # the recipe's schedule, not the defaults
        assert (
            resolved["global_batch"] == resolved["deepspeed"]["train_batch_size"] == 16 * want["scaling"]["micro_batch"]
        )

    job = _job_module(copy, "train_al_stage2")
    assert job.main(["scaling.wokers=2"]) == 2
    assert f"{job.DEFAULT_CONFIG}: override 'scaling.wokers': unknown key; allowed: workers" in capsys.readouterr().err
    assert job.main(["--config", "configs/train/al_stage2_tiny.yaml", "--dry-run"]) == 0
    assert _dry_run(capsys.readouterr().out)["train"]["name"] == "al_stage2_tiny"
