"""img2dataset as the fetch-and-resize engine of an image-URL source, and the commit of its output
into our shard conventions.

    stage(tasks, staging)        the rows img2dataset may fetch: one parquet per planned shard
    download(cfg, staging, ...)  `img2dataset.download(..., output_format="webdataset")` into the staging folder
    commit_shard(task, ...)      one staging shard -> our shard (tar, sidecar with every row, stats marker)

Why a staging folder rather than img2dataset writing the final shards: its tars hold samples in
completion order with the wall-clock time in every header (not reproducible); its `_stats.json`
follows a tar written in place (not atomic) and counts free-text error messages; its parquet lists
only the rows it was given (not the refused ones); and its incremental mode reads every `*.json`
in the folder as a shard marker, which our `_plan.json` / `_summary.json` break. So img2dataset
writes into `<staging>/output/`, and each of our shards is then written from it by
`shards.write_shard`: the same image bytes, our keys, sorted members, our categories.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Literal

import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipelines import shards, storage
from pipelines.config import config_dataclass
from pipelines.shard_runs import ShardTask
from pipelines.shards import OK, RowResult
from pipelines.storage import StorageConfig

_HTTP_ERROR = re.compile(r"HTTP Error (\d{3})")


@config_dataclass
class Img2DatasetConfig:
    """What img2dataset is told. It fetches with urllib: `timeout_s` is per socket operation and
    `retries` are immediate (no backoff, no Retry-After); there is no size cap or per-host limit."""

    distributor: Literal["ray", "multiprocessing"] = "ray"  # ray: tasks on the job's cluster; else this machine
    processes: int = 1  # multiprocessing only: worker processes here (ray runs a task per CPU of the cluster)
    threads: int = 64  # downloads in flight per worker: image fetches are latency-bound
    # Video-LLaMA trains on 224 px crops (RandomResizedCrop, scale 0.5-1) of the whole image: keep the
    # aspect ratio and the whole picture, with the short side at 224, so any crop stays possible.
    image_size: int = 224
    resize_mode: Literal["keep_ratio", "center_crop", "border", "keep_ratio_largest", "no"] = "keep_ratio"
    resize_only_if_bigger: bool = True  # upscaling adds bytes, not information; training resizes anyway
    encode_quality: int = 95
    min_image_size: int = 0  # refuse images whose short side is smaller (category too_small)
    timeout_s: float = 10.0
    retries: int = 2
    user_agent_token: str = "vllama"  # added to the User-Agent; X-Robots-Tag noai/noindex for it are honoured

    def __post_init__(self):
        if self.processes < 1 or self.threads < 1 or self.image_size < 1 or self.retries < 0:
            raise ValueError("img2dataset.processes, threads and image_size must be >= 1 and retries >= 0")
        if not 0 < self.encode_quality <= 100:
            raise ValueError(f"img2dataset.encode_quality={self.encode_quality}: a JPEG quality in 1..100, e.g. 95")


# ------------------------------------------------------------------------------------ staging


def input_dir(staging: str) -> str:
    return storage.join(staging, "input")


def output_dir(staging: str) -> str:
    return storage.join(staging, "output")


def clear(staging: str, storage_cfg: StorageConfig | None = None) -> None:
    fs, path = storage.filesystem(staging, storage_cfg)
    fs.invalidate_cache(path)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def stage(tasks: Sequence[ShardTask], staging: str, storage_cfg: StorageConfig | None = None) -> dict[int, int]:
    """Write each task's fetchable rows (no category yet) as `input/NNNNNNNN.parquet`; return our
    shard -> staging shard. img2dataset makes one shard per file, numbered in file order, as long
    as no file holds more rows than its `number_sample_per_shard` (our samples_per_shard)."""
    clear(staging, storage_cfg)
    staged: dict[int, int] = {}
    for task in tasks:
        fetch = task.rows.filter(pc.equal(task.rows.column("category"), ""))
        if fetch.num_rows == 0:
            continue  # every row was refused: committed without img2dataset
        j = staged[task.index] = len(staged)
        buf = io.BytesIO()
        pq.write_table(fetch.select(["url", "caption", "row"]), buf)
        storage.write_bytes(storage.join(input_dir(staging), f"{j:08d}.parquet"), buf.getvalue(), storage_cfg)
    return staged


# ------------------------------------------------------------------------------------ running it


@contextlib.contextmanager
def _environment(storage_cfg: StorageConfig | None) -> Iterator[None]:
    """What img2dataset's processes need: no network call from albumentations' update check, and
    our S3 settings for fsspec (`FSSPEC_S3` is read by every process it spawns; Ray workers take
    theirs from the cluster environment). Restores the environment and SIGINT handler after."""
    saved = {k: os.environ.get(k) for k in ("NO_ALBUMENTATIONS_UPDATE", "FSSPEC_S3")}
    sigint = signal.getsignal(signal.SIGINT)  # img2dataset installs its own (exit 0) and never restores it
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
    options = (storage_cfg or StorageConfig()).s3_options()
    if options:
        os.environ["FSSPEC_S3"] = json.dumps(options)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, sigint)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _watch(staging: str, rows_per_staged: dict[int, int], stop: threading.Event, storage_cfg) -> None:
    """Progress bar in rows, from the `_stats.json` files img2dataset leaves as it finishes shards
    (its Ray distributor shows none)."""
    with tqdm(total=sum(rows_per_staged.values()), desc="img2dataset", unit="row") as bar:
        while True:
            stopped = stop.wait(2.0)
            done = shards.complete_shards(output_dir(staging), storage_cfg)
            bar.update(sum(rows_per_staged.get(j, 0) for j in done) - bar.n)
            if stopped:
                return


def download(
    cfg: Img2DatasetConfig,
    staging: str,
    samples_per_shard: int,
    rows_per_staged: dict[int, int],
    storage_cfg: StorageConfig | None = None,
    progress: bool = True,
) -> None:
    """Run img2dataset over `<staging>/input/` into `<staging>/output/` (webdataset, its distributor)."""
    with _environment(storage_cfg):
        import img2dataset  # heavy (cv2, albumentations, torch via webdataset): only when a run needs it

        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(staging, rows_per_staged, stop, storage_cfg), daemon=True)
        if progress:
            watcher.start()
        try:
            img2dataset.download(
                url_list=input_dir(staging), input_format="parquet", url_col="url", caption_col="caption",
                save_additional_columns=["row"], output_folder=output_dir(staging), output_format="webdataset",
                number_sample_per_shard=samples_per_shard, distributor=cfg.distributor,
                processes_count=cfg.processes, thread_count=cfg.threads, image_size=cfg.image_size,
                resize_mode=cfg.resize_mode, resize_only_if_bigger=cfg.resize_only_if_bigger, encode_format="jpg",
                encode_quality=cfg.encode_quality, min_image_size=cfg.min_image_size, timeout=cfg.timeout_s,
                retries=cfg.retries, user_agent_token=cfg.user_agent_token, extract_exif=False,
                compute_hash="sha256", incremental_mode="incremental", enable_wandb=False,
            )  # fmt: skip
        finally:
            stop.set()
            if progress:
                watcher.join()


# ------------------------------------------------------------------------------------ commit


def category_of(status: str, message: str | None) -> str:
    """One of our categories for img2dataset's status and free-text error message."""
    if status == "success":
        return OK
    message = message or ""
    if m := _HTTP_ERROR.search(message):
        code = int(m.group(1))
        if code == 429:
            return "http_429"
        return {3: "http_3xx", 4: "http_4xx", 5: "http_5xx"}.get(code // 100, "http_other")
    lower = message.lower()
    if "timed out" in lower:
        return "timeout"
    if "x-robots-tag" in lower:
        return "disallowed"  # the site asks AI crawlers not to use the image
    if status == "failed_to_resize":
        if "too small" in lower:
            return "too_small"
        if "too large" in lower:
            return "too_large"
        return "decode_error"  # not an image at all (an HTML page), truncated, or damaged: cv2 cannot decode it
    if "unknown url type" in lower or "no host given" in lower:
        return "bad_url"
    return "connection_error"  # refused, reset, DNS, TLS: urllib's URLError family


def _staged_results(staging: str, j: int, storage_cfg: StorageConfig | None) -> tuple[dict[int, dict], dict, float]:
    """(row -> img2dataset's parquet record, row -> resized jpg bytes, its seconds) of staging shard j."""
    files = shards.shard_files(output_dir(staging), j)
    if not storage.exists(files.stats, storage_cfg):
        raise RuntimeError(
            f"img2dataset did not finish its shard {j} ({files.stats} is missing; see its log above); "
            "re-run with mode=incremental"
        )
    records = shards.read_sidecar(output_dir(staging), j, storage_cfg).to_pylist()  # same name: NNNNN.parquet
    images = {json.loads(s["json"])["row"]: s["jpg"] for s in shards.read_samples(files.tar, storage_cfg)}
    seconds = json.loads(storage.read_text(files.stats, storage_cfg)).get("duration", 0.0)
    return {r["row"]: r for r in records}, images, seconds


def _members(row: dict, record: dict, jpg: bytes, clean) -> dict[str, bytes]:
    meta = {
        "key": row["key"],
        "url": row["url"],
        "caption": row["caption"],
        "width": record["width"],
        "height": record["height"],
        "original_width": record["original_width"],
        "original_height": record["original_height"],
        "sha256": record["sha256"],  # of the image as downloaded, before resizing
    }
    return {
        "jpg": jpg,
        "txt": clean(row["caption"]).encode("utf-8"),
        "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"),
    }


