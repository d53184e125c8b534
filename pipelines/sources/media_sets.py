"""A JSON annotation file + the media it names -> webdataset shards, with Ray Data.

The four sets Video-LLaMA reads from local files share this: LLaVA-CC3M-Pretrain-595K and
LLaVA-Instruct-150K (`llava`), MiniGPT-4's cc_sbu_align (`cc_sbu_align`) and VideoChat-11K
(`videochat`). Each format module gives a `SetFormat`: how to walk its JSON into entries (an id,
the media path it names, the entry itself, normalised fields such as the conversation turns).

    read_rows(fmt, uri)   the annotation file -> input rows, numbered in file order
    shard_runs.plan(...)  rows -> the shards this run writes (incremental / overwrite / retry-failed)
    process_shard(...)    one shard: read each media file (folder, .zip or WebVid shard member),
                          check it decodes, write tar + sidecar + stats
    run_set(cfg, name)    one set on Ray, then the run summary; `run(cfg, names)` several

Per sample: `<key>.jpg` (or `.png`/`.webp`, the file's own bytes) or `<key>.mp4`, `<key>.json`
(`original`: the annotation entry exactly as in the file; `turns`: [[human, assistant], ...] with
one `<image>`/`<video>` marker where the media block goes; `caption` for caption sets; the media's
size and sha256) and, for caption sets, `<key>.txt`. Everything a sample needs is in its input
row, so a retry-failed run rebuilds it from the sidecar alone.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import posixpath
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from model.captions import clean_caption
from pipelines import ingest, media, shard_runs, shards, storage
from pipelines.config import config_dataclass
from pipelines.shard_runs import Mode, ShardTask
from pipelines.shards import OK, RowError, RowResult
from pipelines.storage import StorageConfig

IMAGE_EXTS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # formats kept as they are; others are refused
LOCATION_COLUMNS = ("media_uri", "media_offset", "media_size")  # a member inside a tar (VideoChat from WebVid)


@config_dataclass
class SetSource:
    """Where one dataset's files are, and where its shards go."""

    annotations: str = ""  # the dataset's JSON file (local or s3://)
    media: str = ""  # the folder its file names resolve in, or a .zip (LLaVA ships images.zip)
    webvid_shards: tuple[str, ...] = ()  # VideoChat: `vllama ingest webvid` outputs to find videos in, instead
    out: str = ""  # shard folder (local or s3://)

    def __post_init__(self):
        if not self.annotations or not self.out:
            raise ValueError("annotations and out: both required for every set listed")
        if bool(self.media) == bool(self.webvid_shards):
            raise ValueError("set media (a folder or .zip), or for VideoChat webvid_shards instead; exactly one")


@config_dataclass
class MediaSetsIngestConfig:
    """Which sets to ingest and how. A set left out (null) is not run."""

    llava595k: SetSource | None = None  # LLaVA-CC3M-Pretrain-595K: chat.json + images/ or images.zip
    cc_sbu_align: SetSource | None = None  # MiniGPT-4: filter_cap.json + image/
    llava_instruct: SetSource | None = None  # LLaVA-Instruct-150K: llava_instruct_150k.json + COCO train2014/
    videochat: SetSource | None = None  # VideoChat-11K: videochat_instruct_11k.json + videos (folder or WebVid shards)
    mode: Mode = Mode.INCREMENTAL
    samples_per_shard: int = 1000
    concurrency: int | None = None  # shards in flight at once; None lets Ray Data use every CPU
    cpus_per_shard: float = 1.0
    read_threads: int = 16  # media reads in flight per shard task (object-store latency, not CPU)
    ffmpeg_per_shard: int = 1  # ffprobe/ffmpeg processes at once per shard task (videos)
    verify_decode: bool = True  # videos: decode every frame once, so a truncated file fails here, not in training
    max_bytes: int = 512 * 1024 * 1024  # a media file larger than this is refused (too_large)
    max_caption_words: int = 50  # for the stage-1 caption in `txt` (LLaVA-CC3M-595K), as Video-LLaMA's processor
    spool_dir: str | None = None  # local scratch for videos; None = the system temp dir
    progress: bool = True
    storage: StorageConfig = field(default_factory=StorageConfig)

    def __post_init__(self):
        if self.samples_per_shard < 1 or self.read_threads < 1 or self.ffmpeg_per_shard < 1 or self.max_bytes < 1:
            raise ValueError("samples_per_shard, read_threads, ffmpeg_per_shard and max_bytes must be >= 1")

    def source(self, name: str) -> SetSource:
        src = getattr(self, name)
        if src is None:
            raise ValueError(f"{name}: not set in the config; add a `{name}:` section with annotations, media, out")
        return src


