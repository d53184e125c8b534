"""infra/terraform: `fmt -check`, `init` from the local provider mirror, `validate`, and
`terraform test` with a mocked AWS provider (infra/terraform/tests/*.tftest.hcl), which asserts
the security properties: private, encrypted, TLS-only buckets, a private encrypted database,
IRSA roles scoped to one service account each and to exactly their buckets.

Terraform runs in a temporary copy of the stack, so no .terraform/, lock file or state is left
in the checkout. Skipped only where terraform or the provider mirror is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TF_DIR = REPO / "infra" / "terraform"
PROVIDER = "registry.terraform.io/hashicorp/aws"


def _terraform() -> str:
    exe = shutil.which("terraform")
    if exe is None:
        pytest.skip("terraform is not on PATH; install Terraform >= 1.11 to run the infrastructure checks")
    return exe


def _plugin_dir() -> Path:
    """The local provider mirror: $TF_PLUGIN_DIR, else /opt/tf-plugins if it exists."""
    configured = os.environ.get("TF_PLUGIN_DIR")
    path = Path(configured) if configured else Path("/opt/tf-plugins")
    if not (path / PROVIDER).is_dir():
        pytest.skip(
            f"no AWS provider in the plugin mirror {path} (set TF_PLUGIN_DIR to a `terraform providers mirror`)"
        )
    return path


@pytest.fixture(scope="module")
def tf_env(tmp_path_factory) -> dict[str, str]:
    """Environment for terraform: no prompts, no update checks, and an empty CLI config so a
    developer's ~/.terraformrc (mirrors, credentials) cannot change what is tested."""
    cli_config = tmp_path_factory.mktemp("tfcli") / "terraformrc"
    cli_config.write_text("")
    env = dict(os.environ)
    env.update(TF_IN_AUTOMATION="1", TF_INPUT="0", CHECKPOINT_DISABLE="1", TF_CLI_CONFIG_FILE=str(cli_config))
    env.pop("TF_PLUGIN_CACHE_DIR", None)
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_terraform(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def tf_workdir(tmp_path_factory, tf_env) -> Path:
    """A copy of infra/terraform, initialised from the mirror without a backend."""
    plugin_dir = _plugin_dir()
    work = tmp_path_factory.mktemp("tf") / "terraform"
    shutil.copytree(TF_DIR, work, ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "*.tfstate*"))
    proc = _run(["init", "-backend=false", f"-plugin-dir={plugin_dir}", "-no-color"], work, tf_env)
    assert proc.returncode == 0, f"terraform init failed:\n{proc.stdout}\n{proc.stderr}"
    return work


def test_fmt_is_clean(tf_env):
    proc = _run(["fmt", "-check", "-recursive", "-diff", "-no-color"], TF_DIR, tf_env)
    assert proc.returncode == 0, f"run `terraform fmt -recursive infra/terraform`:\n{proc.stdout}{proc.stderr}"


def test_provider_is_pinned_to_the_mirror_version(tf_workdir):
    pinned = re.search(r'version\s*=\s*"([0-9.]+)"', (TF_DIR / "versions.tf").read_text())
    assert pinned, "versions.tf must pin the aws provider to an exact version"
    mirrored = {p.name for p in (_plugin_dir() / PROVIDER).iterdir()}
    assert pinned.group(1) in mirrored, f"versions.tf pins {pinned.group(1)}; the mirror has {sorted(mirrored)}"
    lock = (tf_workdir / ".terraform.lock.hcl").read_text()
    assert f'provider "{PROVIDER}"' in lock
    assert re.search(rf'version\s*=\s*"{re.escape(pinned.group(1))}"', lock), lock


def test_validate_has_no_errors_or_warnings(tf_workdir, tf_env):
    proc = _run(["validate", "-json", "-no-color"], tf_workdir, tf_env)
    result = json.loads(proc.stdout)
    assert result["valid"], result["diagnostics"]
    assert (result["error_count"], result["warning_count"]) == (0, 0), result["diagnostics"]


@pytest.mark.slow  # ~20 s: each run plans and applies the whole stack against the mock
def test_security_properties_with_mocked_aws(tf_workdir, tf_env):
    """Every `run` block in infra/terraform/tests must run and pass (none skipped)."""
    runs = sum(len(re.findall(r'^run\s+"', p.read_text(), flags=re.M)) for p in (TF_DIR / "tests").glob("*.tftest.hcl"))
    assert runs >= 3
    proc = _run(["test", "-no-color"], tf_workdir, tf_env, timeout=600)
    assert proc.returncode == 0, f"terraform test failed:\n{proc.stdout}\n{proc.stderr}"
    summary = re.search(r"Success! (\d+) passed, 0 failed\.", proc.stdout)
    assert summary and int(summary.group(1)) == runs, proc.stdout
