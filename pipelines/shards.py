"""Webdataset shards with a parquet sidecar and a stats marker, and the three re-run modes.

Every ingestion source writes the same layout under an output URI (local path, file:// or s3://):

    00000.tar           the samples: members `<key>.<ext>`, sorted, fixed tar headers (stable sha256)
    00000.parquet       the sidecar: every input row of the shard with status, category and error
    00000_stats.json    counts per category, bytes, seconds, the tar's sha256; written LAST, so its
                        presence is what makes shard 0 complete
    _plan.json          how the input rows map to shards (checked by incremental re-runs)
    _summary.json       the latest run's summary; `_runs/<run id>.json` keeps every run's

Row i of the input goes to shard i // samples_per_shard whatever succeeds or fails, so a re-run
rebuilds a shard from the same rows. The API a source uses:

    tasks = plan(out, rows, mode, samples_per_shard, inputs)  # rows: `input_table(...)`
    ... process each task's rows, then:
    stats = write_shard(out, task.index, samples, sidecar, counters)
    summary = finish_run(out, mode, [stats, ...], seconds, planned=tasks)

and to read back: `complete_shards`, `read_stats`, `read_sidecar`, `read_samples`, `webdataset`.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import io
import json
import re
import tarfile
import time
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
    "corrupt",  # ffprobe cannot parse the container
    "decode_error",  # the container parses but frames do not decode (truncated, damaged)
    "internal_error",  # a bug or an unexpected exception; the message has the traceback's last line
)
# Failures a retry-failed run skips: fetching again cannot change them.
PERMANENT = frozenset({"bad_row", "bad_url", "duplicate"})

# Columns a source's input table must have (see `input_table`); the sidecar adds RESULT_COLUMNS.
INPUT_COLUMNS = {"row": pa.int64(), "key": pa.string(), "source": pa.string(), "category": pa.string(),
                 "error": pa.string(), "retry_of": pa.int64()}  # fmt: skip
RESULT_COLUMNS = {"status": pa.string(), "attempts": pa.int32(), "bytes": pa.int64(), "seconds": pa.float64()}

PLAN = "_plan.json"
SUMMARY = "_summary.json"
_SHARD_FILE = re.compile(r"^(\d{5,})(\.tar|\.parquet|_stats\.json)$")
_KEY_BAD_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
MAX_KEY_LEN = 80  # member names stay under ustar's 100-character limit with the extension
TAR_MTIME = 0  # fixed header fields: the same samples always give the same tar bytes


class Mode(str, enum.Enum):
    """What a run does with shards already in the output."""

    INCREMENTAL = "incremental"  # skip complete shards; (re)write the rest
    OVERWRITE = "overwrite"  # remove this layout's files, then write every shard
    RETRY_FAILED = "retry-failed"  # fetch only rows that failed and never succeeded, into new shards


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


def _listing(out: str, storage_cfg: StorageConfig | None) -> list[str]:
    fs, path = storage.filesystem(out, storage_cfg)
    fs.invalidate_cache(path)  # s3fs caches listings; a marker written a moment ago must show
    if not fs.exists(path):
        return []
    return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]


def complete_shards(out: str, storage_cfg: StorageConfig | None = None) -> list[int]:
    """Indices of shards whose tar and stats marker both exist, ascending."""
    found: dict[int, set[str]] = {}
    for name in _listing(out, storage_cfg):
        m = _SHARD_FILE.match(name)
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


# ------------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its index and its input rows (INPUT_COLUMNS + the source's)."""

    index: int
    rows: pa.Table


def plan(
    out: str,
    rows: pa.Table | None,
    mode: Mode | str,
    samples_per_shard: int,
    inputs: Sequence[str] = (),
    storage_cfg: StorageConfig | None = None,
) -> list[ShardTask]:
    """The shards this run must write. `rows` are the input rows (unused by retry-failed, which
    reads the failed rows back from the sidecars)."""
    mode = Mode(mode)
    if mode == Mode.RETRY_FAILED:
        return _plan_retry(out, samples_per_shard, storage_cfg)
    assert rows is not None, "incremental and overwrite runs need the input rows"
    doc = _plan_doc(rows, samples_per_shard, inputs)
    if mode == Mode.OVERWRITE:
        clear(out, storage_cfg)
    else:
        _check_same_plan(out, doc, storage_cfg)
    storage.write_text(storage.join(out, PLAN), json.dumps(doc, indent=1) + "\n", storage_cfg)
    done = set(complete_shards(out, storage_cfg))
    return [
        ShardTask(i, rows.slice(i * samples_per_shard, samples_per_shard))
        for i in range(doc["shards"])
        if i not in done
    ]


