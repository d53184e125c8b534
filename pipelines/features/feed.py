"""Read one media shard and decode its samples ahead of the encoders, in the shard's order.

A reader thread streams the tar (hashing it as it goes, so a corrupt source shard is caught without
a second read) and hands each sample's members to a pool of `decode_workers` threads; each runs its
ffmpeg processes and builds the sample's views. The futures go through a queue of `prefetch` slots,
so at most that many decoded samples wait in memory while the encoders work: decoding overlaps the
forward passes, and memory stays bounded whatever the shard size.

    with SampleFeed(task, views_cfg, ...) as feed:
        for item in feed:         # views.Prepared or Failure, in tar order
            ...
        feed.sha256               # of the whole source tar, once the loop has ended
"""

from __future__ import annotations

import queue
import tarfile
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pipelines import storage
from pipelines.features import store as st
from pipelines.features import views
from pipelines.media import MediaError
from pipelines.storage import StorageConfig


class SourceShardError(RuntimeError):
    """The media shard itself cannot be read as recorded (missing, truncated, checksum mismatch)."""


@dataclass(frozen=True)
class Failure:
    """A sample left out of the feature shard, and why."""

    key: str
    category: str  # a pipelines.shards category: decode_error, corrupt, not_video, internal_error
    error: str


class SampleFeed:
    """Prepared samples of one media shard, decoded `prefetch` ahead by `workers` threads."""

    def __init__(
        self,
        tar: str,
        expected_sha256: str,
        expected_samples: int,  # < 0: unknown
        cfg: views.PreprocessConfig,
        spool: Path,
        workers: int = 2,
        prefetch: int = 8,
        timeout: float = 120.0,
        storage_cfg: StorageConfig | None = None,
    ):
        self.tar, self.expected, self.expected_samples = tar, expected_sha256, expected_samples
        self.cfg, self.spool, self.timeout, self.storage_cfg = cfg, spool, timeout, storage_cfg
        self.queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
        self.stop = threading.Event()
        self.reader = threading.Thread(target=self._read, name="shard-reader", daemon=True)
        self.sha256, self.bytes = "", 0
        self.decode_s = 0.0  # summed over the decode threads
        self._lock = threading.Lock()

    def __enter__(self) -> SampleFeed:
        self.reader.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.reader.join(timeout=30)

    def _put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _prepare(self, key: str, members: dict[str, bytes]) -> views.Prepared | Failure:
        t0 = time.perf_counter()
        try:
            return views.prepare(key, members, self.cfg, self.spool, self.timeout)
        except MediaError as e:
            return Failure(key, e.category, str(e))
        except Exception as e:  # one bad sample never fails the shard
            where = traceback.format_exc(limit=-1).strip().splitlines()[-3:]
            return Failure(key, "internal_error", f"{type(e).__name__}: {e} [{' / '.join(where)}]")
        finally:
            with self._lock:
                self.decode_s += time.perf_counter() - t0

    def _read(self) -> None:
        try:
            fs, path = storage.filesystem(self.tar, self.storage_cfg)
            try:
                raw = fs.open(path, "rb")
            except FileNotFoundError:
                raise SourceShardError(f"{self.tar}: media shard not found") from None
            count = 0
            with raw, tarfile.open(fileobj=(hashed := st.HashingReader(raw)), mode="r|") as tar:
                for key, members in st.tar_samples(tar):
                    if self.stop.is_set():
                        return
                    self._put(("sample", self.pool.submit(self._prepare, key, members)))
                    count += 1
                hashed.drain()  # the padding after the end-of-archive blocks is part of the checksum
            self.sha256, self.bytes = hashed.sha.hexdigest(), hashed.size
            if self.expected and self.sha256 != self.expected:
                raise SourceShardError(
                    f"{self.tar}: sha256 {self.sha256[:12]}... differs from {self.expected[:12]}... recorded in its "
                    "_stats.json: the media shard is corrupt or was changed; re-ingest it"
                )
            if self.expected_samples >= 0 and count != self.expected_samples:
                # a tar cut at a member boundary reads as a shorter, valid tar; the count gives it away
                raise SourceShardError(
                    f"{self.tar}: holds {count} samples, its _stats.json says {self.expected_samples}: "
                    "the media shard is truncated or was changed; re-ingest it"
                )
            self._put(("end", None))
        except tarfile.TarError as e:
            self._put(("error", SourceShardError(f"{self.tar}: not a readable tar ({e}); re-ingest this shard")))
        except BaseException as e:
            self._put(("error", e))

    def __iter__(self) -> Iterator[views.Prepared | Failure]:
        while True:
            kind, value = self.queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value.result()
