"""The shard format every ingestion source writes: webdataset tars, a parquet sidecar, a stats marker.

Under an output URI (local path, file:// or s3://):

    00000.tar           the samples: members `<key>.<ext>`, sorted, fixed tar headers (stable sha256)
    00000.parquet       the sidecar: every input row of the shard with status, category and error,
                        so failed rows can be re-queued (`shard_runs.failed_rows`)
    00000_stats.json    counts per category, bytes, seconds, the tar's sha256; written LAST, so its
                        presence is what makes shard 0 complete

A source builds its input rows with `input_table`, records each row's outcome as a `RowResult`,
and per shard calls `write_shard(out, index, samples, sidecar(rows, results), counters)`.
Reading back: `complete_shards`, `read_stats`, `read_sidecar`, `read_samples` and `webdataset`
(local or s3://). Which shards a run writes (incremental / overwrite / retry-failed) and the run
summary live in `shard_runs`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.storage import StorageConfig

OK = "ok"
FAILED = "failed"
# Failure categories every source shares; a source may add its own (the stats count any string).
CATEGORIES = (
    "bad_row",  # the input row itself is malformed (missing column, unparsable field)
    "bad_url",  # not an http(s)/s3 URL, no host, empty
    "duplicate",  # the key was already used by an earlier row of the same input
    "forbidden_address",  # resolves to a loopback/private/link-local/multicast/reserved address
    "http_3xx",  # too many redirects
    "http_4xx",
    "http_429",
    "http_5xx",
    "http_other",  # another unexpected status (204, 206, a redirect without Location)
    "timeout",
    "connection_error",  # refused, reset, or closed before Content-Length bytes arrived
    "too_large",
    "not_video",  # HTML or another non-media body, or media without a video stream
    "not_image",  # an image set's file that no image decoder recognises
    "missing_media",  # the annotation names a file that is not in the media folder, zip or shards
    "corrupt",  # ffprobe cannot parse the container
    "decode_error",  # the container parses but frames do not decode (truncated, damaged)
    "internal_error",  # a bug or an unexpected exception; the message has the traceback's last line
)
# Columns a source's input table must have (see `input_table`); the sidecar adds RESULT_COLUMNS.
INPUT_COLUMNS = {"row": pa.int64(), "key": pa.string(), "source": pa.string(), "category": pa.string(),
                 "error": pa.string(), "retry_of": pa.int64()}  # fmt: skip
RESULT_COLUMNS = {"status": pa.string(), "attempts": pa.int32(), "bytes": pa.int64(), "seconds": pa.float64()}

SHARD_FILE = re.compile(r"^(\d{5,})(\.tar|\.parquet|_stats\.json)$")
_KEY_BAD_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
MAX_KEY_LEN = 80  # member names stay under ustar's 100-character limit with the extension
TAR_MTIME = 0  # fixed header fields: the same samples always give the same tar bytes


class RowError(Exception):
    """One input row failed for a reason in a known category; the job goes on."""

    def __init__(self, category: str, message: str):
        super().__init__(message)
        self.category = category


# ----------------------------------------------------------------------------------------- names


def shard_name(index: int) -> str:
    return f"{index:05d}"


@dataclass(frozen=True)
class ShardFiles:
    tar: str
    sidecar: str
    stats: str


def shard_files(out: str, index: int) -> ShardFiles:
    name = shard_name(index)
    return ShardFiles(
        storage.join(out, f"{name}.tar"), storage.join(out, f"{name}.parquet"), storage.join(out, f"{name}_stats.json")
    )


def sanitize_key(raw: str) -> str:
    """A webdataset key from an id: only [A-Za-z0-9_-] (no dots: webdataset splits the extension at
    the first dot; no slashes: no paths), at most MAX_KEY_LEN characters. '' if nothing is left."""
    return _KEY_BAD_CHARS.sub("_", raw.strip()).strip("_")[:MAX_KEY_LEN]


# ------------------------------------------------------------------------------------ input rows


def input_table(columns: dict[str, list], schema: dict[str, pa.DataType] | None = None) -> pa.Table:
    """The rows a source hands to `plan`: INPUT_COLUMNS (without retry_of) plus its own columns.

    `category`/`error` are '' for a valid row and set for a row already known to fail (malformed).
    """
    missing = [c for c in INPUT_COLUMNS if c != "retry_of" and c not in columns]
    if missing:
        raise ValueError(f"input rows need columns {missing}")
    types = {**INPUT_COLUMNS, **(schema or {})}
    arrays = {name: pa.array(values, type=types.get(name, pa.string())) for name, values in columns.items()}
    table = pa.table(arrays)
    return table.append_column("retry_of", pa.array([-1] * table.num_rows, pa.int64()))


def mark_duplicates(keys: Sequence[str], sources: Sequence[str]) -> dict[int, str]:
    """Row position -> reason, for every row whose key an earlier row already used."""
    first: dict[str, int] = {}
    dupes = {}
    for i, key in enumerate(keys):
        if not key:
            continue
        if key in first:
            dupes[i] = f"{sources[i]}: key {key!r} already used by {sources[first[key]]}"
        else:
            first[key] = i
    return dupes


@dataclass
class RowResult:
    """What happened to one input row; `members` are its tar members when it succeeded."""

    status: str = FAILED
    category: str = ""
    error: str = ""
    attempts: int = 0
    fetched: int = 0  # bytes read from the source
    seconds: float = 0.0
    members: dict[str, bytes | Path] | None = field(default=None, repr=False)

    @classmethod
    def failed(cls, category: str, error: str, **kw) -> RowResult:
        return cls(status=FAILED, category=category, error=error, **kw)


def sidecar(rows: pa.Table, results: Sequence[RowResult]) -> pa.Table:
    """A shard's input rows with each row's outcome: category/error replaced, RESULT_COLUMNS added."""
    if rows.num_rows != len(results):
        raise ValueError(f"{rows.num_rows} rows but {len(results)} results")
    for name in ("category", "error"):
        values = pa.array([getattr(r, name) for r in results], pa.string())
        rows = rows.set_column(rows.column_names.index(name), name, values)
    results_cols = {
        "status": [r.status for r in results],
        "attempts": [r.attempts for r in results],
        "bytes": [r.fetched for r in results],
        "seconds": [r.seconds for r in results],
    }
    for name, values in results_cols.items():
        rows = rows.append_column(name, pa.array(values, RESULT_COLUMNS[name]))
    return rows


# ------------------------------------------------------------------------------------ tar files


class _HashingWriter(io.RawIOBase):
    """Forward writes to `f`, hashing and counting them (the tar's sha256 without reading it back)."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.f.write(b)
        self.sha.update(b)
        self.size += len(b)
        return len(b)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, TAR_MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar(f, samples: Iterable[tuple[str, dict[str, bytes | Path]]]) -> None:
    """Write samples `(key, {ext: bytes or local file})` as a tar stream, sorted by (key, ext).

    Sorted members and fixed headers make the bytes a function of the samples alone.
    """
    with tarfile.open(fileobj=f, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in sorted(samples, key=lambda s: s[0]):
            if sanitize_key(key) != key or not key:
                raise ValueError(f"tar key {key!r} is not sanitised; use shards.sanitize_key")
            for ext in sorted(members):
                if not re.fullmatch(r"[a-z0-9]+(\.[a-z0-9]+)*", ext):
                    raise ValueError(f"member extension {ext!r} of {key!r}: use lowercase letters, digits and dots")
                value = members[ext]
                if isinstance(value, bytes):
                    tar.addfile(_tarinfo(f"{key}.{ext}", len(value)), io.BytesIO(value))
                else:
                    with open(value, "rb") as src:
                        tar.addfile(_tarinfo(f"{key}.{ext}", Path(value).stat().st_size), src)


def write_shard(
    out: str,
    index: int,
    samples: Iterable[tuple[str, dict[str, bytes | Path]]],
    sidecar: pa.Table,
    counters: dict,
    storage_cfg: StorageConfig | None = None,
) -> dict:
    """Write the tar, then the sidecar, then `_stats.json` (the completion marker); return the stats.

    Each file goes through `storage.open_atomic`, so a crash leaves no half file and never a marker
    without its tar and sidecar. `counters` carries the source's own numbers (bytes, seconds, ...).
    """
    files = shard_files(out, index)
    with storage.open_atomic(files.tar, storage_cfg) as f:
        writer = _HashingWriter(f)
        write_tar(writer, samples)
    buf = io.BytesIO()
    pq.write_table(sidecar, buf)
    storage.write_bytes(files.sidecar, buf.getvalue(), storage_cfg)
    statuses = sidecar.column("status").to_pylist()
    categories = Counter(
        OK if s == OK else c for s, c in zip(statuses, sidecar.column("category").to_pylist(), strict=True)
    )
    stats = {
        "shard": index,
        "rows": sidecar.num_rows,
        "ok": categories.get(OK, 0),
        "failed": sidecar.num_rows - categories.get(OK, 0),
        "categories": dict(sorted(categories.items())),
        "tar": files.tar.rsplit("/", 1)[-1],
        "tar_bytes": writer.size,
        "tar_sha256": writer.sha.hexdigest(),
        "retry_of": sorted({r for r in sidecar.column("retry_of").to_pylist() if r >= 0}),
        **counters,
    }
    storage.write_text(files.stats, json.dumps(stats, indent=1) + "\n", storage_cfg)
    return stats


# ------------------------------------------------------------------------------------ reading


def listing(out: str, storage_cfg: StorageConfig | None = None) -> list[str]:
    """Names of the entries directly in `out` ([] if it does not exist)."""
    fs, path = storage.filesystem(out, storage_cfg)
    fs.invalidate_cache(path)  # s3fs caches listings; a marker written a moment ago must show
    if not fs.exists(path):
        return []
    return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]


def complete_shards(out: str, storage_cfg: StorageConfig | None = None) -> list[int]:
    """Indices of shards whose tar and stats marker both exist, ascending."""
    found: dict[int, set[str]] = {}
    for name in listing(out, storage_cfg):
        m = SHARD_FILE.match(name)
        if m:
            found.setdefault(int(m.group(1)), set()).add(m.group(2))
    return sorted(i for i, kinds in found.items() if {".tar", "_stats.json"} <= kinds)


def read_stats(out: str, index: int, storage_cfg: StorageConfig | None = None) -> dict:
    return json.loads(storage.read_text(shard_files(out, index).stats, storage_cfg))


def read_sidecar(out: str, index: int, storage_cfg: StorageConfig | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(storage.read_bytes(shard_files(out, index).sidecar, storage_cfg)))


def _open_shards(src: Iterable[dict], storage_cfg: StorageConfig | None) -> Iterator[dict]:
    """webdataset pipeline stage: open each `{"url": uri}` through fsspec (s3:// included)."""
    for item in src:
        fs, path = storage.filesystem(item["url"], storage_cfg)
        with fs.open(path, "rb") as stream:
            yield {**item, "stream": stream}


def webdataset(uris: Sequence[str], storage_cfg: StorageConfig | None = None):
    """A `webdataset.DataPipeline` over shard URIs, local or s3://: yields `{"__key__", "mp4", ...}`.

    webdataset opens s3 only through a shell pipe; this opens every URI through fsspec instead, so
    the endpoint and credentials are the ones `pipelines.storage` uses.
    """
    import webdataset as wds
    from webdataset.tariterators import group_by_keys, tar_file_expander

    return wds.DataPipeline(
        wds.SimpleShardList(list(uris)),
        functools.partial(_open_shards, storage_cfg=storage_cfg),
        tar_file_expander,
        group_by_keys,
    )


def read_samples(uri: str, storage_cfg: StorageConfig | None = None) -> list[dict]:
    """All samples of one shard, in tar order, via `webdataset`."""
    return list(webdataset([uri], storage_cfg))
