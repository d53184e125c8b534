"""The feature-shard format: what extraction writes and training reads.

A store:

    {root}/{fingerprint}/manifest.json                  identity, dims, dtypes, lineage (extraction writes it)
    {root}/{fingerprint}/{dataset}/{NNNNN}.tar          one feature shard per media shard: same number, same keys
    {root}/{fingerprint}/{dataset}/{NNNNN}_stats.json   the shard's completion marker, written last
    {root}/{fingerprint}/refs/{run}.json                training runs that read this store (`features gc` keeps it)
    {root}/{fingerprint}/_summary.json                  the latest extraction run's counts and throughput

Members of sample `key` in a shard (webdataset naming, `{key}.{suffix}`):

    vl.npy    float16 (V, T, 32, H)  image Q-Former outputs: V augmented views of T frames (an image: T = 1)
    ibv.npy   float16 (V, T, D)      ImageBind vision embedding per frame, same views and frames
    iba.npy   float16 (8, D)         ImageBind audio, 8 clips of 2 s; absent when the media has no audio
    txt       utf-8                  the caption carried over from the media shard
    json      utf-8 JSON             the source metadata, and the conversation for instruction data
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from pipelines import storage
from pipelines.storage import StorageConfig

MANIFEST = "manifest.json"
REFS = "refs"
ARRAYS = ("vl", "ibv", "iba")


@dataclass(frozen=True)
class FeatureSample:
    key: str
    vl: np.ndarray | None = None  # (V, T, 32, H) float16
    ibv: np.ndarray | None = None  # (V, T, D) float16
    iba: np.ndarray | None = None  # (8, D) float16
    text: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def views(self) -> int:
        arr = self.vl if self.vl is not None else self.ibv
        return 0 if arr is None else arr.shape[0]


def shard_name(index: int) -> str:
    return f"{index:05d}"


def shard_uri(store: str, dataset: str, index: int) -> str:
    return storage.join(store, dataset, f"{shard_name(index)}.tar")


def marker_uri(store: str, dataset: str, index: int) -> str:
    return storage.join(store, dataset, f"{shard_name(index)}_stats.json")


def encode(sample: FeatureSample) -> dict[str, bytes]:
    """Member suffix -> bytes for one sample (arrays as .npy, never pickled)."""
    members: dict[str, bytes] = {}
    for name in ARRAYS:
        arr = getattr(sample, name)
        if arr is not None:
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            members[f"{name}.npy"] = buf.getvalue()
    members["txt"] = sample.text.encode("utf-8")
    members["json"] = json.dumps(sample.meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return members


def decode(key: str, members: dict[str, bytes]) -> FeatureSample:
    """The inverse of `encode`; unknown members are ignored (forward compatible)."""
    arrays = {}
    for name in ARRAYS:
        raw = members.get(f"{name}.npy")
        if raw is not None:
            arrays[name] = np.load(io.BytesIO(raw), allow_pickle=False)
    text = members.get("txt", b"").decode("utf-8")
    meta = json.loads(members["json"]) if "json" in members else {}
    return FeatureSample(key=key, text=text, meta=meta, **arrays)


def iter_shard(uri: str, storage_cfg: StorageConfig | None = None) -> Iterator[FeatureSample]:
    """Stream the samples of one feature shard in order; members of a key are contiguous."""
    fs, path = storage.filesystem(uri, storage_cfg)
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        key, members = None, {}
        for info in tar:
            if not info.isfile():
                continue
            name = info.name.rsplit("/", 1)[-1]
            k, _, suffix = name.partition(".")
            if key is not None and k != key:
                yield decode(key, members)
                members = {}
            key = k
            members[suffix] = tar.extractfile(info).read()
        if key is not None:
            yield decode(key, members)


def complete_shards(store: str, dataset: str, storage_cfg: StorageConfig | None = None) -> list[int]:
    """Indices of the shards of `dataset` whose completion marker exists, ascending."""
    fs, path = storage.filesystem(storage.join(store, dataset), storage_cfg)
    if not fs.exists(path):
        return []
    names = [p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    return sorted(int(n[: -len("_stats.json")]) for n in names if n.endswith("_stats.json") and n[:5].isdigit())


def datasets(store: str, storage_cfg: StorageConfig | None = None) -> list[str]:
    """The dataset folders of a store (e.g. `webvid`, `llava595k`)."""
    fs, path = storage.filesystem(store, storage_cfg)
    if not fs.exists(path):
        return []
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if fs.isdir(p) and not p.endswith(f"/{REFS}"))


def ref_uri(store: str, run: str) -> str:
    return storage.join(store, REFS, f"{run}.json")


def write_ref(store: str, run: str, info: dict, storage_cfg: StorageConfig | None = None) -> None:
    """Record that training run `run` reads this store (`info`: where the run lives), so `features gc`
    keeps it; re-writing the same run's ref is harmless."""
    storage.write_text(ref_uri(store, run), json.dumps(info, sort_keys=True), storage_cfg)


def read_manifest(store: str, storage_cfg: StorageConfig | None = None) -> dict:
    uri = storage.join(store, MANIFEST)
    try:
        return json.loads(storage.read_text(uri, storage_cfg))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{uri}: no feature-store manifest; run `vllama features extract` for this store first"
        ) from None
