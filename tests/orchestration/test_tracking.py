"""MLflow tracking against a real `mlflow server` and a local sqlite store; a closed port never stops training."""

from __future__ import annotations

import logging
import time

import pytest
from harness.net import free_port
from mlflow import MlflowClient

from orchestration.tracking import Tracker, flat_params, resolve_uri


def test_flat_params_flattens_nested_configs_and_dataset_lists():
    tree = {"optim": {"init_lr": 1e-4}, "data": {"train": [{"name": "webvid", "ratio": 100}], "val": []}, "seed": 42}
    assert flat_params(tree) == {
        "optim.init_lr": "0.0001",
        "data.train.0.name": "webvid",
        "data.train.0.ratio": "100",
        "data.val": "[]",
        "seed": "42",
    }


def test_uri_comes_from_config_then_environment_then_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(None, str(tmp_path / "run")) == f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_uri(None, str(tmp_path)) == "http://mlflow:5000"
    assert resolve_uri("http://other:5000", str(tmp_path)) == "http://other:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ValueError, match="set tracking.uri or MLFLOW_TRACKING_URI"):
        resolve_uri(None, "s3://bucket/runs/a")


def test_a_run_is_created_continued_registered_and_finished(mlflow_server, tmp_path):
    uri = mlflow_server.tracking_uri
    tracker = Tracker.start(uri, "test-tracking", "run-a", run_id=None, artifact_root=None)
    assert tracker.enabled
    tracker.log_params({"optim.init_lr": "0.0001", "seed": "1"})
    tracker.log_metrics({"loss": 2.0, "lr": 1e-6}, step=0)
    (tmp_path / "weights.pth").write_bytes(b"weights")
    tracker.log_artifact(str(tmp_path / "weights.pth"), "model")
    # a resumed job continues the same run, keeps first param values, and adds new ones
    again = Tracker.start(uri, "test-tracking", "run-a", run_id=tracker.run_id, artifact_root=None)
    again.log_params({"optim.init_lr": "0.5", "max_steps": "10"})
    again.log_metrics({"loss": 1.0}, step=1)
    version = again.register("test-tracking-model", "model", "tiny run")
    again.finish("FINISHED")

    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"optim.init_lr": "0.0001", "seed": "1", "max_steps": "10"}
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "loss")] == [(0, 2.0), (1, 1.0)]
    assert [a.path for a in client.list_artifacts(tracker.run_id, "model")] == ["model/weights.pth"]
    mv = client.get_model_version("test-tracking-model", str(version))
    assert mv.run_id == tracker.run_id


def test_local_sqlite_store_keeps_artifacts_in_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    uri = resolve_uri(None, str(run_dir))
    tracker = Tracker.start(uri, "local", "r", None, artifact_root=(run_dir / "mlartifacts").as_uri())
    tracker.log_text("a: 1\n", "config.yaml")
    tracker.finish("FAILED")
    assert MlflowClient(uri).get_run(tracker.run_id).info.status == "FAILED"
    assert next((run_dir / "mlartifacts").rglob("config.yaml")).read_text() == "a: 1\n"


def test_unreachable_server_is_reported_once_and_nothing_blocks(caplog):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="orchestration.tracking"):
        tracker = Tracker.start(uri, "x", "run", None, None)
        for step in range(5):
            tracker.log_metrics({"loss": 1.0}, step)
        tracker.log_params({"a": "1"})
        assert tracker.register("m", "model", "") is None
        tracker.finish("FINISHED")
    assert not tracker.enabled
    assert time.monotonic() - start < 15
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1 and "training goes on WITHOUT tracking" in warnings[0].getMessage()