# ---------------------------------------------------------------------------------- formats


@dataclass(frozen=True)
class Entry:
    """One annotation entry: its id, the media path it names, the entry itself, normalised fields."""

    id: str
    media: str
    original: Any
    fields: dict = field(default_factory=dict)  # e.g. {"turns": [...], "caption": "..."}; goes into the json
    problem: str = ""  # non-empty: the entry is malformed (bad_row)


@dataclass(frozen=True)
class SetFormat:
    name: str  # the config field and the CLI's name for the set
    kind: Literal["image", "video"]
    entries: Callable[[Any], Iterator[Entry]]  # the parsed JSON -> entries in file order
    txt: Literal["clean", "raw", None] = None  # the `txt` member: the caption cleaned, as is, or none


def unique_keys(ids: list[str]) -> list[str]:
    """Sanitised ids; an id seen before gets `-<n>` (LLaVA-Instruct has up to three conversations per image)."""
    seen: dict[str, int] = {}
    keys = []
    for raw in ids:
        key = shards.sanitize_key(raw)
        n = seen.get(key, 0)
        seen[key] = n + 1
        keys.append(key if n == 0 or not key else f"{key}-{n}")
    return keys


def safe_media_path(rel: Any) -> str:
    """The media path as a relative posix path inside the media folder; ValueError otherwise."""
    if not isinstance(rel, str) or not rel.strip():
        raise ValueError(f"media path {rel!r} is empty or not a string")
    norm = posixpath.normpath(rel.strip().replace("\\", "/"))
    if norm.startswith(("/", "../")) or norm == "..":
        raise ValueError(f"media path {rel!r} leaves the media folder")
    return norm


def read_rows(fmt: SetFormat, uri: str, storage_cfg: StorageConfig | None = None) -> pa.Table:
    """Every entry of the annotation file as an input row; malformed entries are kept as failed rows."""
    try:
        doc = json.loads(storage.read_bytes(uri, storage_cfg))
    except json.JSONDecodeError as e:
        raise ValueError(f"{uri}: not valid JSON ({e}); expected the {fmt.name} annotation file") from None
    try:
        entries = list(fmt.entries(doc))
    except ValueError as e:  # the file's overall shape is wrong: nothing to ingest
        raise ValueError(f"{uri}: {e}") from None
    cols: dict[str, list] = {k: [] for k in ("row", "source", "category", "error", "media", "entry", "meta")}
    for i, entry in enumerate(entries):
        source = f"{uri} entry {i}"
        problem = entry.problem or ("" if shards.sanitize_key(entry.id) else "id is empty or has no usable characters")
        cols["row"].append(i)
        cols["source"].append(source)
        cols["category"].append("bad_row" if problem else "")
        cols["error"].append(f"{source}: {problem}" if problem else "")
        cols["media"].append(entry.media)
        cols["entry"].append(json.dumps(entry.original, ensure_ascii=False))
        cols["meta"].append(json.dumps(entry.fields, ensure_ascii=False))
    cols["key"] = unique_keys([e.id for e in entries])
    for i, reason in shards.mark_duplicates(cols["key"], cols["source"]).items():
        if not cols["category"][i]:
            cols["category"][i], cols["error"][i] = "duplicate", reason
    return shards.input_table(cols)


# ---------------------------------------------------------------------------------- media


