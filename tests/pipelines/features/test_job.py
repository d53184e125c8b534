"""The Ray Data job: an actor pool over media shards, reusing a store, local and on S3 (moto)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from harness.media_shards import image_members, video_members, write_media_shard

from model.frozen_encoders import EncoderCheckpoints, FrozenEncoders
from model.preprocess import preprocess_video, sample_frame_indices
from pipelines import storage
from pipelines.features import decode, extract
from pipelines.features import format as fmt
from pipelines.features import store as st
from pipelines.features.views import view_generator


def _cfg(media: str, root: str, weights: str) -> extract.FeatureExtractConfig:
    return extract.FeatureExtractConfig(
        sources={"webvid": storage.join(media, "webvid"), "cc3m": storage.join(media, "cc3m")},
        root=root,
        encoders={"weights": weights, "image": "tiny", "imagebind": "tiny"},
        preprocess={"num_frames": 4, "views": 2, "sampling": "headtail", "crop": True},
        decode_workers=2,
        progress=False,
    )


def _media(sample_data, media: str, videos: int, per_shard: int) -> None:
    items = [(s.id, video_members(sample_data, s)) for s in sample_data.videos[:videos]]
    for index, start in enumerate(range(0, videos, per_shard)):
        write_media_shard(storage.join(media, "webvid"), index, items[start : start + per_shard])
    write_media_shard(
        storage.join(media, "cc3m"), 0, [(s.id, image_members(sample_data, s)) for s in sample_data.images[:2]]
    )


@pytest.mark.slow
def test_second_run_computes_nothing_and_a_new_shard_computes_one(ray_local, tmp_path, tiny_weights, sample_data):
    media = str(tmp_path / "media")
    _media(sample_data, media, videos=4, per_shard=2)
    cfg = _cfg(media, str(tmp_path / "stores"), str(tiny_weights))

    first = extract.run(cfg)
    assert first.shards_computed == ["cc3m/00000", "webvid/00000", "webvid/00001"] and not first.shards_failed
    assert (first.samples_ok, first.frames) == (6, 4 * 2 * 4 + 2 * 2)
    assert first.frames_per_s > 0 and 0 < first.encoder_busy < 1
    assert "frames/s" in first.text() and "encoders busy" in first.text()

    # what the actors wrote equals the encoders run here on the same decoded frames and crop
    s = sample_data.videos[3]
    got = next(x for x in fmt.iter_shard(fmt.shard_uri(first.store, "webvid", 1)) if x.key == s.id)
    encoders = FrozenEncoders.from_checkpoints(EncoderCheckpoints.in_directory(tiny_weights), "tiny", "tiny")
    g = view_generator(cfg.preprocess.seed, s.id, 1)
    indices = sample_frame_indices(s.frames, "headtail", 4, g)
    frames = preprocess_video(decode.decode_frames(Path(sample_data.path(s.file)), indices), True, g)
    qformer, vision = encoders.encode_frames(frames)
    np.testing.assert_allclose(
        got.vl[1].astype(np.float32), qformer.numpy(), rtol=1e-3, atol=1e-3 * float(qformer.abs().max())
    )
    np.testing.assert_allclose(
        got.ibv[1].astype(np.float32), vision.numpy(), rtol=1e-3, atol=1e-3 * float(vision.abs().max())
    )

    second = extract.run(cfg)
    assert (second.shards_computed, second.shards_up_to_date, second.frames) == ([], 3, 0)
    assert "nothing to do" in second.text()

    new = [(s.id, video_members(sample_data, s)) for s in sample_data.videos[4:6]]
    write_media_shard(storage.join(media, "webvid"), 2, new)
    third = extract.run(cfg)
    assert third.shards_computed == ["webvid/00002"] and third.shards_up_to_date == 3
    assert third.store == first.store and fmt.complete_shards(first.store, "webvid") == [0, 1, 2]
    manifest = fmt.read_manifest(first.store)
    assert manifest["datasets"]["webvid"]["samples"] == 6 and len(manifest["runs"]) == 3
    assert [r["shards_computed"] for r in manifest["runs"]] == [3, 0, 1]


@pytest.mark.slow
def test_media_store_and_weights_on_s3(ray_local, s3_bucket, tmp_path, tiny_weights, sample_data):
    media = f"{s3_bucket}/media"
    _media(sample_data, media, videos=3, per_shard=2)
    weights = f"{s3_bucket}/weights"
    for path in tiny_weights.iterdir():
        storage.write_bytes(storage.join(weights, path.name), path.read_bytes())
    cfg = _cfg(media, f"{s3_bucket}/stores", weights)
    cfg = replace(cfg, encoders=replace(cfg.encoders, cache_dir=str(tmp_path / "weights-cache")))

    summary = extract.run(cfg)
    assert summary.store.startswith(f"{s3_bucket}/stores/") and not summary.shards_failed
    assert summary.shards_computed == ["cc3m/00000", "webvid/00000", "webvid/00001"]
    assert sorted(p.name for p in (tmp_path / "weights-cache").rglob("*.pth")) == sorted(
        p.name for p in tiny_weights.iterdir()
    )
    # the same config with the weights read locally is the same store: identity is content, not location
    local = replace(cfg, encoders=replace(cfg.encoders, weights=str(tiny_weights)))
    assert extract.plan(local).fingerprint == summary.fingerprint and extract.plan(local).tasks == []

    samples = list(fmt.iter_shard(fmt.shard_uri(summary.store, "webvid", 0)))
    assert [s.key for s in samples] == [s.id for s in sample_data.videos[:2]]
    assert all(s.vl.shape == (2, 4, 32, 64) and s.vl.dtype == np.float16 for s in samples)
    marker = st.read_marker(summary.store, "webvid", 1)
    assert marker["source"]["tar"] == f"{media}/webvid/00001.tar" and marker["ok"] == 1
