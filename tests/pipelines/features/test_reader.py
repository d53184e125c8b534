"""Training's view of a store: the manifest checked against the model, shard counts, samples, one view per visit."""

from __future__ import annotations

import numpy as np
import pytest
from harness.media_shards import extract_here, video_members, write_media_shard

from pipelines.features import extract, manage
from pipelines.features.reader import FeatureStore


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_weights, sample_data) -> str:
    tmp = tmp_path_factory.mktemp("reader")
    items = [(s.id, video_members(sample_data, s)) for s in sample_data.videos[:3]]
    write_media_shard(str(tmp / "webvid"), 0, items[:2])
    write_media_shard(str(tmp / "webvid"), 1, items[2:])
    cfg = extract.FeatureExtractConfig(
        sources={"webvid": str(tmp / "webvid")},
        root=str(tmp / "stores"),
        encoders={"weights": str(tiny_weights), "image": "tiny", "imagebind": "tiny"},
        preprocess={"num_frames": 2, "views": 3, "sampling": "headtail"},
        progress=False,
    )
    return extract_here(cfg).store


def test_open_checks_the_widths_the_model_expects(store):
    assert FeatureStore.open(store, vl_width=64, ib_width=64).views == 3
    with pytest.raises(ValueError, match="vl_width=64, the model expects 768"):
        FeatureStore.open(store, vl_width=768)


def test_shards_samples_and_views(store, sample_data):
    fs = FeatureStore.open(store)
    assert fs.datasets == ["webvid"] and fs.shards("webvid") == [(0, 2), (1, 1)]
    keys = [s.key for s in fs.samples("webvid")]
    assert keys == [s.id for s in sample_data.videos[:3]]
    sample = next(fs.samples("webvid", [1]))
    rng = np.random.default_rng(0)
    drawn = [fs.view(sample, rng) for _ in range(30)]
    seen = {next(v for v in range(3) if np.array_equal(vl, sample.vl[v])) for vl, _ in drawn}
    assert seen == {0, 1, 2} and drawn[0][0].shape == (2, 32, 64) and drawn[0][1].shape == (2, 64)
    with pytest.raises(KeyError, match="no dataset 'cc3m'; it has webvid"):
        fs.shards("cc3m")


def test_a_registered_run_keeps_the_store_from_gc(store):
    FeatureStore.open(store).register_run("al_stage1_tiny", {"run_dir": "/runs/x"})
    assert manage.refs(store) == ["al_stage1_tiny"]
    root = store.rsplit("/", 1)[0]
    assert manage.gc(root, dry_run=True) == []
