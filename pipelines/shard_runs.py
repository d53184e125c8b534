"""Runs over a shard folder: the three re-run modes, and the run summary.

Row i of the input goes to shard i // samples_per_shard whatever succeeds or fails, so a re-run
rebuilds a shard from the same rows. Besides the shards (see `shards`), a folder holds:

    _plan.json          how the input rows map to shards; incremental re-runs check it
    _summary.json       the latest run's summary; `_runs/<run id>.json` keeps every run's

A source's driver:

    tasks = plan(out, rows, mode, samples_per_shard, inputs)   # rows: shards.input_table(...)
    ... write each task's shard with shards.write_shard(out, task.index, ...) ...
    summary = finish_run(out, mode, stats_of_written_shards, seconds, failures=...)
"""

from __future__ import annotations

import enum
import hashlib
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from pipelines import storage
from pipelines.shards import OK, RESULT_COLUMNS, SHARD_FILE, complete_shards, listing, read_sidecar, read_stats
from pipelines.storage import StorageConfig

PLAN = "_plan.json"
SUMMARY = "_summary.json"
# Failures a retry-failed run skips: fetching again cannot change them.
PERMANENT = frozenset({"bad_row", "bad_url", "duplicate"})


class Mode(str, enum.Enum):
    """What a run does with shards already in the output."""

    INCREMENTAL = "incremental"  # skip complete shards; (re)write the rest
    OVERWRITE = "overwrite"  # remove this layout's files, then write every shard
    RETRY_FAILED = "retry-failed"  # fetch only rows that failed and never succeeded, into new shards


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
    names = listing(out, storage_cfg)
    markers = [n for n in names if n.endswith("_stats.json") and SHARD_FILE.match(n)]
    rest = [n for n in names if (SHARD_FILE.match(n) and n not in markers) or n in (PLAN, SUMMARY) or ".tmp-" in n]
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
        dataset = (
            f"  dataset: {self.dataset.get('samples', 0)} samples in {self.dataset.get('shards', 0)} complete shards"
        )
        if not self.rows and not self.shards_failed:
            return f"{self.mode} run into {self.out}: nothing to do\n{dataset}"
        lines = [
            f"{self.mode} run into {self.out}: {self.rows} rows in {len(self.shards_written)} shards, "
            f"{self.ok} ok / {self.failed} failed ({100 * self.success_rate:.1f}% success) in {self.seconds:.1f} s",
            # a source that cannot count fetched bytes (img2dataset does not report them) shows no MB/s
            f"  {self.samples_per_s:.2f} samples/s"
            + (f", {self.mb_per_s:.2f} MB/s fetched" if self.fetched_bytes else ""),
            f"  categories: {cats or 'none'}",
            dataset,
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
        mb_per_s=round(fetched / 1e6 / seconds, 6) if seconds > 0 else 0.0,
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