def commit_shard(
    task: ShardTask, out: str, staging: str, staged: dict[int, int], retries: int, clean, storage_cfg=None
) -> dict:
    """Write our shard `task.index` from img2dataset's staging shard; every input row is in the sidecar."""
    t0 = time.monotonic()
    j = staged.get(task.index)
    records, images, fetch_seconds = _staged_results(staging, j, storage_cfg) if j is not None else ({}, {}, 0.0)
    results, samples = [], []
    for row in task.rows.to_pylist():
        record = records.get(row["row"])
        if row["category"]:  # refused before img2dataset
            results.append(RowResult.failed(row["category"], row["error"]))
        elif record is None:
            results.append(RowResult.failed("internal_error", f"{row['source']}: img2dataset returned no result"))
        elif (category := category_of(record["status"], record["error_message"])) != OK:
            # img2dataset makes every retry on a failed download; its other outcomes do not say how many
            attempts = retries + 1 if record["status"] == "failed_to_download" else 1
            error = f"{row['url']}: {record['error_message']}"
            results.append(RowResult.failed(category, error, attempts=attempts))
        elif row["row"] not in images:
            results.append(RowResult.failed("internal_error", f"{row['source']}: success without an image in the tar"))
        else:
            members = _members(row, record, images[row["row"]], clean)
            results.append(RowResult(status=OK, attempts=1, members=members))
            samples.append((row["key"], members))
    counters = {
        "sample_bytes": sum(len(r.members["jpg"]) for r in results if r.members),
        "fetch_seconds": round(fetch_seconds, 3),  # img2dataset's time on this shard (download and resize)
        "seconds": round(time.monotonic() - t0, 3),  # the commit
    }
    stats = shards.write_shard(out, task.index, samples, shards.sidecar(task.rows, results), counters, storage_cfg)
    if j is not None:  # committed: the staging copy is no longer needed
        files = shards.shard_files(output_dir(staging), j)
        for uri in (files.stats, files.tar, files.sidecar):
            fs, path = storage.filesystem(uri, storage_cfg)
            with contextlib.suppress(FileNotFoundError):
                fs.rm(path)
    return stats
