"""Load typed stage configs from YAML with `key=value` overrides.

A YAML file under `configs/<kind>/` is loaded into the dataclass registered for `<kind>`
(`CONFIG_KINDS`). Unknown keys and wrong types fail with the file and the dotted key:

    configs/sample_data/tiny.yaml: key 'videoss': unknown key; allowed: videos, images, ...
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import TypeAdapter, ValidationError

from pipelines import storage

T = TypeVar("T")

# configs/<kind>/*.yaml -> "module:Class". Imported lazily so `vllama --help` stays fast.
CONFIG_KINDS: dict[str, str] = {
    "sample_data": "pipelines.sample_data:SampleDataConfig",
    "ingest_webvid": "pipelines.sources.webvid:WebVidIngestConfig",
    "ingest_cc3m": "pipelines.sources.cc3m:CC3MIngestConfig",
    "ingest_llava595k": "pipelines.sources.media_sets:MediaSetsIngestConfig",
    "ingest_instruct": "pipelines.sources.media_sets:MediaSetsIngestConfig",
    "features": "pipelines.features.extract:FeatureExtractConfig",
    "train": "orchestration.train_config:TrainConfig",
    "chain": "orchestration.chain:ChainConfig",
}

_SECRET_NAME = re.compile(r"(secret|password|token|access_key|credential)", re.IGNORECASE)
REDACTED = "***"


class ConfigError(ValueError):
    """A config file or override that does not match its typed config."""


def config_class(kind: str) -> type:
    """The dataclass registered for configs/<kind>/."""
    if kind not in CONFIG_KINDS:
        raise ConfigError(f"no config kind {kind!r}; known kinds: {', '.join(sorted(CONFIG_KINDS))}")
    module, name = CONFIG_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def kind_of(path: str | Path) -> str:
    """The kind of a config file is the name of the folder it lives in."""
    return Path(str(path)).parent.name


def parse_overrides(overrides: Sequence[str]) -> dict:
    """Turn `["a.b=1", "c=[1, 2]"]` into `{"a": {"b": 1}, "c": [1, 2]}` (values parsed as YAML)."""
    tree: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=1e-4")
        node = tree
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is already set to a value")
        node[leaf] = yaml.safe_load(raw) if raw.strip() else None
    return tree


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge; `update` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from a local path or URI; an empty file is an empty mapping."""
    try:
        text = storage.read_text(str(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def from_dict(cls: type[T], data: dict, source: str = "<dict>", overrides: Sequence[str] = ()) -> T:
    """Validate `data` into `cls`; errors name `source` and the dotted key."""
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as e:
        raise ConfigError(_describe(cls, e, source, overrides)) from None


def load_config(cls: type[T] | None, path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Load `path` (may be None: defaults only) into `cls`, then apply `key=value` overrides.

    With `cls=None` the class comes from the folder name (`configs/<kind>/x.yaml`).
    """
    if cls is None:
        if path is None:
            raise ConfigError("load_config needs a class or a path under configs/<kind>/")
        cls = config_class(kind_of(path))
    data = read_yaml(path) if path is not None else {}
    data = merge(data, parse_overrides(overrides))
    return from_dict(cls, data, str(path) if path is not None else "<defaults>", overrides)


def to_dict(cfg: Any, redact: bool = True) -> dict:
    """A plain dict of a config (for logs and MLflow params); secret-looking fields redacted."""
    out = dataclasses.asdict(cfg)
    return _redact(out) if redact else out


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _redact(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: (REDACTED if v is not None and _SECRET_NAME.search(str(k)) else _redact(v)) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return type(node)(_redact(v) for v in node)
    return node


def _describe(cls: type, err: ValidationError, source: str, overrides: Sequence[str]) -> str:
    lines = []
    override_keys = {o.partition("=")[0].strip() for o in overrides}
    for item in err.errors():
        loc = [str(p) for p in item["loc"] if not isinstance(p, int)]
        key = ".".join(loc) or "<top level>"
        where = f"override '{key}'" if key in override_keys else f"key '{key}'"
        if item["type"] == "unexpected_keyword_argument":
            allowed = _allowed_keys(cls, loc[:-1])
            msg = f"unknown key; allowed: {', '.join(allowed)}" if allowed else "unknown key"
        elif item["type"] in ("missing", "missing_argument"):
            msg = "required, but not set"
        else:
            got = item.get("input")
            msg = item["msg"] + ("" if isinstance(got, dict) else f" (got {got!r})")
        lines.append(f"{source}: {where}: {msg}")
    return "\n".join(lines)


def _allowed_keys(cls: type, path: list[str]) -> list[str]:
    """Field names of the (nested) dataclass reached by following `path` from `cls`."""
    for part in path:
        if not dataclasses.is_dataclass(cls):
            return []
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return []
        cls = _unwrap_optional(hints[part])
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def _unwrap_optional(tp: Any) -> Any:
    """`X | None` -> `X`; anything else unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp
