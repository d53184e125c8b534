"""The Ray side every ingestion source shares: one Ray Data task per shard, a cluster-wide
per-domain limiter, and a progress bar on the driver.

A source supplies `process(task: shard_runs.ShardTask) -> stats dict` (it downloads, validates and
calls `shards.write_shard`); `run_shards` fans the planned shards out over the cluster:

    limiter = domain_limiter(cfg.download)
    stats, failures = run_shards(tasks, functools.partial(process_shard, cfg=cfg, limiter=limiter), ...)

A shard is the unit of work (as in img2dataset): its rows are downloaded by a thread pool inside
the task, so a shard's marker appears as soon as that shard is done, and a crash loses at most
the shards in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import traceback
import uuid
from collections.abc import Callable, Sequence

import pyarrow as pa
import ray
from tqdm.auto import tqdm

from pipelines.download import DomainSlots, DownloadConfig
from pipelines.shard_runs import ShardTask

log = logging.getLogger(__name__)


def init_ray() -> None:
    """Join the cluster named by RAY_ADDRESS (as under `ray job submit`), else start a local one."""
    if not ray.is_initialized():
        ray.init(configure_logging=False, log_to_driver=True)


# ------------------------------------------------------------------------------ domain limiter


@ray.remote(num_cpus=0, max_concurrency=10_000)
class DomainLimiterActor:
    """Per-domain slots for every worker of a job (async actor: waiting callers cost no thread)."""

    def __init__(self, cfg: DownloadConfig):
        self.slots = DomainSlots(cfg)
        self.cond: asyncio.Condition | None = None  # made in the actor's event loop, on first use

    def _condition(self) -> asyncio.Condition:
        if self.cond is None:
            self.cond = asyncio.Condition()
        return self.cond

    async def acquire(self, domain: str) -> str:
        cond = self._condition()
        async with cond:
            while (lease := self.slots.try_acquire(domain, time.monotonic())) is None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(cond.wait(), self.slots.wait_hint(domain, time.monotonic()))
            return lease

    async def release(self, domain: str, lease: str) -> None:
        cond = self._condition()
        async with cond:
            self.slots.release(domain, lease)
            cond.notify_all()

    async def pause(self, domain: str, seconds: float) -> None:
        async with self._condition():
            self.slots.pause(domain, time.monotonic() + seconds)


class RayLimiter:
    """The `download.Limiter` workers use: a handle to the job's `DomainLimiterActor`."""

    def __init__(self, actor):
        self.actor = actor

    @contextlib.contextmanager
    def slot(self, domain: str):
        lease = ray.get(self.actor.acquire.remote(domain))
        try:
            yield
        finally:
            self.actor.release.remote(domain, lease)  # no wait; a lost release expires with its lease

    def pause(self, domain: str, seconds: float) -> None:
        self.actor.pause.remote(domain, seconds)


@contextlib.contextmanager
def domain_limiter(cfg: DownloadConfig):
    """A fresh limiter actor for one job, killed when the job ends."""
    actor = DomainLimiterActor.options(name=f"vllama-domain-limiter-{uuid.uuid4().hex[:8]}").remote(cfg)
    try:
        yield RayLimiter(actor)
    finally:
        ray.kill(actor)


# ------------------------------------------------------------------------------ running shards


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


class _ShardStep:
    """The Ray Data map function: one input row = one shard. Failures come back as data, so one
    broken shard (e.g. storage refusing a write) never stops the job; it simply gets no marker."""

    def __init__(self, process: Callable[[ShardTask], dict]):
        self.process = process

    def __call__(self, item: dict) -> dict:
        task = ShardTask(int(item["index"]), _from_ipc(item["rows"]))
        try:
            return {"index": task.index, "stats": json.dumps(self.process(task)), "error": ""}
        except Exception as e:  # reported per shard; the re-run retries it
            where = traceback.format_exc(limit=-2).strip().splitlines()
            return {"index": task.index, "stats": "", "error": f"{type(e).__name__}: {e} [{' / '.join(where[-3:])}]"}


def run_shards(
    tasks: Sequence[ShardTask],
    process: Callable[[ShardTask], dict],
    *,
    concurrency: int | None = None,
    cpus_per_shard: float = 1.0,
    progress: bool = True,
    desc: str = "ingest",
) -> tuple[list[dict], dict[int, str]]:
    """Run `process` on every task with Ray Data; return (stats of written shards, {shard: error})."""
    if not tasks:
        return [], {}
    init_ray()
    items = [{"index": t.index, "rows": _ipc(t.rows)} for t in tasks]
    # One block per shard, so each shard is its own task and shards spread over the cluster.
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(_ShardStep(process), num_cpus=cpus_per_shard, concurrency=concurrency)
    ctx = ray.data.DataContext.get_current()
    saved, ctx.enable_progress_bars = ctx.enable_progress_bars, False  # one bar, counted in rows, below
    stats, failures = [], {}
    bar = tqdm(total=sum(t.rows.num_rows for t in tasks), desc=desc, unit="row", disable=not progress)
    try:
        for out in ds.iter_rows():
            if out["error"]:
                failures[int(out["index"])] = out["error"]
                log.warning("shard %05d failed, no marker written: %s", out["index"], out["error"])
                bar.update(next(t.rows.num_rows for t in tasks if t.index == out["index"]))
                continue
            s = json.loads(out["stats"])
            stats.append(s)
            bar.update(s["rows"])
            bar.set_postfix(ok=sum(x["ok"] for x in stats), failed=sum(x["failed"] for x in stats), refresh=False)
    finally:
        bar.close()
        ctx.enable_progress_bars = saved
    return stats, failures
