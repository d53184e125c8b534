"""The feature-shard format round-trips and is read back in order, locally and on S3."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from pipelines import storage
from pipelines.features import format as fmt


def _sample(key: str, rng: np.random.Generator, audio: bool) -> fmt.FeatureSample:
    return fmt.FeatureSample(
        key=key,
        vl=rng.standard_normal((2, 8, 32, 16)).astype(np.float16),
        ibv=rng.standard_normal((2, 8, 24)).astype(np.float16),
        iba=rng.standard_normal((8, 24)).astype(np.float16) if audio else None,
        text="a red circle moves to the left",
        meta={"videoid": key, "conversations": [{"from": "human", "value": "what colour?"}]},
    )


def _write_tar(uri: str, samples: list[fmt.FeatureSample]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for s in samples:
            for suffix, data in fmt.encode(s).items():
                info = tarfile.TarInfo(f"{s.key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    storage.write_bytes(uri, buf.getvalue())


def _assert_same(a: fmt.FeatureSample, b: fmt.FeatureSample) -> None:
    assert a.key == b.key and a.text == b.text and a.meta == b.meta
    for name in fmt.ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None)
        if x is not None:
            assert x.dtype == y.dtype == np.float16 and np.array_equal(x, y)


def test_encode_decode_round_trip():
    s = _sample("0001", np.random.default_rng(0), audio=False)
    members = fmt.encode(s)
    assert set(members) == {"vl.npy", "ibv.npy", "txt", "json"}
    _assert_same(fmt.decode("0001", members), s)
    assert s.views == 2


def test_arrays_are_never_pickled():
    bad = fmt.FeatureSample(key="k", vl=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError):
        fmt.encode(bad)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_shards_read_back_in_order_and_markers_mark_completion(where, tmp_path, request):
    store = str(tmp_path / "fp") if where == "local" else request.getfixturevalue("s3_bucket") + "/fp"
    rng = np.random.default_rng(1)
    samples = [_sample(f"{i:04d}", rng, audio=i % 2 == 0) for i in range(5)]
    _write_tar(fmt.shard_uri(store, "webvid", 0), samples[:3])
    _write_tar(fmt.shard_uri(store, "webvid", 1), samples[3:])
    storage.write_text(fmt.marker_uri(store, "webvid", 0), json.dumps({"ok": 3}))
    # shard 1 has no marker yet: it is not complete
    assert fmt.complete_shards(store, "webvid") == [0]
    assert fmt.datasets(store) == ["webvid"]
    got = [*fmt.iter_shard(fmt.shard_uri(store, "webvid", 0)), *fmt.iter_shard(fmt.shard_uri(store, "webvid", 1))]
    assert [g.key for g in got] == [s.key for s in samples]
    for g, s in zip(got, samples, strict=True):
        _assert_same(g, s)


def test_missing_manifest_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `vllama features extract`"):
        fmt.read_manifest(str(tmp_path))


def test_training_refs_live_beside_the_datasets_and_are_not_one(tmp_path):
    store = str(tmp_path / "fp")
    _write_tar(fmt.shard_uri(store, "webvid", 0), [_sample("0001", np.random.default_rng(2), audio=False)])
    fmt.write_ref(store, "vl_stage1_tiny", {"run_dir": "/runs/vl_stage1_tiny"})
    assert json.loads(storage.read_text(fmt.ref_uri(store, "vl_stage1_tiny"))) == {"run_dir": "/runs/vl_stage1_tiny"}
    assert fmt.datasets(store) == ["webvid"]
