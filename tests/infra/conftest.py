"""Fixtures for the infrastructure tests: the render script, Terraform's output names, the
manifest templates and a sample `terraform output -json`."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TF_DIR = REPO / "infra" / "terraform"
K8S_DIR = REPO / "infra" / "k8s"
SAMPLE_OUTPUTS = Path(__file__).with_name("sample_tf_outputs.json")


@pytest.fixture(scope="session")
def render():
    """infra/k8s/render.py as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("vllama_k8s_render", K8S_DIR / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def output_names() -> set[str]:
    """Names of the outputs declared in infra/terraform/outputs.tf."""
    names = re.findall(r'^output\s+"([A-Za-z0-9_]+)"', (TF_DIR / "outputs.tf").read_text(), flags=re.M)
    assert names, "no outputs found in outputs.tf"
    return set(names)


@pytest.fixture(scope="session")
def irsa_roles() -> dict[str, dict[str, set[str]]]:
    """Service account -> {"read": buckets, "write": buckets} its IRSA role may touch (iam.tf's irsa_roles)."""
    rows = re.findall(
        r'\w+\s*=\s*\{\s*service_account\s*=\s*"([\w-]+)",\s*read\s*=\s*\[([^\]]*)\],\s*write\s*=\s*\[([^\]]*)\]',
        (TF_DIR / "iam.tf").read_text(),
    )
    assert len(rows) == 5, rows
    return {sa: {"read": set(re.findall(r'"(\w+)"', r)), "write": set(re.findall(r'"(\w+)"', w))} for sa, r, w in rows}


@pytest.fixture(scope="session")
def sample_outputs() -> dict[str, dict]:
    """A `terraform output -json` of an applied stack (account 123456789012, us-east-1)."""
    return json.loads(SAMPLE_OUTPUTS.read_text())


@pytest.fixture(scope="session")
def manifests(render) -> dict[str, list[dict]]:
    """Every template, parsed: {"jobs/chain.yaml": [doc, ...]}."""
    return {str(p.relative_to(K8S_DIR)): list(yaml.safe_load_all(p.read_text())) for p in render.templates()}
