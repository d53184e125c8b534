"""Two Ray Train workers run DeepSpeed over a generated feature store, tracked in a real MLflow server.

One finished run (module fixture) is shared by the assertions on learning, tracking, export,
checkpoints and data lineage; `vllama generate` reads its export.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from harness.feature_store import write_store
from mlflow import MlflowClient

from model.checkpoint import import_reference, load_branches, read_torch_file
from model.config import SIZES
from model.tiny import save_tiny_llama
from orchestration import cli
from orchestration.config import to_dict
from orchestration.schedule import lr_at
from orchestration.train import run
from orchestration.train_config import (
    CheckpointConfig,
    DataConfig,
    DatasetConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    ScalingConfig,
    TrackingConfig,
    TrainConfig,
)
from pipelines.features import format as fmt

STEPS = 40
DATASETS = {"webvid": 48, "cc": 16, "webvid_val": 8}


def tiny_config(root: Path, store: str, llm: str, name: str, **changes) -> TrainConfig:
    """Two CPU workers, 40 steps, checkpoints every 10, eval every 20, keys recorded."""
    base = dict(
        name=name,
        storage_path=str(root / "runs"),
        deepspeed="configs/deepspeed/zero2_fp32_cpu.json",
        model=ModelConfig(size="tiny", llm=llm, branch="vl"),
        data=DataConfig(
            store=store,
            train=(DatasetConfig(name="webvid", ratio=100), DatasetConfig(name="cc", ratio=24)),
            val=(DatasetConfig(name="webvid_val"),),
            record_keys=True,
        ),
        optim=OptimConfig(init_lr=1e-3, min_lr=1e-4, warmup_lr=1e-5, warmup_steps=5, iters_per_epoch=20, epochs=2),
        scaling=ScalingConfig(workers=2, use_gpu=False, cpus_per_worker=1, micro_batch=4),
        checkpoint=CheckpointConfig(every_steps=10, keep=2, max_failures=1),
        eval=EvalConfig(every_steps=20, batches=2),
        tracking=TrackingConfig(log_every=5, experiment="test-train"),
    )
    return TrainConfig(**(base | changes))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    store = write_store(str(root / "features" / "fp0"), DATASETS, per_shard=8)
    llm = str(save_tiny_llama(root / "tiny-llama"))
    return root, store, llm


@pytest.fixture(scope="module")
def finished(setup, ray_local, mlflow_server):
    root, store, llm = setup
    cfg = tiny_config(root, store, llm, "two-workers", tracking=TrackingConfig(
        uri=mlflow_server.tracking_uri, experiment="test-train", log_every=5))  # fmt: skip
    return cfg, run(cfg), MlflowClient(mlflow_server.tracking_uri)


def test_two_worker_run_learns_and_mlflow_holds_it(finished):
    cfg, result, client = finished
    assert result.step == STEPS
    run_ = client.get_run(result.mlflow_run_id)
    assert run_.info.status == "FINISHED"
    params = run_.data.params
    assert params["optim.init_lr"] == "0.001" and params["data.train.1.name"] == "cc"
    assert params["global_batch"] == "8" and params["scaling.workers"] == "2"
    assert params["storage.secret_access_key"] == "None"  # unset; a set secret would read ***
    loss = client.get_metric_history(result.mlflow_run_id, "loss")
    assert [m.step for m in loss] == list(range(5, STEPS + 1, 5))
    assert loss[0].value - loss[-1].value > 0.5, [m.value for m in loss]  # ln(768) = 6.6 at the start
    for key in ("lr", "grad_norm", "samples_per_s", "tokens_per_s", "data_wait_share", "step_time_s"):
        history = client.get_metric_history(result.mlflow_run_id, key)
        assert len(history) == STEPS // 5 and all(m.value >= 0 for m in history), key
    assert all(0 <= m.value <= 1 for m in client.get_metric_history(result.mlflow_run_id, "data_wait_share"))
    val = client.get_metric_history(result.mlflow_run_id, "val_loss")
    assert [m.step for m in val] == [20, 40] and val[1].value < val[0].value
    assert [m.value for m in client.get_metric_history(result.mlflow_run_id, "resume_step")] == [0]


def test_lr_follows_the_recipe_schedule_step_by_step(finished):
    cfg, result, client = finished
    o = cfg.optim
    schedule = dict(init_lr=o.init_lr, min_lr=o.min_lr, warmup_lr=o.warmup_lr, warmup_steps=o.warmup_steps,
                    iters_per_epoch=o.iters_per_epoch, epochs=o.epochs)  # fmt: skip
    for m in client.get_metric_history(result.mlflow_run_id, "lr"):
        assert m.value == pytest.approx(lr_at(m.step - 1, **schedule), rel=1e-9)  # the lr of the step just taken


def test_artifacts_and_registered_model(finished):
    cfg, result, client = finished
    run_id = result.mlflow_run_id
    listed = {a.path for folder in ("config", "lineage", "model") for a in client.list_artifacts(run_id, folder)}
    assert listed == {
        "config/train_config.yaml",
        "config/deepspeed.json",
        "lineage/feature_store_manifest.json",
        "model/videollama_vl_tiny.pth",
        "model/videollama_vl_tiny.safetensors",
    }
    manifest = json.loads(Path(client.download_artifacts(run_id, "lineage/feature_store_manifest.json")).read_text())
    assert manifest == fmt.read_manifest(cfg.data.store)
    ds = json.loads(Path(client.download_artifacts(run_id, "config/deepspeed.json")).read_text())
    assert ds["train_batch_size"] == 8 and ds["zero_optimization"]["stage"] == 2
    versions = client.search_model_versions("name='video-llama-vl-tiny'")
    assert [v.run_id for v in versions] == [run_id]


def test_export_is_the_trained_fp32_weights_and_imports_back_bit_identically(finished):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    cfg, result, _ = finished
    pth, safetensors = result.export["pth"], result.export["safetensors"]
    imported, report = import_reference(read_torch_file(Path(pth).read_bytes(), pth), SIZES["tiny"])
    assert report.branches == ("vl",) and not report.ignored
    ours, size = load_branches(Path(safetensors).read_bytes(), safetensors)
    trained = get_fp32_state_dict_from_zero_checkpoint(result.checkpoint, tag="deepspeed")  # the optimizer's fp32
    trained = {k.removeprefix("branches."): v.detach() for k, v in trained.items()}
    assert size.name == "tiny" and sorted(imported) == sorted(ours) == sorted(trained)
    for key, value in imported.items():
        assert value.dtype == torch.float32
        assert value.numpy().tobytes() == ours[key].numpy().tobytes() == trained[key].numpy().tobytes(), key


def test_keeps_the_newest_checkpoints_with_their_data_positions(finished):
    cfg, result, _ = finished
    run_dir = Path(result.run_dir)
    kept = sorted(p.name for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert kept == ["checkpoint_00000030", "checkpoint_00000040"]
    state = json.loads((run_dir / kept[-1] / "train_state.json").read_text())
    assert state["step"] == STEPS and state["mlflow_run_id"] == result.mlflow_run_id
    assert state["shards"] == {"webvid": list(range(6)), "cc": [0, 1]}
    for rank in (0, 1):
        positions = json.loads((run_dir / kept[-1] / "data" / f"rank{rank}.json").read_text())
        assert set(positions) == {"webvid", "cc"}
    assert json.loads(Path(fmt.ref_uri(cfg.data.store, cfg.name)).read_text())["run_dir"] == result.run_dir


def consumed(run_dir: str) -> dict[tuple[str, int], collections.Counter]:
    """(dataset, pass) -> how often each key was read, over every rank's recorded steps."""
    seen: dict[tuple[str, int], collections.Counter] = collections.defaultdict(collections.Counter)
    for path in Path(run_dir, "consumed").glob("rank*/step*.json"):
        for batch in json.loads(path.read_text()):
            for key, epoch in zip(batch["keys"], batch["epochs"], strict=True):
                seen[(batch["dataset"], epoch)][key] += 1
    return seen


