"""`features ls|show|verify|gc` on a store written by extraction: corruption found by shard name, gc by refs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from harness.media_shards import extract_here

from pipelines import storage
from pipelines.features import extract, manage
from pipelines.features import format as fmt
from pipelines.features import store as st


def _cfg(tmp_path: Path, weights: Path, root: str, num_frames: int = 2) -> extract.FeatureExtractConfig:
    return extract.FeatureExtractConfig(
        sources={"webvid": str(tmp_path / "media" / "webvid"), "cc3m": str(tmp_path / "media" / "cc3m")},
        root=root,
        encoders={"weights": str(weights), "image": "tiny", "imagebind": "tiny"},
        preprocess={"num_frames": num_frames},
        progress=False,
    )


@pytest.fixture
def store(tmp_path, tiny_weights, make_shards) -> str:
    make_shards(str(tmp_path / "media" / "webvid"), "video", per_shard=2, limit=4)
    make_shards(str(tmp_path / "media" / "cc3m"), "image", per_shard=2, limit=2)
    return extract_here(_cfg(tmp_path, tiny_weights, str(tmp_path / "stores"))).store


def test_a_fresh_store_verifies(store):
    report = manage.verify(store)
    assert report.ok and (report.shards, report.samples) == (3, 6)
    assert report.bytes == sum(m["tar_bytes"] for ds in ("webvid", "cc3m") for m in st.markers(store, ds).values())


def test_verify_finds_a_flipped_byte_by_shard_name(store):
    tar = Path(fmt.shard_uri(store, "webvid", 1))
    raw = bytearray(tar.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # inside an array: the tar still parses, only the checksum can tell
    tar.write_bytes(bytes(raw))
    report = manage.verify(store)
    assert list(report.problems) == ["webvid/00001"]
    assert report.problems["webvid/00001"][0].startswith("checksum mismatch")


def test_verify_finds_a_truncated_tar_by_shard_name(store):
    tar = Path(fmt.shard_uri(store, "cc3m", 0))
    tar.write_bytes(tar.read_bytes()[:5000])
    problems = manage.verify(store).problems
    assert list(problems) == ["cc3m/00000"]
    assert problems["cc3m/00000"][0].startswith("checksum mismatch: 5000 bytes")
    assert any("unreadable after" in p for p in problems["cc3m/00000"])


def test_verify_finds_shapes_and_dtypes_that_disagree_with_the_manifest(store):
    manifest = fmt.read_manifest(store)
    manifest["dims"]["vl_width"] = 768  # as if the store claimed the real Q-Former width
    st.write_manifest(store, manifest)
    problems = manage.verify(store).problems
    assert sorted(problems) == ["cc3m/00000", "webvid/00000", "webvid/00001"]
    assert "vl.npy has shape (1, 2, 32, 64), the manifest says (1, 2, 32, 768)" in problems["webvid/00000"][0]

    manifest["dims"]["vl_width"] = 64
    st.write_manifest(store, manifest)
    sample = next(iter(fmt.iter_shard(fmt.shard_uri(store, "webvid", 0))))  # rewrite shard 0 with fp32 ibv
    bad = fmt.FeatureSample(sample.key, sample.vl, sample.ibv.astype(np.float32), sample.iba, sample.text, sample.meta)
    with st.ShardWriter(fmt.shard_uri(store, "webvid", 0)) as writer:
        writer.add(bad)
    marker = st.read_marker(store, "webvid", 0)
    marker.update(tar_bytes=writer.size, tar_sha256=writer.sha256, status=marker["status"][:1])
    st.write_marker(store, "webvid", 0, marker)
    problems = manage.verify(store).problems
    assert list(problems) == ["webvid/00000"] and problems["webvid/00000"] == [
        f"{sample.key}: ibv.npy is float32, the manifest says float16"
    ]


def test_verify_reports_a_missing_tar_and_a_missing_manifest(store):
    os.remove(fmt.shard_uri(store, "webvid", 0))
    os.rename(storage.join(store, fmt.MANIFEST), storage.join(store, "manifest.moved"))
    assert "run `vllama features extract`" in manage.verify(store).problems["manifest"][0]
    os.rename(storage.join(store, "manifest.moved"), storage.join(store, fmt.MANIFEST))
    problems = manage.verify(store).problems
    assert (
        list(problems) == ["webvid/00000"]
        and "the tar is missing though its marker exists" in problems["webvid/00000"][0]
    )
    assert 0 not in st.markers(store, "webvid")  # and extraction will compute it again


def test_ls_lists_stores_with_sizes_lineage_and_refs(tmp_path, tiny_weights, store):
    other = extract_here(_cfg(tmp_path, tiny_weights, str(tmp_path / "stores"), num_frames=3)).store
    st.register_run(other, "vl_stage1_tiny", {"run_dir": "/runs/vl_stage1_tiny"})
    (tmp_path / "stores" / "not-a-store").mkdir()
    found = {s.fingerprint: s for s in manage.stores(str(tmp_path / "stores"))}
    assert sorted(found) == sorted([store.rsplit("/", 1)[-1], other.rsplit("/", 1)[-1]])
    info = found[other.rsplit("/", 1)[-1]]
    assert info.refs == ["vl_stage1_tiny"] and info.samples == 6 and info.tar_bytes > 0
    assert info.datasets["webvid"]["source"] == str(tmp_path / "media" / "webvid")
    assert json.loads(storage.read_text(fmt.ref_uri(other, "vl_stage1_tiny")))["run_dir"] == "/runs/vl_stage1_tiny"
    assert 0 <= info.age_s < 600


def test_gc_removes_only_unreferenced_stores_and_dry_run_removes_nothing(tmp_path, tiny_weights, store):
    kept = extract_here(_cfg(tmp_path, tiny_weights, str(tmp_path / "stores"), num_frames=3)).store
    st.register_run(kept, "al_stage1_tiny", {})
    root = str(tmp_path / "stores")
    (tmp_path / "stores" / "not-a-store").mkdir()
    assert [s.uri for s in manage.gc(root, dry_run=True)] == [store]
    assert Path(store).exists()
    assert [s.uri for s in manage.gc(root, min_age_s=3600)] == []  # just written: maybe still being filled
    assert [s.uri for s in manage.gc(root)] == [store]
    assert not Path(store).exists() and Path(kept).exists() and (tmp_path / "stores" / "not-a-store").exists()
