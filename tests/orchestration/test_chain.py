"""The chain config: roots and earlier stages' outputs substituted into overrides, every stage's
config checked before the first stage runs, and the configs/chain files valid."""

from __future__ import annotations

import pytest

from orchestration import chain
from orchestration.config import ConfigError, load_config


def test_expand_substitutes_roots_and_outputs():
    values = {"media": "s3://m/shards", "store": "s3://f/stores/abc"}
    out = chain.expand(("out=${media}/webvid", "data.store=${store}", "plain=1"), values)
    assert out == ["out=s3://m/shards/webvid", "data.store=s3://f/stores/abc", "plain=1"]


def test_expand_names_an_unset_variable():
    with pytest.raises(ConfigError, match=r"data.store=\$\{store\}.*\$\{store\} is not set.*\$\{media\}"):
        chain.expand(("data.store=${store}",), {"media": "x"})


def test_train_reading_the_store_needs_a_features_stage_before_it():
    with pytest.raises(ValueError, match=r"stages\[0\] \(train\) reads \$\{store\}"):
        chain.ChainConfig(
            name="x", stages=(chain.ChainStage(stage="train", config="c.yaml", overrides=("data.store=${store}",)),)
        )


@pytest.mark.parametrize("path", ["configs/chain/demo.yaml", "configs/chain/full_7b.yaml"])
def test_every_stage_of_the_shipped_chains_loads(path):
    cfg = load_config(chain.ChainConfig, path, ["media=s3://other/shards"])
    chain.check(cfg)  # raises on any stage's bad key
    assert cfg.media == "s3://other/shards"


def test_check_names_the_stage_and_key_before_anything_runs(tmp_path):
    bad = tmp_path / "chain.yaml"
    bad.write_text(
        "name: bad\nstages:\n"
        "  - {stage: ingest_webvid, config: configs/ingest_webvid/tiny.yaml}\n"
        "  - {stage: features, config: configs/features/tiny.yaml, overrides: ['actorz=2']}\n"
    )
    cfg = load_config(chain.ChainConfig, str(bad), [])
    with pytest.raises(ConfigError, match=r"chain stage 2 \(features\).*actorz"):
        chain.check(cfg)
