"""WebVid CSVs -> webdataset shards of mp4 + cleaned caption + metadata, with Ray Data.

    read_rows(cfg)      CSVs (local or s3://, globs allowed) -> input rows, numbered in order
    shard_runs.plan(...)    rows -> the shards this run writes (incremental / overwrite / retry-failed)
    process_shard(...)  one shard: download, ffprobe, decode check or transcode, write tar+sidecar+stats
    run(cfg)            all of it on Ray, then the run summary

Per sample the tar holds `<videoid>.mp4`, `<videoid>.txt` (the caption cleaned as Video-LLaMA's
WebVid loader does) and `<videoid>.json` (videoid, url, raw caption, duration, fps, width,
height, has_audio, sha256, bytes, page_dir). Nothing run-dependent goes into a member, so the
same row gives the same bytes on every run.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import field
from pathlib import Path

import pyarrow as pa

from model.captions import clean_caption  # torch-free: ingestion workers import it for one regex
from pipelines import download, ingest, media, shard_runs, shards, storage
from pipelines.config import config_dataclass
from pipelines.download import DownloadConfig, Limiter
from pipelines.media import TranscodeConfig
from pipelines.shard_runs import Mode, ShardTask
from pipelines.shards import OK, RowError, RowResult
from pipelines.storage import StorageConfig

COLUMNS = ("videoid", "contentUrl", "duration", "page_dir", "name")


@config_dataclass
class WebVidIngestConfig:
    """One WebVid ingestion run. Required: `csv` and `out`."""

    csv: tuple[str, ...] | str = ()  # CSV URIs or globs (local or s3://), read in the order given
    out: str = ""  # shard folder (local or s3://)
    mode: Mode = Mode.INCREMENTAL
    samples_per_shard: int = 1000  # ~1000 clips of a few MB: 1-5 GB tars, a sensible S3 object size
    concurrency: int | None = None  # shards in flight at once; None lets Ray Data use every CPU
    cpus_per_shard: float = 1.0  # CPUs Ray reserves per shard task (its ffmpeg processes run there)
    download_threads: int = 16  # downloads in flight per shard task (I/O-bound, so many)
    ffmpeg_per_shard: int = 1  # ffprobe/ffmpeg processes at once per shard task; match cpus_per_shard
    verify_decode: bool = True  # decode every frame once (if not transcoding) to catch truncated files
    max_caption_words: int = 50  # Video-LLaMA's WebVid loader keeps 50 words
    spool_dir: str | None = None  # local scratch for a shard's downloads; None = the system temp dir
    progress: bool = True
    download: DownloadConfig = field(default_factory=DownloadConfig)
    transcode: TranscodeConfig = field(default_factory=TranscodeConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def __post_init__(self):
        if not self.out:
            raise ValueError("out: required, the folder or s3:// prefix to write shards into")
        if not self.csvs and self.mode != Mode.RETRY_FAILED:
            raise ValueError("csv: required, one or more WebVid CSV paths or s3:// URIs (globs allowed)")
        if self.samples_per_shard < 1 or self.download_threads < 1 or self.ffmpeg_per_shard < 1:
            raise ValueError("samples_per_shard, download_threads and ffmpeg_per_shard must be >= 1")

    @property
    def csvs(self) -> tuple[str, ...]:
        return (self.csv,) if isinstance(self.csv, str) else self.csv


# ---------------------------------------------------------------------------------- read


def csv_uris(patterns: tuple[str, ...], storage_cfg: StorageConfig | None = None) -> list[str]:
    """Expand globs (sorted within each pattern), keeping the given order; a pattern that
    matches nothing is an error naming it."""
    uris = []
    for pattern in patterns:
        if not any(c in pattern for c in "*?["):
            uris.append(pattern)
            continue
        fs, path = storage.filesystem(pattern, storage_cfg)
        found = sorted(fs.glob(path))
        if not found:
            raise FileNotFoundError(f"{pattern}: no CSV matches")
        scheme = storage.protocol(pattern)
        uris += [f"{scheme}://{p}" if scheme != "file" else p for p in found]
    return uris


def _rows_of(uri: str, storage_cfg: StorageConfig | None):
    """Yield (line, fields or None, problem) per data row; a bad header raises, naming file and column."""
    fs, path = storage.filesystem(uri, storage_cfg)
    with fs.open(path, "rt", encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f)
        header = [h.strip().lstrip("\ufeff") for h in next(reader, [])]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{uri}: column {missing[0]!r} missing from the header ({','.join(header) or 'empty file'}); "
                f"a WebVid CSV has the columns {','.join(COLUMNS)}"
            )
        where = {c: header.index(c) for c in COLUMNS}
        line = reader.line_num
        while True:
            start = line + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                line = reader.line_num
                yield start, None, f"unreadable CSV row: {e}"
                continue
            line = reader.line_num
            if not fields:
                continue  # a blank line is not a row
            absent = [c for c in COLUMNS if where[c] >= len(fields)]
            if absent:
                yield start, None, f"column {absent[0]!r} missing ({len(fields)} fields, the header has {len(header)})"
                continue
            yield start, {c: fields[where[c]].strip() for c in COLUMNS}, ""


def read_rows(uris: list[str], storage_cfg: StorageConfig | None = None) -> pa.Table:
    """Every data row of every CSV, numbered in order; malformed rows are kept as failed rows."""
    cols: dict[str, list] = {k: [] for k in ("row", "key", "source", "category", "error", *COLUMNS)}
    for uri in uris:
        for line, fields, problem in _rows_of(uri, storage_cfg):
            fields = fields or dict.fromkeys(COLUMNS, "")
            key = shards.sanitize_key(fields["videoid"])
            category, error = "", ""
            if problem:
                category, error = "bad_row", problem
            elif not key:
                category, error = "bad_row", "videoid is empty or has no usable characters"
            elif not fields["contentUrl"]:
                category, error = "bad_url", "contentUrl is empty"
            cols["row"].append(len(cols["row"]))
            cols["key"].append(key)
            cols["source"].append(f"{uri} line {line}")
            cols["category"].append(category)
            cols["error"].append(f"{uri} line {line}: {error}" if error else "")
            for c in COLUMNS:
                cols[c].append(fields[c])
    for i, reason in shards.mark_duplicates(cols["key"], cols["source"]).items():
        if not cols["category"][i]:
            cols["category"][i], cols["error"][i] = "duplicate", reason
    return shards.input_table(cols)


# ---------------------------------------------------------------------------------- transform


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sample_members(row: dict, video: Path, info: media.VideoInfo, max_words: int) -> dict[str, bytes | Path]:
    """The tar members of one sample: mp4 (a local file), txt and json (bytes)."""
    meta = {
        "videoid": row["videoid"],
        "url": row["contentUrl"],
        "caption": row["name"],
        "duration": info.duration,
        "fps": info.fps,
        "width": info.width,
        "height": info.height,
        "has_audio": info.has_audio,
        "sha256": _sha256(video),
        "bytes": video.stat().st_size,
        "page_dir": row["page_dir"],
        "csv_duration": row["duration"],
    }
    return {
        "mp4": video,
        "txt": clean_caption(row["name"], max_words).encode("utf-8"),
        "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"),
    }


def process_row(row: dict, cfg: WebVidIngestConfig, limiter: Limiter, spool: Path, gate) -> RowResult:
    """Download, validate and (optionally) transcode one row; failures become a RowResult."""
    t0 = time.monotonic()
    result = RowResult()
    src = video = spool / f"{row['key']}.src"
    try:
        if row["category"]:
            raise RowError(row["category"], row["error"])
        fetched = download.fetch(row["contentUrl"], src, cfg.download, limiter, cfg.storage)
        result.attempts, result.fetched = fetched.attempts, fetched.bytes
        with gate:  # ffmpeg is CPU-bound: at most ffmpeg_per_shard at once in this task
            info = media.probe_video(src, cfg.transcode.timeout_s)
            if cfg.transcode.enabled:
                video = spool / f"{row['key']}.mp4"
                media.transcode(src, video, info, cfg.transcode)
                info = media.probe_video(video, cfg.transcode.timeout_s)
            elif cfg.verify_decode:
                media.verify_decode(src, info, cfg.transcode.threads, cfg.transcode.timeout_s)
        result.members = sample_members(row, video, info, cfg.max_caption_words)
        result.status = OK
    except download.FetchError as e:
        result.category, result.error, result.attempts = e.category, str(e), e.attempts
    except media.MediaError as e:  # its message names the spool file; the URL is what a user can act on
        result.category, result.error = e.category, f"{row['contentUrl']}: {e}"
    except RowError as e:
        result.category, result.error = e.category, str(e)
    except Exception as e:  # one bad row never kills the shard
        result.category, result.error = "internal_error", f"{row['source']}: {type(e).__name__}: {e}"
    finally:  # the spool holds at most one file per row: the one that goes into the tar
        if result.members is None or video != src:
            src.unlink(missing_ok=True)
    result.seconds = round(time.monotonic() - t0, 3)
    return result


def process_shard(task: ShardTask, cfg: WebVidIngestConfig, limiter: Limiter) -> dict:
    """Fetch and check every row of one shard on a thread pool, then write the shard; its stats."""
    t0 = time.monotonic()
    spool = Path(tempfile.mkdtemp(prefix=f"webvid-{shards.shard_name(task.index)}-", dir=cfg.spool_dir))
    try:
        gate = threading.Semaphore(cfg.ffmpeg_per_shard)
        step = functools.partial(process_row, cfg=cfg, limiter=limiter, spool=spool, gate=gate)
        rows = task.rows.to_pylist()
        with ThreadPoolExecutor(cfg.download_threads, thread_name_prefix="fetch") as pool:
            results = list(pool.map(step, rows))
        samples = [(row["key"], r.members) for row, r in zip(rows, results, strict=True) if r.members]
        counters = {
            "fetched_bytes": sum(r.fetched for r in results),
            "sample_bytes": sum(Path(r.members["mp4"]).stat().st_size for r in results if r.members),
            "seconds": round(time.monotonic() - t0, 3),
        }
        return shards.write_shard(
            cfg.out, task.index, samples, shards.sidecar(task.rows, results), counters, cfg.storage
        )
    finally:
        shutil.rmtree(spool, ignore_errors=True)


# ---------------------------------------------------------------------------------- run


def run(cfg: WebVidIngestConfig) -> shard_runs.RunSummary:
    """Read the CSVs, plan the shards for `cfg.mode`, write them on Ray, summarise."""
    t0 = time.monotonic()
    inputs = [] if cfg.mode == Mode.RETRY_FAILED else csv_uris(cfg.csvs, cfg.storage)
    rows = read_rows(inputs, cfg.storage) if inputs else None
    tasks = shard_runs.plan(cfg.out, rows, cfg.mode, cfg.samples_per_shard, inputs, cfg.storage)
    stats, failures = [], {}
    if tasks:
        ingest.init_ray()
        with ingest.domain_limiter(cfg.download) as limiter:
            process = functools.partial(process_shard, cfg=cfg, limiter=limiter)
            stats, failures = ingest.run_shards(
                tasks,
                process,
                concurrency=cfg.concurrency,
                cpus_per_shard=cfg.cpus_per_shard,
                progress=cfg.progress,
                desc=f"webvid {cfg.mode.value}",
            )
    return shard_runs.finish_run(cfg.out, cfg.mode, stats, time.monotonic() - t0, cfg.storage, failures)
