"""Looking after feature stores: `vllama features ls|show|verify|gc`.

stores(root)            every store under a root: fingerprint, sizes, lineage, training refs
verify(store)           every complete shard read back: checksum and size against its marker,
                        members parse, array shapes and dtypes against the manifest
gc(root, dry_run)       remove stores that no training run references (`refs/{run}.json`)
"""

from __future__ import annotations

import calendar
import re
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pipelines import shards, storage
from pipelines.features import format as fmt
from pipelines.features import store as st
from pipelines.storage import StorageConfig

FINGERPRINT = re.compile(r"^[0-9a-f]{16}$")  # gc only ever deletes folders named like a store


@dataclass
class StoreInfo:
    fingerprint: str
    uri: str
    manifest: dict | None  # None: a folder with no manifest (an extraction that never started writing)
    refs: list[str] = field(default_factory=list)

    @property
    def datasets(self) -> dict:
        return (self.manifest or {}).get("datasets", {})

    @property
    def samples(self) -> int:
        return sum(d.get("samples", 0) for d in self.datasets.values())

    @property
    def tar_bytes(self) -> int:
        return sum(d.get("tar_bytes", 0) for d in self.datasets.values())

    @property
    def age_s(self) -> float | None:
        updated = (self.manifest or {}).get("updated")
        if not updated:
            return None
        return time.time() - calendar.timegm(time.strptime(updated, "%Y-%m-%dT%H:%M:%SZ"))


def refs(store: str, storage_cfg: StorageConfig | None = None) -> list[str]:
    """Names of the training runs that registered as readers of `store`."""
    names = shards.listing(storage.join(store, fmt.REFS), storage_cfg)
    return sorted(n[: -len(".json")] for n in names if n.endswith(".json"))


def stores(root: str, storage_cfg: StorageConfig | None = None) -> list[StoreInfo]:
    """Every store folder directly under `root`, with its manifest and refs."""
    out = []
    for name in sorted(shards.listing(root, storage_cfg)):
        if not FINGERPRINT.match(name):
            continue
        uri = storage.join(root, name)
        out.append(StoreInfo(name, uri, st.read_manifest_or_none(uri, storage_cfg), refs(uri, storage_cfg)))
    return out


# ------------------------------------------------------------------------------ verify


@dataclass
class VerifyReport:
    store: str
    shards: int = 0
    samples: int = 0
    bytes: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)  # "dataset/NNNNN" -> what is wrong

    @property
    def ok(self) -> bool:
        return not self.problems


def array_problems(sample: fmt.FeatureSample, manifest: dict) -> list[str]:
    """How a sample's arrays disagree with the manifest's dims and dtypes ([] when they agree)."""
    d, dtypes = manifest["dims"], manifest["dtypes"]
    if sample.vl is None or sample.ibv is None:
        return [f"{sample.key}: vl.npy or ibv.npy missing"]
    t = sample.vl.shape[1] if sample.vl.ndim == 4 else -1
    expected = {
        "vl": (d["views"], t, st.QUERY_TOKENS, d["vl_width"]),
        "ibv": (d["views"], t, d["ib_width"]),
        "iba": (st.AUDIO_CLIPS, d["ib_width"]),
    }
    problems = []
    for name, shape in expected.items():
        arr = getattr(sample, name)
        if arr is None:
            continue
        if arr.shape != shape or not 1 <= t <= d["max_frames"]:
            problems.append(f"{sample.key}: {name}.npy has shape {arr.shape}, the manifest says {shape}")
        if arr.dtype != np.dtype(dtypes[name]):
            problems.append(f"{sample.key}: {name}.npy is {arr.dtype}, the manifest says {dtypes[name]}")
    return problems


def verify_shard(
    store: str, dataset: str, index: int, marker: dict, manifest: dict, storage_cfg: StorageConfig | None = None
) -> tuple[int, int, list[str]]:
    """(samples, bytes, problems) of one feature shard, read once: hashed while its members are parsed."""
    uri = fmt.shard_uri(store, dataset, index)
    fs, path = storage.filesystem(uri, storage_cfg)
    problems, keys = [], []
    try:
        raw = fs.open(path, "rb")
    except FileNotFoundError:
        return 0, 0, [f"{uri}: the tar is missing though its marker exists"]
    with raw:
        hashed = st.HashingReader(raw)
        try:
            with tarfile.open(fileobj=hashed, mode="r|") as tar:
                for key, members in st.tar_samples(tar):
                    keys.append(key)
                    problems += array_problems(fmt.decode(key, members), manifest)[:3]
        except (tarfile.TarError, ValueError, OSError) as e:  # a truncated tar, a .npy that does not parse
            problems.append(f"unreadable after {len(keys)} samples: {type(e).__name__}: {e}")
        hashed.drain()
    sha, want_sha, want_bytes = hashed.sha.hexdigest(), str(marker.get("tar_sha256")), marker.get("tar_bytes")
    if hashed.size != want_bytes or sha != want_sha:
        problems.insert(0, f"checksum mismatch: {hashed.size} bytes with sha256 {sha[:12]}..., the marker records "
                           f"{want_bytes} bytes with {want_sha[:12]}...")  # fmt: skip
    ok_keys = [s["key"] for s in marker.get("status", []) if s["status"] == "ok"]
    if not problems and keys != ok_keys:
        problems.append(f"holds {len(keys)} samples, the marker lists {len(ok_keys)} written")
    return len(keys), hashed.size, problems


def verify(store: str, storage_cfg: StorageConfig | None = None, threads: int = 4) -> VerifyReport:
    """Read every complete shard of every dataset back; problems are reported per shard by name."""
    report = VerifyReport(store)
    try:
        manifest = fmt.read_manifest(store, storage_cfg)
    except FileNotFoundError as e:
        report.problems["manifest"] = [str(e)]
        return report
    # every marker, with or without its tar (a marker whose tar is gone is a problem to report)
    jobs = [(ds, i) for ds in fmt.datasets(store, storage_cfg) for i in fmt.complete_shards(store, ds, storage_cfg)]

    def check(job: tuple[str, int]) -> tuple[int, int, list[str]]:
        return verify_shard(store, *job, st.read_marker(store, *job, storage_cfg) or {}, manifest, storage_cfg)

    with ThreadPoolExecutor(threads) as pool:
        for (ds, i), (samples, size, problems) in zip(jobs, pool.map(check, jobs), strict=True):
            report.shards += 1
            report.samples += samples
            report.bytes += size
            if problems:
                report.problems[f"{ds}/{fmt.shard_name(i)}"] = problems
    return report


# ------------------------------------------------------------------------------ gc


def gc(root: str, dry_run: bool = False, min_age_s: float = 0.0, storage_cfg: StorageConfig | None = None) -> list:
    """Remove (or with dry_run only list) the stores under `root` no training run references.

    With `min_age_s`, a store updated less recently than that (or with no manifest yet) is kept: an
    extraction may be filling it right now.
    """
    doomed = []
    for info in stores(root, storage_cfg):
        if info.refs:
            continue
        age = info.age_s
        if min_age_s and (age is None or age < min_age_s):
            continue
        doomed.append(info)
        if not dry_run:
            fs, path = storage.filesystem(info.uri, storage_cfg)
            fs.rm(path, recursive=True)
    return doomed