class MediaReader:
    """Reads the media file a row names: from a folder, a .zip, or a member of a WebVid shard tar."""

    def __init__(self, src: SetSource, max_bytes: int, storage_cfg: StorageConfig | None):
        self.src, self.max_bytes, self.storage_cfg = src, max_bytes, storage_cfg
        self.zip: zipfile.ZipFile | None = None
        self.names: dict[str, str] = {}
        if src.media.lower().endswith(".zip"):
            fs, path = storage.filesystem(src.media, storage_cfg)
            self.zip = zipfile.ZipFile(fs.open(path, "rb"))  # reads only the central directory up front
            # by full name, and by base name: archives often hold images/<file> where the JSON says <file>
            for name in self.zip.namelist():
                self.names.setdefault(name, name)
                self.names.setdefault(posixpath.basename(name), name)

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def _check_size(self, size: int, where: str) -> None:
        if size > self.max_bytes:
            raise RowError("too_large", f"{where}: {size} bytes > max_bytes {self.max_bytes}")

    def read(self, row: dict) -> bytes:
        if row.get("media_uri"):  # located in a WebVid shard by `videochat.locate_in_webvid`
            self._check_size(row["media_size"], row["media_uri"])
            fs, path = storage.filesystem(row["media_uri"], self.storage_cfg)
            return fs.cat_file(path, start=row["media_offset"], end=row["media_offset"] + row["media_size"])
        if self.src.webvid_shards:
            where = ", ".join(self.src.webvid_shards)
            raise RowError("missing_media", f"{row['media']}: in no complete WebVid shard under {where}")
        if self.zip is not None:
            name = self.names.get(row["media"]) or self.names.get(posixpath.basename(row["media"]))
            if name is None:
                raise RowError("missing_media", f"{row['media']}: not in {self.src.media}")
            self._check_size(self.zip.getinfo(name).file_size, f"{self.src.media}:{name}")
            return self.zip.read(name)
        uri = storage.join(self.src.media, row["media"])
        fs, path = storage.filesystem(uri, self.storage_cfg)
        try:
            self._check_size(fs.size(path), uri)
            return fs.cat_file(path)
        except FileNotFoundError:
            raise RowError("missing_media", f"{uri}: no such file") from None


def check_image(data: bytes, where: str) -> dict:
    """Decode the whole image once; its format (the member's extension) and size. RowError when unusable."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (width, height) = im.format, im.size
            im.load()  # a full decode: a truncated file fails here
    except Image.DecompressionBombError as e:
        raise RowError("too_large", f"{where}: {e}") from None
    except UnidentifiedImageError:
        kind = "an HTML/XML/JSON document" if data.lstrip()[:1] in (b"<", b"{", b"[") else "no image format PIL knows"
        raise RowError("not_image", f"{where}: {kind}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise RowError("decode_error", f"{where}: {e}") from None
    if fmt not in IMAGE_EXTS:
        raise RowError("not_image", f"{where}: {fmt} images are not kept; convert to JPEG or PNG")
    return {"format": IMAGE_EXTS[fmt], "width": width, "height": height}


def check_video(path: Path, cfg: MediaSetsIngestConfig, gate, where: str) -> dict:
    try:
        with gate:  # ffmpeg is CPU-bound: at most ffmpeg_per_shard at once in this task
            info = media.probe_video(path)
            if cfg.verify_decode:
                media.verify_decode(path, info)
    except media.MediaError as e:  # its message names the spool file; the media path is what a user can act on
        raise RowError(e.category, f"{where}: {e}") from None
    fields = ("duration", "fps", "width", "height", "has_audio", "video_codec", "audio_codec")
    return {"format": "mp4", **{f: getattr(info, f) for f in fields}}


# ---------------------------------------------------------------------------------- transform


def _members(fmt: SetFormat, row: dict, data: bytes | Path, info: dict, max_words: int) -> dict[str, bytes | Path]:
    blob = data.read_bytes() if isinstance(data, Path) else data
    meta = json.loads(row["meta"])
    doc = {
        "key": row["key"],
        "dataset": fmt.name,
        "media": row["media"],
        "original": json.loads(row["entry"]),
        **meta,
        fmt.kind: {**info, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()},
    }
    members: dict[str, bytes | Path] = {
        info["format"]: data,
        # no sort_keys: `original` keeps the file's key order (the dict order is fixed, so the bytes are too)
        "json": json.dumps(doc, ensure_ascii=False).encode("utf-8"),
    }
    if fmt.txt is not None:
        caption = meta["caption"]
        members["txt"] = (clean_caption(caption, max_words) if fmt.txt == "clean" else caption).encode("utf-8")
    return members


def process_row(row: dict, fmt: SetFormat, cfg: MediaSetsIngestConfig, reader: MediaReader, spool: Path, gate):
    """Read and check one row's media and build its members; failures become a RowResult."""
    t0 = time.monotonic()
    result = RowResult()
    try:
        if row["category"]:
            raise RowError(row["category"], row["error"])
        data = reader.read(row)
        result.fetched = len(data)
        where = f"{row['source']} ({row['media']})"
        if fmt.kind == "image":
            info = check_image(data, where)
            body: bytes | Path = data
        else:
            body = spool / f"{row['key']}.mp4"
            body.write_bytes(data)
            info = check_video(body, cfg, gate, where)
        result.members = _members(fmt, row, body, info, cfg.max_caption_words)
        result.status = OK
    except RowError as e:
        result.category, result.error = e.category, str(e)
    except Exception as e:  # one bad row never kills the shard
        result.category, result.error = "internal_error", f"{row['source']}: {type(e).__name__}: {e}"
    result.seconds = round(time.monotonic() - t0, 3)
    return result


