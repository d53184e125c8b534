"""The feature store's bookkeeping: fingerprint, source-shard checksums, markers, the shard writer, the manifest.

The layout and member encoding are `format`'s (training reads through it). This module adds what
extraction and `vllama features ls|show|verify|gc` need:

- the fingerprint: sha256 of everything that determines the features (encoder configs and dtype, the
  weight files' sha256, the view config, FORMAT_VERSION), so a store is reused exactly when its
  features would come out the same, and any change makes a new store beside it;
- source shards and when a feature shard is up to date: its marker records the media shard's tar
  sha256 (from the media `_stats.json` when the ingestion recorded it, else checked against a hash of
  that `_stats.json`, which a rewrite of the shard replaces);
- `ShardWriter`: one feature shard streamed to storage, fixed tar headers, sha256 taken while writing;
- the manifest: identity, dims, dtypes, lineage (source shards with checksums, counts), runs.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pipelines import shards, storage
from pipelines.features import format as fmt
from pipelines.storage import StorageConfig

# Bump when extraction would give other features for the same inputs and config (it is fingerprinted).
FORMAT_VERSION = 1
WEIGHT_FILES = ("blip2_pretrained_flant5xxl.pth", "eva_vit_g.pth", "imagebind_huge.pth")
OPTIONAL_WEIGHTS = ("eva_vit_g.pth",)  # absent when the BLIP-2 file carries the ViT
SUMMARY = "_summary.json"
AUDIO_CLIPS = 8
QUERY_TOKENS = 32
_CACHE_MIN_BYTES = 64 << 20  # weight files at least this big have their sha256 cached locally


def fingerprint(identity: dict) -> str:
    """16 hex digits of the sha256 of the identity's canonical JSON."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@functools.cache
def code_version() -> str:
    """The package version, and the git commit when the code runs from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        out = version("vllama-platform")
    except PackageNotFoundError:
        out = "unknown"
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, timeout=5)
        if commit.returncode == 0:
            out += f"+g{commit.stdout.decode().strip()}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


# ------------------------------------------------------------------------------ weight checksums


def file_sha256(uri: str, storage_cfg: StorageConfig | None = None) -> str:
    """sha256 of a file, streamed (local or s3://)."""
    fs, path = storage.filesystem(uri, storage_cfg)
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vllama" / "sha256.json"


def cached_sha256(uri: str, storage_cfg: StorageConfig | None = None) -> str:
    """`file_sha256`, remembered per (uri, size, mtime or ETag) for big files: hashing ~8 GB of
    encoder weights on every extraction run would cost minutes when they live on S3."""
    fs, path = storage.filesystem(uri, storage_cfg)
    info = fs.info(path)
    if info.get("size", 0) < _CACHE_MIN_BYTES:
        return file_sha256(uri, storage_cfg)
    stamp = f"{uri}|{info.get('size')}|{info.get('ETag') or info.get('mtime') or info.get('LastModified')}"
    cache = _cache_file()
    known = json.loads(cache.read_text()) if cache.exists() else {}
    if stamp not in known:
        known[stamp] = file_sha256(uri, storage_cfg)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=1))
        tmp.replace(cache)
    return known[stamp]


def weights_checksums(weights: str, storage_cfg: StorageConfig | None = None) -> dict[str, str]:
    """{file name: sha256} of the released encoder files in the folder `weights` (local or s3://)."""
    out = {}
    for name in WEIGHT_FILES:
        uri = storage.join(weights, name)
        if not storage.exists(uri, storage_cfg):
            if name in OPTIONAL_WEIGHTS:
                continue
            raise FileNotFoundError(
                f"{uri}: encoder weights missing; encoders.weights must be a folder holding {', '.join(WEIGHT_FILES)} "
                "(the released file names; `vllama features demo-weights DIR` writes tiny random ones)"
            )
        out[name] = cached_sha256(uri, storage_cfg)
    return out


# ------------------------------------------------------------------------------ source shards