def assert_each_sample_once_per_pass(run_dir: str, steps: int, micro_batch: int = 4, world: int = 2) -> None:
    seen = consumed(run_dir)
    assert sum(sum(c.values()) for c in seen.values()) == steps * micro_batch * world
    for (dataset, epoch), counts in seen.items():
        assert max(counts.values()) == 1, f"{dataset} pass {epoch}: a sample read twice"
        finished_pass = (dataset, epoch + 1) in seen
        if finished_pass:
            assert len(counts) == DATASETS[dataset], f"{dataset} pass {epoch}: samples skipped"


def test_every_sample_is_read_once_per_pass_across_ranks(finished):
    cfg, result, _ = finished
    assert_each_sample_once_per_pass(result.run_dir, STEPS)


def test_vllama_generate_captions_a_store_sample_from_the_export(finished, capsys):
    cfg, result, _ = finished
    key = next(fmt.iter_shard(fmt.shard_uri(cfg.data.store, "webvid_val", 0))).key
    argv = ["generate", "--weights", result.export["pth"], "--size", "tiny", "--llm", cfg.model.llm,
            "--features", f"{cfg.data.store}/webvid_val/{key}", "--caption", "--max-new-tokens", "8"]  # fmt: skip
    assert cli.main(argv) == 0
    text = capsys.readouterr().out.strip()
    assert text and "\n" not in text


