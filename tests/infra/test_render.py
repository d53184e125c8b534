"""infra/k8s/render.py: fills every placeholder from `terraform output -json`, and refuses,
naming file, line and placeholder, when an output is missing or unfit for a manifest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RENDER = REPO / "infra" / "k8s" / "render.py"


def _value(outputs: dict, name: str) -> str:
    return outputs[name]["value"]


def test_sample_outputs_cover_every_terraform_output(sample_outputs, output_names):
    assert set(sample_outputs) == output_names


RUN_VALUES = ["pretrain_fingerprint=0123456789abcdef", "instruct_fingerprint=fedcba9876543210"]


def test_renders_every_template_with_the_outputs(render, sample_outputs, tmp_path):
    written = render.render_tree(sample_outputs, tmp_path, values=render.parse_run_values(RUN_VALUES))
    assert sorted(p.relative_to(tmp_path) for p in written) == sorted(
        p.relative_to(render.HERE) for p in render.templates()
    )
    docs = {str(p.relative_to(tmp_path)): list(yaml.safe_load_all(p.read_text())) for p in written}
    for path, text in ((p, p.read_text()) for p in written):
        assert "${" not in text, path

    (sa_ingest, *_rest) = docs["base/10-serviceaccounts.yaml"]
    assert sa_ingest["metadata"] == {
        "name": "ray-ingest",
        "namespace": "vllama",
        "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/vllama-ray-ingest"},
    }
    (job,) = docs["jobs/extract-features.yaml"]
    assert job["spec"]["entrypoint"] == (
        "python jobs/extract_features.py --config configs/features/7b.yaml"
        " sources.webvid=s3://vllama-123456789012-us-east-1-media/shards/webvid"
        " sources.webvid_val=s3://vllama-123456789012-us-east-1-media/shards/webvid_val"
        " sources.llava_cc3m=s3://vllama-123456789012-us-east-1-media/shards/llava_cc3m"
        " root=s3://vllama-123456789012-us-east-1-features/features"
        " encoders.weights=s3://vllama-123456789012-us-east-1-checkpoints/pretrained/encoders actors=8"
    )
    (train,) = docs["jobs/train-al-stage1.yaml"]
    assert (
        " data.store=s3://vllama-123456789012-us-east-1-features/features/0123456789abcdef "
        in (train["spec"]["entrypoint"])
    )
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["serviceAccountName"] == "ray-extract"
    assert head["containers"][0]["image"] == "123456789012.dkr.ecr.us-east-1.amazonaws.com/vllama:0.1.0-abc1234"

    deployment, _service = docs["base/20-mlflow.yaml"]
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in server["env"]}
    host = _value(sample_outputs, "mlflow_db_host")
    assert env["MLFLOW_BACKEND_STORE_URI"] == f"postgresql://mlflow@{host}:5432/mlflow?sslmode=require"
    # Kubernetes' own $(VAR) references are not placeholders and survive rendering.
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in server["args"]


def test_missing_output_fails_naming_it_and_writes_nothing(render, sample_outputs, tmp_path):
    outputs = {k: v for k, v in sample_outputs.items() if k != "features_bucket"}
    with pytest.raises(render.RenderError) as err:
        render.render_tree(outputs, tmp_path / "out", values=render.parse_run_values(RUN_VALUES))
    message = str(err.value)
    assert "${features_bucket} has no Terraform output named 'features_bucket'" in message
    # Every use is reported with its file and line, e.g. the extract job's store= override.
    extract = (render.HERE / "jobs" / "extract-features.yaml").read_text().splitlines()
    line = next(i for i, text in enumerate(extract, start=1) if "${features_bucket}" in text)
    assert f"jobs/extract-features.yaml:{line}: " in message
    assert message.count("${features_bucket}") == sum(
        p.read_text().count("${features_bucket}") for p in render.templates()
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("name", "output", "reason"),
    [
        ("image", {"sensitive": True, "value": "x"}, "is a sensitive output"),
        ("media_bucket", {"sensitive": False, "value": ["a", "b"]}, "is list"),
        (
            "k8s_namespace",
            {"sensitive": False, "value": 'vllama"\nkind: Secret'},
            "has quotes, backslashes or newlines",
        ),
        ("mlflow_bucket", {"sensitive": False, "value": ""}, "is empty"),
    ],
)
def test_unfit_output_values_are_refused(render, sample_outputs, name, output, reason):
    outputs = {**sample_outputs, name: output}
    with pytest.raises(render.RenderError, match=rf"\$\{{{name}\}} .*{reason}"):
        render.render_tree(outputs, Path("/nonexistent/never-written"))


def test_cli_reports_missing_output_and_exits_nonzero(sample_outputs, tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(sample_outputs))
    sets = [arg for value in RUN_VALUES for arg in ("--set", value)]
    ok = subprocess.run(
        [sys.executable, str(RENDER), "--outputs", str(good), "--out", str(tmp_path / "k8s"), *sets],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.split()) == 16 and (tmp_path / "k8s" / "jobs" / "chain.yaml").is_file()

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({k: v for k, v in sample_outputs.items() if k != "image"}))
    failed = subprocess.run(
        [sys.executable, str(RENDER), "--outputs", str(bad), "--out", str(tmp_path / "k8s-bad")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert failed.returncode == 1
    assert "${image} has no Terraform output named 'image'" in failed.stderr
    assert not (tmp_path / "k8s-bad").exists()


def test_cli_rejects_outputs_that_are_not_terraform_json(tmp_path):
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({"image": "not wrapped in {value: ...}"}))
    proc = subprocess.run(
        [sys.executable, str(RENDER), "--outputs", str(path), "--out", str(tmp_path / "k8s")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "expected `terraform output -json` format" in proc.stderr


def test_training_waits_for_its_store_fingerprint(render, sample_outputs, tmp_path):
    """Before extraction there is no fingerprint: the training jobs are left out and named, the rest render."""
    good = tmp_path / "good.json"
    good.write_text(json.dumps(sample_outputs))
    proc = subprocess.run(
        [sys.executable, str(RENDER), "--outputs", str(good), "--out", str(tmp_path / "k8s"), "--set", RUN_VALUES[0]],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rendered = sorted(p.relative_to(tmp_path / "k8s").as_posix() for p in (tmp_path / "k8s").rglob("*.yaml"))
    assert "jobs/train-vl-stage1.yaml" in rendered and "jobs/train-al-stage1.yaml" in rendered
    assert "jobs/train-vl-stage2.yaml" not in rendered and "jobs/train-al-stage2.yaml" not in rendered
    assert len(rendered) == 14 and len(proc.stdout.split()) == 14
    for stage in ("vl", "al"):
        assert (
            f"not rendered: jobs/train-{stage}-stage2.yaml needs --set instruct_fingerprint=VALUE, "
            "the fingerprint of the feature store extract-features-instruct wrote"
        ) in proc.stderr


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ("pretrain_fingerprint=50AEFDC85B1E0995", "matching"),  # fingerprints are lower-case hex
        ("pretrain_fingerprint=s3://bucket/features/50aefdc85b1e0995", "matching"),  # the fingerprint, not the URI
        ("store=50aefdc85b1e0995", "NAME one of pretrain_fingerprint, instruct_fingerprint"),
        ("pretrain_fingerprint", "expected NAME=VALUE"),
    ],
)
def test_bad_run_values_are_refused(render, item, reason):
    with pytest.raises(render.RenderError, match=reason):
        render.parse_run_values([item])