def process_shard(task: ShardTask, fmt: SetFormat, src: SetSource, cfg: MediaSetsIngestConfig) -> dict:
    """Read and check every row of one shard on a thread pool, then write the shard; its stats."""
    t0 = time.monotonic()
    spool = Path(tempfile.mkdtemp(prefix=f"{fmt.name}-{shards.shard_name(task.index)}-", dir=cfg.spool_dir))
    reader = MediaReader(src, cfg.max_bytes, cfg.storage)
    try:
        step = functools.partial(
            process_row, fmt=fmt, cfg=cfg, reader=reader, spool=spool, gate=threading.Semaphore(cfg.ffmpeg_per_shard)
        )
        rows = task.rows.to_pylist()
        with ThreadPoolExecutor(cfg.read_threads, thread_name_prefix="read") as pool:
            results = list(pool.map(step, rows))
        samples = [(row["key"], r.members) for row, r in zip(rows, results, strict=True) if r.members]
        counters = {"fetched_bytes": sum(r.fetched for r in results), "seconds": round(time.monotonic() - t0, 3)}
        return shards.write_shard(
            src.out, task.index, samples, shards.sidecar(task.rows, results), counters, cfg.storage
        )
    finally:
        reader.close()
        shutil.rmtree(spool, ignore_errors=True)


# ---------------------------------------------------------------------------------- run


def formats() -> dict[str, SetFormat]:
    from pipelines.sources import cc_sbu_align, llava, videochat

    return {f.name: f for f in (llava.LLAVA_595K, cc_sbu_align.FORMAT, llava.LLAVA_INSTRUCT, videochat.FORMAT)}


def run_set(cfg: MediaSetsIngestConfig, name: str) -> shard_runs.RunSummary:
    """Ingest one set of `cfg` (e.g. "llava_instruct"): plan, process on Ray, summarise."""
    from pipelines.sources import videochat

    t0 = time.monotonic()
    fmt, src = formats()[name], cfg.source(name)
    if src.webvid_shards and fmt.kind != "video":
        raise ValueError(f"{name}.webvid_shards: only VideoChat takes its videos from WebVid shards; set media")
    inputs = [] if cfg.mode == Mode.RETRY_FAILED else [src.annotations]
    rows = read_rows(fmt, src.annotations, cfg.storage) if inputs else None
    tasks = shard_runs.plan(src.out, rows, cfg.mode, cfg.samples_per_shard, inputs, cfg.storage)
    if tasks and src.webvid_shards:
        tasks = videochat.locate_in_webvid(tasks, src.webvid_shards, cfg.read_threads, cfg.storage)
    stats, failures = ingest.run_shards(
        tasks,
        functools.partial(process_shard, fmt=fmt, src=src, cfg=cfg),
        concurrency=cfg.concurrency,
        cpus_per_shard=cfg.cpus_per_shard,
        progress=cfg.progress,
        desc=f"{name} {cfg.mode.value}",
    )
    return shard_runs.finish_run(src.out, cfg.mode, stats, time.monotonic() - t0, cfg.storage, failures)


def run(cfg: MediaSetsIngestConfig, names: list[str]) -> dict[str, shard_runs.RunSummary]:
    """Ingest each named set in turn; a set's bad input (ValueError) stops before any later set."""
    for name in names:
        cfg.source(name)  # every named set is configured before the first one starts
    return {name: run_set(cfg, name) for name in names}