# ---- failures and resumption -------------------------------------------------------------------
def wait_for_checkpoint(run_dir: Path, step: int, proc: subprocess.Popen | None = None, timeout: float = 600) -> None:
    """Until Ray Train has registered checkpoint `step` (its snapshot names it), not merely started copying it."""
    snapshot, name = run_dir / "checkpoint_manager_snapshot.json", f"checkpoint_{step:08d}"
    deadline = time.monotonic() + timeout
    while not (snapshot.exists() and name in snapshot.read_text()):
        assert proc is None or proc.poll() is None, "the training driver exited before its first checkpoint"
        assert time.monotonic() < deadline, f"no {name} within {timeout} s"
        time.sleep(0.1)


def train_workers() -> list[psutil.Process]:
    """This session's Ray Train worker processes (descendants of this test process, via its raylet)."""
    return [p for p in psutil.Process().children(recursive=True) if "RayTrainWorker" in " ".join(p.cmdline()[:1])]


def assert_same_weights(a: str, b: str) -> None:
    wa, _ = load_branches(Path(a).read_bytes(), a)
    wb, _ = load_branches(Path(b).read_bytes(), b)
    assert sorted(wa) == sorted(wb)
    assert all(wa[k].numpy().tobytes() == wb[k].numpy().tobytes() for k in wa), "weights differ"


def assert_resumed(run_dir: str, run_id: str | None) -> MlflowClient:
    """One MLflow run continued across attempts: FINISHED, restarted at a checkpoint, lr continuous."""
    info = json.loads(Path(run_dir, "tracking.json").read_text())
    client = MlflowClient(info["uri"])
    run_ = client.get_run(info["run_id"])
    assert run_.info.status == "FINISHED" and (run_id is None or info["run_id"] == run_id)
    runs = client.search_runs([run_.info.experiment_id], f"attributes.run_name = '{run_.info.run_name}'")
    assert len(runs) == 1
    starts = [m.value for m in client.get_metric_history(info["run_id"], "resume_step")]
    assert starts[0] == 0 and len(starts) == 2 and starts[1] in (10, 20, 30), starts
    return client


@pytest.mark.slow
def test_a_killed_worker_restarts_from_the_last_checkpoint(setup, finished, ray_local):
    root, store, llm = setup
    cfg = tiny_config(root, store, llm, "killed-worker")
    run_dir = Path(cfg.run_dir)
    killed = []

    def kill_one_worker():
        wait_for_checkpoint(run_dir, 10)
        victim = max(train_workers(), key=lambda p: p.pid)
        victim.kill()
        killed.append(victim.pid)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    result = run(cfg)
    killer.join(timeout=5)
    assert killed and result.step == STEPS
    assert_resumed(result.run_dir, result.mlflow_run_id)
    assert_each_sample_once_per_pass(result.run_dir, STEPS)
    # every step's data, lr and dropout are functions of the step: the restart changes nothing
    assert_same_weights(result.export["safetensors"], finished[1].export["safetensors"])


@pytest.mark.slow
def test_a_stopped_job_resumes_when_rerun_with_the_same_name(setup, finished, ray_local, tmp_path):
    root, store, llm = setup
    cfg = tiny_config(root, store, llm, "stopped-job")
    config = tmp_path / "stopped-job.yaml"
    config.write_text(yaml.safe_dump(json.loads(json.dumps(to_dict(cfg, redact=False)))))
    env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    command = [sys.executable, "-m", "orchestration.cli", "train", "--config", str(config)]
    driver = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_checkpoint(Path(cfg.run_dir), 10, driver)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the whole driver, as a lost job-submission pod would
        driver.wait(timeout=30)
    assert not Path(cfg.run_dir, "export").exists()
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"finished at step {STEPS}" in again.stdout
    assert_resumed(cfg.run_dir, None)
    assert_each_sample_once_per_pass(cfg.run_dir, STEPS)
    assert_same_weights(
        str(Path(cfg.run_dir, "export", "videollama_vl_tiny.safetensors")), finished[1].export["safetensors"]
    )
