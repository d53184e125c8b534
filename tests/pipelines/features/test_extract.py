"""Extraction writes the features the frozen encoders give on the same decoded frames, views and audio."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from harness.media_shards import extract_here, video_members, write_media_shard
from PIL import Image

from model.frozen_encoders import EncoderCheckpoints, FrozenEncoders, save_random_checkpoints
from model.preprocess import (
    FramePreprocessConfig,
    preprocess_audio,
    preprocess_image,
    preprocess_video,
    sample_frame_indices,
)
from pipelines import storage
from pipelines.features import decode, extract
from pipelines.features import format as fmt
from pipelines.features import store as st
from pipelines.features.views import view_generator


def _cfg(tmp_path: Path, weights: Path, **preprocess) -> extract.FeatureExtractConfig:
    return extract.FeatureExtractConfig(
        sources={"webvid": str(tmp_path / "media" / "webvid"), "cc3m": str(tmp_path / "media" / "cc3m")},
        root=str(tmp_path / "stores"),
        encoders={"weights": str(weights), "image": "tiny", "imagebind": "tiny"},
        preprocess=preprocess or {"num_frames": 4, "views": 2, "sampling": "headtail", "crop": True, "seed": 7},
        batch_frames=6,  # smaller than one sample's 2 views x 4 frames: batches of whole samples, one each
        progress=False,
    )


@pytest.fixture(scope="module")
def encoders(tiny_weights):
    return FrozenEncoders.from_checkpoints(EncoderCheckpoints.in_directory(tiny_weights), "tiny", "tiny")


def _store_samples(store: str, dataset: str) -> dict[str, fmt.FeatureSample]:
    out = {}
    for i in fmt.complete_shards(store, dataset):
        out.update({s.key: s for s in fmt.iter_shard(fmt.shard_uri(store, dataset, i))})
    return out


def _close(stored: np.ndarray, expected: torch.Tensor) -> None:
    """Equal to fp16 precision: the store keeps fp16, the reference is the fp32 forward."""
    assert stored.dtype == np.float16
    scale = float(expected.abs().max())
    np.testing.assert_allclose(stored.astype(np.float32), expected.numpy(), rtol=1e-3, atol=1e-3 * scale)


def test_features_equal_the_encoders_on_the_same_frames_crops_and_audio(
    tmp_path, tiny_weights, encoders, sample_data, make_shards
):
    make_shards(str(tmp_path / "media" / "webvid"), "video", per_shard=2, limit=3)  # 2 shards: 2 + 1 videos
    make_shards(str(tmp_path / "media" / "cc3m"), "image", per_shard=2, limit=2)
    cfg = _cfg(tmp_path, tiny_weights)
    summary = extract_here(cfg)
    assert summary.shards_computed == ["cc3m/00000", "webvid/00000", "webvid/00001"] and not summary.shards_failed
    assert (summary.samples_ok, summary.samples_failed) == (5, 0)
    assert summary.frames == 3 * 2 * 4 + 2 * 2  # videos: 2 views x 4 frames; images: 2 views x 1 frame

    frame_cfg = FramePreprocessConfig(num_frames=4)
    videos = _store_samples(summary.store, "webvid")
    assert sorted(videos) == sorted(s.id for s in sample_data.videos[:3])
    assert {s.has_audio for s in sample_data.videos[:3]} == {True, False}
    for s in sample_data.videos[:3]:
        got, path = videos[s.id], Path(sample_data.path(s.file))
        assert got.text == s.caption and got.meta["videoid"] == s.id
        assert got.vl.shape == (2, 4, 32, 64) and got.ibv.shape == (2, 4, 64)
        for v in range(2):
            g = view_generator(7, s.id, v)  # indices first, then the crop, from the view's own generator
            indices = sample_frame_indices(s.frames, "headtail", 4, g)
            assert got.meta["frame_indices"][v] == indices
            frames = preprocess_video(decode.decode_frames(path, indices), True, g, frame_cfg)
            qformer, vision = encoders.encode_frames(frames)
            _close(got.vl[v], qformer)
            _close(got.ibv[v], vision)
        assert not np.array_equal(got.vl[0], got.vl[1])  # two different draws
        assert got.meta["frame_seconds"] == [round(i / s.fps, 1) for i in got.meta["frame_indices"][0]]
        if s.has_audio:
            clips = preprocess_audio(decode.decode_audio(path), s.sample_rate)
            _close(got.iba, encoders.encode_audio(clips[None])[0])
        else:
            assert got.iba is None

    images = _store_samples(summary.store, "cc3m")
    for s in sample_data.images[:2]:
        got = images[s.id]
        assert got.vl.shape == (2, 1, 32, 64) and got.iba is None and got.text == s.caption
        for v in range(2):
            x = preprocess_image(Image.open(sample_data.path(s.file)), True, view_generator(7, s.id, v), frame_cfg)
            qformer, vision = encoders.encode_frames(x[None])
            _close(got.vl[v], qformer)
            _close(got.ibv[v], vision)

    manifest = fmt.read_manifest(summary.store)
    assert manifest["fingerprint"] == summary.fingerprint and manifest["views"] == 2
    assert manifest["dims"]["vl"] == [2, "T", 32, 64] and manifest["dims"]["iba"] == [8, 64]
    webvid = manifest["datasets"]["webvid"]
    assert webvid["samples"] == 3 and sorted(webvid["shards"]) == ["00000", "00001"]
    media_stats = json.loads(storage.read_text(str(tmp_path / "media" / "webvid" / "00001_stats.json")))
    assert webvid["shards"]["00001"]["source_sha256"] == media_stats["tar_sha256"]
    assert manifest["runs"][-1]["frames"] == summary.frames


def test_deterministic_view_is_uniform_frames_without_crop(tmp_path, tiny_weights, encoders, sample_data, make_shards):
    make_shards(str(tmp_path / "media" / "webvid"), "video", per_shard=2, limit=2)
    make_shards(str(tmp_path / "media" / "cc3m"), "image", per_shard=1, limit=1)
    summary = extract_here(_cfg(tmp_path, tiny_weights, num_frames=8))
    s = sample_data.videos[0]
    got = _store_samples(summary.store, "webvid")[s.id]
    indices = sample_frame_indices(s.frames, "uniform", 8)
    assert got.vl.shape == (1, 8, 32, 64) and got.meta["frame_indices"] == [indices]
    frames = preprocess_video(decode.decode_frames(Path(sample_data.path(s.file)), indices), train=False)
    _close(got.vl[0], encoders.encode_frames(frames)[0])
    image = sample_data.images[0]
    x = preprocess_image(Image.open(sample_data.path(image.file)), train=False)
    _close(_store_samples(summary.store, "cc3m")[image.id].vl[0], encoders.encode_frames(x[None])[0])


def test_a_broken_sample_is_recorded_with_its_reason_and_the_rest_written(
    tmp_path, tiny_weights, sample_data, make_shards
):
    good = [(s.id, video_members(sample_data, s)) for s in sample_data.videos[:2]]
    mp4 = Path(sample_data.path(sample_data.videos[2].file)).read_bytes()
    truncated = ("broken_mp4", {"mp4": mp4[: len(mp4) // 3], "txt": b"cut short", "json": b"{}"})
    no_media = ("text_only", {"txt": b"a caption without its video", "json": b"{}"})
    bad_json = ("bad_json", {"mp4": mp4, "txt": b"x", "json": b"{not json"})
    write_media_shard(str(tmp_path / "media" / "webvid"), 0, [good[0], truncated, no_media, bad_json, good[1]])
    make_shards(str(tmp_path / "media" / "cc3m"), "image", per_shard=1, limit=1)
    summary = extract_here(_cfg(tmp_path, tiny_weights))
    assert summary.shards_computed == ["cc3m/00000", "webvid/00000"]
    assert (summary.samples_ok, summary.samples_failed) == (3, 3)

    marker = st.read_marker(summary.store, "webvid", 0)
    status = {s["key"]: s for s in marker["status"]}
    assert [s["key"] for s in marker["status"]] == sorted(status)  # every sample, in shard order
    assert len(status) == 5 and status[good[0][0]] == {"key": good[0][0], "status": "ok", "frames": 4, "audio": True}
    broken, text_only, bad_json = status["broken_mp4"], status["text_only"], status["bad_json"]
    assert (broken["status"], broken["category"]) == ("failed", "corrupt") and "broken_mp4.mp4: ffprobe" in broken[
        "error"
    ]
    assert text_only["category"] == "not_video" and "no media member (has json, txt" in text_only["error"]
    assert bad_json["category"] == "corrupt" and "json member is not valid JSON" in bad_json["error"]
    assert marker["categories"] == {"corrupt": 2, "not_video": 1, "ok": 2}
    written = [s.key for s in fmt.iter_shard(fmt.shard_uri(summary.store, "webvid", 0))]
    assert written == sorted(k for k, _ in good)


def test_a_corrupt_media_shard_fails_by_name_and_the_others_complete(tmp_path, tiny_weights, make_shards):
    media = tmp_path / "media" / "webvid"
    make_shards(str(media), "video", per_shard=2, limit=6)  # shards 0, 1, 2
    raw = bytearray((media / "00001.tar").read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside a video
    (media / "00001.tar").write_bytes(bytes(raw))
    (media / "00002.tar").unlink()  # its _stats.json stays: ingested once, the tar lost since
    make_shards(str(tmp_path / "media" / "cc3m"), "image", per_shard=1, limit=1)
    summary = extract_here(_cfg(tmp_path, tiny_weights))
    assert summary.shards_computed == ["cc3m/00000", "webvid/00000"]
    assert list(summary.shards_failed) == ["webvid/00001"]
    assert "00001.tar: sha256" in summary.shards_failed["webvid/00001"] and "re-ingest" in summary.text()
    assert list(summary.sources_missing) == ["webvid/00002"]
    assert fmt.complete_shards(summary.store, "webvid") == [0]
    assert not (Path(summary.store) / "webvid" / "00001.tar").exists()  # nothing half-written


def _with(cfg: extract.FeatureExtractConfig, **changes) -> extract.FeatureExtractConfig:
    """`cfg` with top-level fields, or `preprocess__x` / `encoders__x` nested ones, replaced."""
    nested: dict[str, dict] = {}
    for name in list(changes):
        if "__" in name:
            section, field = name.split("__")
            nested.setdefault(section, {})[field] = changes.pop(name)
    for section, fields in nested.items():
        changes[section] = dataclasses.replace(getattr(cfg, section), **fields)
    return dataclasses.replace(cfg, **changes)


def test_fingerprint_follows_what_changes_features_and_only_that(tmp_path, tiny_weights, make_shards):
    make_shards(str(tmp_path / "media" / "webvid"), "video", per_shard=2, limit=4)
    make_shards(str(tmp_path / "media" / "cc3m"), "image", per_shard=2, limit=2)
    base = _cfg(tmp_path, tiny_weights, num_frames=8)
    fp = extract.plan(base).fingerprint
    # run settings, and a seed or crop scale the deterministic view never uses, keep the store
    same = _with(base, actors=3, batch_frames=7, progress=True, preprocess__seed=99, preprocess__crop_scale=(0.7, 1))
    assert extract.plan(same).fingerprint == fp
    changes = [
        {"preprocess__num_frames": 4},
        {"preprocess__sampling": "headtail"},
        {"preprocess__crop": True},
        {"preprocess__views": 2, "preprocess__crop": True},
        {"preprocess__crop": True, "preprocess__crop_scale": (0.6, 1.0)},
        {"preprocess__audio": False},
        {"encoders__dtype": "bfloat16"},
    ]
    prints = {extract.plan(_with(base, **c)).fingerprint for c in changes}
    assert len(prints) == len(changes) and fp not in prints

    other = tmp_path / "other-weights"
    shutil.copytree(tiny_weights, other)
    assert extract.plan(_with(base, encoders__weights=str(other))).fingerprint == fp  # same bytes elsewhere
    save_random_checkpoints(other, "tiny", "tiny", seed=4)
    assert extract.plan(_with(base, encoders__weights=str(other))).fingerprint != fp  # other weights


def test_a_changed_media_shard_is_planned_again(tmp_path, tiny_weights, sample_data, make_shards):
    make_shards(str(tmp_path / "media" / "webvid"), "video", per_shard=2, limit=4)
    make_shards(str(tmp_path / "media" / "cc3m"), "image", per_shard=2, limit=2)
    cfg = _cfg(tmp_path, tiny_weights, num_frames=2)
    assert len(extract_here(cfg).shards_computed) == 3 and extract.plan(cfg).tasks == []
    rewritten = [(s.id, video_members(sample_data, s)) for s in sample_data.videos[6:8]]
    write_media_shard(str(tmp_path / "media" / "webvid"), 1, rewritten)  # re-ingested with other rows
    assert [(t["dataset"], t["index"]) for t in extract.plan(cfg).tasks] == [("webvid", 1)]
    summary = extract_here(cfg)
    assert summary.shards_computed == ["webvid/00001"] and summary.shards_up_to_date == 2
    assert [s.key for s in fmt.iter_shard(fmt.shard_uri(summary.store, "webvid", 1))] == [k for k, _ in rewritten]
