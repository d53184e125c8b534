"""Typed configs: YAML + key=value overrides; unknown keys and wrong types name the key and the file."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import Literal

import pytest

from orchestration.config import (
    CONFIG_KINDS,
    ConfigError,
    config_class,
    flatten,
    load_config,
    parse_overrides,
    to_dict,
)
from pipelines.config import config_dataclass
from pipelines.storage import StorageConfig

REPO = Path(__file__).resolve().parents[2]


@config_dataclass
class Optim:
    lr: float = 1e-4
    schedule: Literal["cosine", "constant"] = "cosine"

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}; use e.g. 1e-4")


@config_dataclass
class Job:
    name: str
    steps: int = 10
    tags: tuple[str, ...] = ()
    optim: Optim = field(default_factory=Optim)
    storage: StorageConfig = field(default_factory=StorageConfig)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


def test_yaml_and_overrides(tmp_path):
    p = _write(tmp_path, "name: a\nsteps: 3\noptim:\n  lr: 1.0e-3\n")
    cfg = load_config(Job, p, ["optim.schedule=constant", "tags=[x, y]", "steps=7"])
    assert cfg == Job(name="a", steps=7, tags=("x", "y"), optim=Optim(lr=1e-3, schedule="constant"))


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    # PyYAML reads `1e-4` as a string; the typed config still gets a float.
    assert load_config(Job, _write(tmp_path, "name: a\noptim: {lr: 1e-4}\n")).optim.lr == 1e-4


def test_unknown_key_names_file_key_and_allowed(tmp_path):
    p = _write(tmp_path, "name: a\noptim:\n  lrr: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(Job, p)
    assert str(e.value) == f"{p}: key 'optim.lrr': unknown key; allowed: lr, schedule"


def test_wrong_type_names_file_and_key(tmp_path):
    p = _write(tmp_path, "name: a\nsteps: many\n")
    with pytest.raises(ConfigError, match=rf"{p}: key 'steps': Input should be a valid integer.*'many'"):
        load_config(Job, p)


def test_bad_override_is_called_an_override(tmp_path):
    p = _write(tmp_path, "name: a\n")
    with pytest.raises(ConfigError, match=r"override 'optim.schedule': Input should be 'cosine' or 'constant'"):
        load_config(Job, p, ["optim.schedule=linear"])


def test_post_init_check_message_reaches_user(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'optim': Value error, lr must be > 0, got -1.0; use e.g. 1e-4"):
        load_config(Job, _write(tmp_path, "name: a\noptim: {lr: -1}\n"))


def test_missing_required_key(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'name': required, but not set"):
        load_config(Job, _write(tmp_path, "steps: 1\n"))


@pytest.mark.parametrize(
    ("text", "match"),
    [("- a\n- b\n", "top level must be a mapping"), ("a: [1\n", "not valid YAML")],
)
def test_malformed_files(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Job, _write(tmp_path, text))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: config file not found"):
        load_config(Job, tmp_path / "nope.yaml")


@pytest.mark.parametrize("bad", ["noequals", "=1"])
def test_override_syntax(bad):
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides([bad])


def test_override_values_are_yaml():
    assert parse_overrides(["a.b=1", "a.c=true", "d=[1, 2]", "e=text", "f="]) == {
        "a": {"b": 1, "c": True},
        "d": [1, 2],
        "e": "text",
        "f": None,
    }


def test_configs_are_frozen():
    cfg = Job(name="a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3


def test_to_dict_redacts_secrets_and_flattens():
    cfg = Job(name="a", storage=StorageConfig(endpoint_url="http://e", secret_access_key="s3cr3t"))
    flat = flatten(to_dict(cfg))
    assert flat["storage.secret_access_key"] == "***"
    assert flat["storage.access_key_id"] is None  # unset stays visible as unset
    assert flat["storage.endpoint_url"] == "http://e"
    assert flat["optim.lr"] == 1e-4
    assert "s3cr3t" not in repr(flat)


def test_unknown_kind_lists_known_ones():
    with pytest.raises(ConfigError, match="known kinds: "):
        config_class("nope")


# Every YAML under configs/ loads against its typed config (kind = its folder).
ALL_YAML = sorted((REPO / "configs").rglob("*.yaml"))


def test_every_config_folder_is_a_known_kind():
    kinds = {p.parent.name for p in ALL_YAML}
    assert kinds, "configs/ holds no YAML"
    assert kinds <= set(CONFIG_KINDS), f"folders without a registered kind: {kinds - set(CONFIG_KINDS)}"


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_under_configs_loads(path):
    cfg = load_config(None, path)
    assert dataclasses.is_dataclass(cfg)
    assert type(cfg) is config_class(path.parent.name)