def _plan_doc(rows: pa.Table, samples_per_shard: int, inputs: Sequence[str]) -> dict:
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard={samples_per_shard}: must be >= 1")
    keys = hashlib.sha256("\n".join(rows.column("key").to_pylist()).encode()).hexdigest()
    return {
        "inputs": list(inputs),
        "rows": rows.num_rows,
        "samples_per_shard": samples_per_shard,
        "shards": -(-rows.num_rows // samples_per_shard),
        "keys_sha256": keys,  # the row order: changed inputs would put different rows in old shards
    }


def _check_same_plan(out: str, doc: dict, storage_cfg: StorageConfig | None) -> None:
    uri = storage.join(out, PLAN)
    if not storage.exists(uri, storage_cfg):
        if complete_shards(out, storage_cfg):
            raise ValueError(f"{out}: holds shards but no {PLAN}; use mode=overwrite or a new output")
        return
    old = json.loads(storage.read_text(uri, storage_cfg))
    changed = [k for k in ("rows", "samples_per_shard", "keys_sha256") if old.get(k) != doc[k]]
    if changed:
        raise ValueError(
            f"{out}: was written from other input rows or shard size ({', '.join(changed)} differ from {PLAN}); "
            "incremental runs must see the same rows in the same order. Use mode=overwrite or a new output."
        )


def failed_rows(out: str, storage_cfg: StorageConfig | None = None) -> pa.Table | None:
    """Rows that failed (in a retryable category) and never succeeded in any complete shard,
    one per row (its latest attempt), ordered by input row; None when the output has no shards.

    `retry_of` is set to the shard of that latest failure; `category`/`error` are reset to ''.
    """
    done = complete_shards(out, storage_cfg)
    if not done:
        return None
    tables = [read_sidecar(out, i, storage_cfg) for i in done]
    rows = pa.concat_tables(tables, promote_options="default")
    shard_of = [i for i, t in zip(done, tables, strict=True) for _ in range(t.num_rows)]
    row_ids, statuses = rows.column("row").to_pylist(), rows.column("status").to_pylist()
    categories = rows.column("category").to_pylist()
    succeeded = {r for r, s in zip(row_ids, statuses, strict=True) if s == OK}
    latest: dict[int, int] = {}  # row -> position of its latest failure (shards are read in order)
    for pos, (r, s, c) in enumerate(zip(row_ids, statuses, categories, strict=True)):
        if s != OK and r not in succeeded and c not in PERMANENT:
            latest[r] = pos
    order = sorted(latest)
    picked = rows.take(pa.array([latest[r] for r in order], pa.int64()))
    picked = picked.drop_columns([c for c in RESULT_COLUMNS if c in picked.column_names])
    replace = {
        "retry_of": pa.array([shard_of[latest[r]] for r in order], pa.int64()),
        "category": pa.array([""] * len(order), pa.string()),
        "error": pa.array([""] * len(order), pa.string()),
    }
    for name, values in replace.items():
        picked = picked.set_column(picked.column_names.index(name), name, values)
    return picked


def _plan_retry(out: str, samples_per_shard: int, storage_cfg: StorageConfig | None) -> list[ShardTask]:
    uri = storage.join(out, PLAN)
    if not storage.exists(uri, storage_cfg):
        raise ValueError(f"{out}: no {PLAN}; run mode=incremental first, retry-failed only re-fetches failed rows")
    doc = json.loads(storage.read_text(uri, storage_cfg))
    done = complete_shards(out, storage_cfg)
    missing = sorted(set(range(doc["shards"])) - set(done))
    if missing:
        raise ValueError(
            f"{out}: shards {missing[:5]}{'...' if len(missing) > 5 else ''} of the first run are not complete; "
            "finish them with mode=incremental before mode=retry-failed"
        )
    rows = failed_rows(out, storage_cfg)
    if rows is None or rows.num_rows == 0:
        return []
    start = max(done) + 1  # retry shards come after every existing shard; old shards are never rewritten
    return [
        ShardTask(start + k, rows.slice(k * samples_per_shard, samples_per_shard))
        for k in range(-(-rows.num_rows // samples_per_shard))
    ]


def clear(out: str, storage_cfg: StorageConfig | None = None) -> None:
    """Remove this layout's files from `out` (markers first, so a crash midway leaves nothing
    that looks complete); other files are left alone."""
    fs, path = storage.filesystem(out, storage_cfg)
    names = _listing(out, storage_cfg)
    markers = [n for n in names if n.endswith("_stats.json") and _SHARD_FILE.match(n)]
    rest = [n for n in names if (_SHARD_FILE.match(n) and n not in markers) or n in (PLAN, SUMMARY) or ".tmp-" in n]
    for name in markers + rest:
        fs.rm(f"{path.rstrip('/')}/{name}")
    if "_runs" in names:
        fs.rm(f"{path.rstrip('/')}/_runs", recursive=True)


# ------------------------------------------------------------------------------------ summaries


@dataclass
class RunSummary:
    mode: str
    out: str
    seconds: float
    rows: int = 0
    ok: int = 0
    failed: int = 0
    success_rate: float = 0.0
    categories: dict[str, int] = field(default_factory=dict)
    samples_per_s: float = 0.0
    mb_per_s: float = 0.0  # bytes fetched from the sources, per second of the run
    fetched_bytes: int = 0
    written_bytes: int = 0
    shards_written: list[int] = field(default_factory=list)
    shards_failed: dict[int, str] = field(default_factory=dict)  # shard -> why no marker was written
    retried_from: dict[int, list[int]] = field(default_factory=dict)  # retry shard -> shards its rows failed in
    dataset: dict = field(default_factory=dict)  # totals over every complete shard in `out`
    run_id: str = ""

    def text(self) -> str:
        """A few lines for the terminal."""
        cats = ", ".join(f"{k} {v}" for k, v in sorted(self.categories.items(), key=lambda kv: -kv[1]))
        lines = [
            f"{self.mode} run into {self.out}: {self.rows} rows in {len(self.shards_written)} shards, "
            f"{self.ok} ok / {self.failed} failed ({100 * self.success_rate:.1f}% success) in {self.seconds:.1f} s",
            f"  {self.samples_per_s:.2f} samples/s, {self.mb_per_s:.2f} MB/s fetched",
            f"  categories: {cats or 'none'}",
            f"  dataset: {self.dataset.get('samples', 0)} samples in {self.dataset.get('shards', 0)} complete shards",
        ]
        if self.shards_failed:
            lines.append(f"  shards without a marker (re-run incrementally): {sorted(self.shards_failed)}")
        return "\n".join(lines)


def finish_run(
    out: str, mode: Mode | str, stats: Sequence[dict], seconds: float, storage_cfg: StorageConfig | None = None,
    failures: dict[int, str] | None = None,
) -> RunSummary:  # fmt: skip
    """Summarise this run's shard stats, add dataset totals, write `_summary.json` and `_runs/<id>.json`."""
    cats: Counter[str] = Counter()
    for s in stats:
        cats.update(s["categories"])
    rows = sum(s["rows"] for s in stats)
    ok = cats.get(OK, 0)
    fetched = sum(s.get("fetched_bytes", 0) for s in stats)
    summary = RunSummary(
        mode=Mode(mode).value,
        out=out,
        seconds=round(seconds, 3),
        rows=rows,
        ok=ok,
        failed=rows - ok,
        success_rate=round(ok / rows, 4) if rows else 0.0,
        categories=dict(sorted(cats.items())),
        samples_per_s=round(ok / seconds, 3) if seconds > 0 else 0.0,
        mb_per_s=round(fetched / 1e6 / seconds, 3) if seconds > 0 else 0.0,
        fetched_bytes=fetched,
        written_bytes=sum(s.get("tar_bytes", 0) for s in stats),
        shards_written=sorted(s["shard"] for s in stats),
        shards_failed=dict(sorted((failures or {}).items())),
        retried_from={s["shard"]: s["retry_of"] for s in stats if s.get("retry_of")},
        dataset=dataset_totals(out, storage_cfg),
        run_id=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{Mode(mode).value}",
    )
    text = json.dumps(summary.__dict__, indent=1) + "\n"
    storage.write_text(storage.join(out, "_runs", f"{summary.run_id}.json"), text, storage_cfg)
    storage.write_text(storage.join(out, SUMMARY), text, storage_cfg)
    return summary


def dataset_totals(out: str, storage_cfg: StorageConfig | None = None) -> dict:
    """Samples, rows and bytes over every complete shard in `out`."""
    done = complete_shards(out, storage_cfg)
    all_stats = [read_stats(out, i, storage_cfg) for i in done]
    return {
        "shards": len(done),
        "samples": sum(s["ok"] for s in all_stats),
        "tar_bytes": sum(s["tar_bytes"] for s in all_stats),
    }