@dataclass(frozen=True)
class SourceShard:
    """A complete media shard and what identifies its content."""

    dataset: str
    index: int
    tar: str
    sha256: str | None  # the tar's sha256 as the ingestion recorded it; None when it did not
    stats_sha256: str  # sha256 of its `_stats.json` (rewritten whenever the shard is)
    samples: int | None

    def matches(self, marker: dict | None) -> bool:
        """Whether a feature shard with this marker was computed from this very media shard."""
        if not marker:
            return False
        src = marker.get("source", {})
        if self.sha256:
            return src.get("sha256") == self.sha256
        return src.get("stats_sha256") == self.stats_sha256

    def task(self) -> dict:
        """The row the extraction job gets for this shard."""
        return {"dataset": self.dataset, "index": self.index, "tar": self.tar, "sha256": self.sha256 or "",
                "stats_sha256": self.stats_sha256, "samples": -1 if self.samples is None else self.samples}  # fmt: skip


def source_shards(
    dataset: str, uri: str, storage_cfg: StorageConfig | None = None
) -> tuple[list[SourceShard], dict[int, str]]:
    """Every complete media shard under `uri` (tar and `_stats.json`), in index order, and the shards
    that have a `_stats.json` but no tar ({index: why}), which no run can read."""
    names = shards.listing(uri, storage_cfg)
    lost = {
        int(n[:-11]): f"{uri}: {n} has no {n[:-11]}.tar beside it; re-ingest the shard"
        for n in names
        if n.endswith("_stats.json") and shards.SHARD_FILE.match(n) and f"{n[:-11]}.tar" not in names
    }

    def one(index: int) -> SourceShard:
        files = shards.shard_files(uri, index)
        raw = storage.read_bytes(files.stats, storage_cfg)
        try:
            stats = json.loads(raw)
        except ValueError:
            stats = {}
        ok = stats.get("ok", stats.get("successes"))  # ours, or img2dataset's name for it
        return SourceShard(dataset, index, files.tar, stats.get("tar_sha256"), hashlib.sha256(raw).hexdigest(), ok)

    with ThreadPoolExecutor(16) as pool:  # one small GET each; on S3 latency, not bandwidth, bounds this
        return list(pool.map(one, shards.complete_shards(uri, storage_cfg))), lost


# ------------------------------------------------------------------------------ markers


def read_marker(store: str, dataset: str, index: int, storage_cfg: StorageConfig | None = None) -> dict | None:
    try:
        return json.loads(storage.read_text(fmt.marker_uri(store, dataset, index), storage_cfg))
    except FileNotFoundError:
        return None


def markers(store: str, dataset: str, storage_cfg: StorageConfig | None = None) -> dict[int, dict]:
    """{shard index: marker} for every feature shard of `dataset` whose tar and marker both exist."""
    names = set(shards.listing(storage.join(store, dataset), storage_cfg))
    done = [i for i in fmt.complete_shards(store, dataset, storage_cfg) if f"{fmt.shard_name(i)}.tar" in names]
    with ThreadPoolExecutor(16) as pool:
        found = pool.map(lambda i: (i, read_marker(store, dataset, i, storage_cfg)), done)
        return {i: m for i, m in found if m is not None}


def write_marker(store: str, dataset: str, index: int, marker: dict, storage_cfg: StorageConfig | None = None) -> None:
    storage.write_text(fmt.marker_uri(store, dataset, index), json.dumps(marker, indent=1) + "\n", storage_cfg)


def remove_marker(store: str, dataset: str, index: int, storage_cfg: StorageConfig | None = None) -> None:
    """Drop a stale marker before its shard is rewritten, so nothing looks complete in between."""
    fs, path = storage.filesystem(fmt.marker_uri(store, dataset, index), storage_cfg)
    if fs.exists(path):
        fs.rm(path)


# ------------------------------------------------------------------------------ reading and writing tars


class HashingReader(io.RawIOBase):
    """Read from `f`, hashing and counting what was read (a checksum without a second pass)."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Read to the end, e.g. the padding tarfile leaves after the end-of-archive blocks."""
        while self.read(1 << 20):
            pass


