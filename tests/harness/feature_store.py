"""Write small feature stores in the real shard format (pipelines/features/format.py) for training tests.

Features are simple and informative: each caption attribute (colour, shape, direction) has a fixed
random direction in feature space, and a sample's features are the sum of its attributes' vectors
plus noise, so a model can learn captions from them and its loss visibly falls.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass

import numpy as np

from pipelines import storage
from pipelines.features import format as fmt

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("to the left", "to the right", "up", "down")


@dataclass(frozen=True)
class StoreSpec:
    vl_width: int = 64  # the tiny image Q-Former width
    ib_width: int = 64  # the tiny ImageBind width
    frames: int = 4
    views: int = 2
    noise: float = 0.3


def _caption(i: int) -> tuple[str, int, int, int]:
    c, s, d = i % len(COLOURS), (i // len(COLOURS)) % len(SHAPES), (i // 7) % len(DIRECTIONS)
    article = "an" if COLOURS[c][0] in "aeiou" else "a"
    return f"{article} {COLOURS[c]} {SHAPES[s]} moves {DIRECTIONS[d]}", c, s, d


def make_sample(
    key: str, i: int, spec: StoreSpec, rng: np.random.Generator, text: str = "caption"
) -> fmt.FeatureSample:
    """Sample number i of a dataset: its caption attributes cycle deterministically with i."""
    basis = np.random.default_rng(1234)  # the same attribute vectors in every store
    vl_attr = [basis.standard_normal((n, spec.vl_width)) for n in (len(COLOURS), len(SHAPES), len(DIRECTIONS))]
    ib_attr = [basis.standard_normal((n, spec.ib_width)) for n in (len(COLOURS), len(SHAPES), len(DIRECTIONS))]
    caption, c, s, d = _caption(i)
    vl_mean = vl_attr[0][c] + vl_attr[1][s] + vl_attr[2][d]  # (H,)
    ib_mean = ib_attr[0][c] + ib_attr[1][s] + ib_attr[2][d]  # (D,)
    vl = vl_mean + spec.noise * rng.standard_normal((spec.views, spec.frames, 32, spec.vl_width))
    ibv = ib_mean + spec.noise * rng.standard_normal((spec.views, spec.frames, spec.ib_width))
    meta: dict = {"index": i}
    if text == "conversation":
        colour, shape = COLOURS[c], SHAPES[s]
        meta["QA"] = [{"q": "What color is the moving shape?", "a": f"The {shape} is {colour}."}]
    return fmt.FeatureSample(key=key, vl=vl.astype(np.float16), ibv=ibv.astype(np.float16), text=caption, meta=meta)


def write_shard(uri: str, samples: list[fmt.FeatureSample]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for sample in samples:
            for suffix, data in fmt.encode(sample).items():
                info = tarfile.TarInfo(f"{sample.key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    storage.write_bytes(uri, buf.getvalue())


def write_dataset(
    store: str,
    dataset: str,
    n: int,
    per_shard: int,
    spec: StoreSpec = StoreSpec(),
    text: str = "caption",
    seed: int = 0,
) -> list[str]:
    """n samples in shards of `per_shard`, each shard with its completion marker; returns the keys."""
    rng = np.random.default_rng(seed)
    samples = [make_sample(f"{dataset}-{i:05d}", i, spec, rng, text) for i in range(n)]
    for index, start in enumerate(range(0, n, per_shard)):
        part = samples[start : start + per_shard]
        write_shard(fmt.shard_uri(store, dataset, index), part)
        storage.write_text(fmt.marker_uri(store, dataset, index), json.dumps({"ok": len(part)}))
    return [s.key for s in samples]


def write_store(store: str, datasets: dict[str, int], per_shard: int = 8, spec: StoreSpec = StoreSpec(), **kw) -> str:
    """A store with a manifest and the given datasets ({name: samples})."""
    storage.write_text(
        storage.join(store, fmt.MANIFEST),
        json.dumps(
            {"fingerprint": store.rstrip("/").rsplit("/", 1)[-1], "datasets": sorted(datasets), "views": spec.views}
        ),
    )
    for seed, (name, n) in enumerate(sorted(datasets.items())):
        write_dataset(store, name, n, per_shard, spec, seed=seed, **kw)
    return store