class _Hashing(io.RawIOBase):
    """Forward writes to `f`, hashing and counting them; `f=None` drops them (an abandoned tar's close)."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if self.f is None:
            return len(b)
        self.f.write(b)
        self.sha.update(b)
        self.size += len(b)
        return len(b)


def tar_samples(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) per sample of a tar read in stream mode; webdataset keeps a sample's
    members together, and the key is the file name up to its first dot."""
    key, members = None, {}
    for info in tar:
        if not info.isfile():
            continue
        k, _, suffix = info.name.rsplit("/", 1)[-1].partition(".")
        if key is not None and k != key:
            yield key, members
            members = {}
        key = k
        members[suffix] = tar.extractfile(info).read()
    if key is not None:
        yield key, members


class ShardWriter:
    """Stream feature samples into `uri` as a tar: members `{key}.{suffix}` in the order added, fixed
    headers (the same features give the same bytes), written atomically. A block that raises leaves
    nothing behind."""

    def __init__(self, uri: str, storage_cfg: StorageConfig | None = None):
        self.uri, self.storage_cfg = uri, storage_cfg
        self.samples = 0

    def __enter__(self) -> ShardWriter:
        self._atomic = storage.open_atomic(self.uri, self.storage_cfg)
        self._hash = _Hashing(self._atomic.__enter__())
        self._tar = tarfile.open(fileobj=self._hash, mode="w|", format=tarfile.USTAR_FORMAT)
        return self

    def add(self, sample: fmt.FeatureSample) -> None:
        for suffix, data in fmt.encode(sample).items():
            info = tarfile.TarInfo(f"{sample.key}.{suffix}")
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def __exit__(self, *exc) -> bool:
        if exc[0] is not None:
            self._hash.f = None  # abandoned: the tar's closing blocks go nowhere, the upload is discarded
        self._tar.close()  # the end-of-archive blocks go through the hash too
        return self._atomic.__exit__(*exc)

    @property
    def sha256(self) -> str:
        return self._hash.sha.hexdigest()

    @property
    def size(self) -> int:
        return self._hash.size


# ------------------------------------------------------------------------------ manifest


def dims(views: int, num_frames: int, vl_width: int, ib_width: int) -> dict:
    """Array shapes as the manifest records them; T is per sample (1 for images, <= max_frames)."""
    return {
        "vl": [views, "T", QUERY_TOKENS, vl_width],
        "ibv": [views, "T", ib_width],
        "iba": [AUDIO_CLIPS, ib_width],
        "views": views,
        "max_frames": num_frames,
        "vl_width": vl_width,
        "ib_width": ib_width,
    }


def lineage(store: str, sources: dict[str, str], storage_cfg: StorageConfig | None = None) -> dict:
    """Per dataset: its media folder, and per complete feature shard the source checksum and counts."""
    out = {}
    for dataset, uri in sorted(sources.items()):
        found = markers(store, dataset, storage_cfg)
        per_shard = {
            fmt.shard_name(i): {
                "source_sha256": m["source"].get("sha256"),
                "samples": m["samples"],
                "ok": m["ok"],
                "failed": m["failed"],
                "tar_bytes": m["tar_bytes"],
                "tar_sha256": m["tar_sha256"],
            }
            for i, m in sorted(found.items())
        }
        out[dataset] = {
            "source": uri,
            "shards": per_shard,
            "samples": sum(s["ok"] for s in per_shard.values()),
            "failed": sum(s["failed"] for s in per_shard.values()),
            "tar_bytes": sum(s["tar_bytes"] for s in per_shard.values()),
        }
    return out


def write_manifest(store: str, doc: dict, storage_cfg: StorageConfig | None = None) -> None:
    storage.write_text(storage.join(store, fmt.MANIFEST), json.dumps(doc, indent=1, sort_keys=True) + "\n", storage_cfg)


def read_manifest_or_none(store: str, storage_cfg: StorageConfig | None = None) -> dict | None:
    try:
        return fmt.read_manifest(store, storage_cfg)
    except FileNotFoundError:
        return None


def register_run(store: str, run: str, info: dict, storage_cfg: StorageConfig | None = None) -> None:
    """A training run records that it reads `store`, so `features gc` keeps the store (format.write_ref)."""
    fmt.write_ref(store, run, info, storage_cfg)
