"""Shard machinery (`shards` and `shard_runs`): deterministic tars, sidecar and marker, listing, re-run
planning, summaries."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import pyarrow as pa
import pytest

from pipelines import shard_runs, shards, storage
from pipelines.shard_runs import Mode
from pipelines.shards import OK


def _rows(n: int, start: int = 0) -> pa.Table:
    ids = [str(1000 + i) for i in range(start, start + n)]
    return shards.input_table(
        {"row": list(range(start, start + n)), "key": ids, "source": [f"in.csv line {i + 2}" for i in range(n)],
         "category": [""] * n, "error": [""] * n, "url": [f"http://x/{i}.mp4" for i in ids]}
    )  # fmt: skip


def _sidecar(rows: pa.Table, statuses: list[str], categories: list[str]) -> pa.Table:
    rows = rows.set_column(rows.column_names.index("category"), "category", pa.array(categories, pa.string()))
    n = rows.num_rows
    extra = {"status": pa.array(statuses, pa.string()), "attempts": pa.array([1] * n, pa.int32()),
             "bytes": pa.array([10] * n, pa.int64()), "seconds": pa.array([0.1] * n)}  # fmt: skip
    for name, values in extra.items():
        rows = rows.append_column(name, values)
    return rows


def _write(out, index, rows, outcome: dict[str, str]):
    """Write shard `index` of `rows`, with per-key outcome 'ok' or a failure category."""
    keys = rows.column("key").to_pylist()
    statuses = [OK if outcome.get(k, OK) == OK else "failed" for k in keys]
    cats = ["" if s == OK else outcome[k] for k, s in zip(keys, statuses, strict=True)]
    samples = [(k, {"txt": k.encode(), "json": b"{}"}) for k, s in zip(keys, statuses, strict=True) if s == OK]
    return shards.write_shard(out, index, samples, _sidecar(rows, statuses, cats), {"fetched_bytes": 100})


def test_tar_bytes_depend_only_on_the_samples(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\x00video bytes" * 100)
    a = [("b2", {"txt": b"second", "mp4": video}), ("a1", {"json": b"{}", "txt": b"first"})]
    bufs = []
    for samples in (a, list(reversed(a))):
        buf = io.BytesIO()
        shards.write_tar(buf, samples)
        bufs.append(buf.getvalue())
    assert bufs[0] == bufs[1]
    with tarfile.open(fileobj=io.BytesIO(bufs[0])) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["a1.json", "a1.txt", "b2.mp4", "b2.txt"]
    assert {(m.mtime, m.uid, m.gid, m.mode, m.uname) for m in members} == {(0, 0, 0, 0o644, "")}


@pytest.mark.parametrize(
    ("raw", "key"), [("1066678", "1066678"), ("a.b/c", "a_b_c"), ("../../etc/passwd", "etc_passwd"), ("  ", "")]
)
def test_sanitize_key(raw, key):
    assert shards.sanitize_key(raw) == key


def test_write_tar_refuses_unsanitised_names():
    with pytest.raises(ValueError, match="not sanitised"):
        shards.write_tar(io.BytesIO(), [("../x", {"txt": b""})])
    with pytest.raises(ValueError, match="extension"):
        shards.write_tar(io.BytesIO(), [("x", {"../txt": b""})])


def test_write_shard_stats_and_read_back(tmp_path):
    out = str(tmp_path)
    stats = _write(out, 3, _rows(4), {"1001": "http_4xx", "1003": "timeout"})
    assert stats["rows"] == 4 and stats["ok"] == 2 and stats["failed"] == 2
    assert stats["categories"] == {"http_4xx": 1, "ok": 2, "timeout": 1}
    tar = (tmp_path / "00003.tar").read_bytes()
    assert stats["tar_sha256"] == hashlib.sha256(tar).hexdigest() and stats["tar_bytes"] == len(tar)
    assert shards.read_stats(out, 3) == stats and stats["fetched_bytes"] == 100
    sidecar = shards.read_sidecar(out, 3)
    assert sidecar.column("status").to_pylist() == [OK, "failed", OK, "failed"]
    samples = shards.read_samples(shards.shard_files(out, 3).tar)
    assert [(s["__key__"], s["txt"]) for s in samples] == [("1000", b"1000"), ("1002", b"1002")]


def test_a_crash_before_the_marker_leaves_an_incomplete_shard(tmp_path):
    out = str(tmp_path)
    _write(out, 0, _rows(2), {})
    with pytest.raises(AttributeError):  # a sidecar that cannot be written: the tar is there, the marker is not
        shards.write_shard(out, 1, [("1002", {"txt": b"x"})], "not a table", {})
    assert (tmp_path / "00001.tar").exists() and not (tmp_path / "00001_stats.json").exists()
    assert shards.complete_shards(out) == [0]


def test_plan_incremental_skips_complete_shards_and_refuses_other_inputs(tmp_path):
    out = str(tmp_path)
    rows = _rows(10)
    tasks = shard_runs.plan(out, rows, Mode.INCREMENTAL, 4, ["in.csv"])
    assert [(t.index, t.rows.column("row").to_pylist()) for t in tasks] == [
        (0, [0, 1, 2, 3]), (1, [4, 5, 6, 7]), (2, [8, 9])]  # fmt: skip
    _write(out, 1, tasks[1].rows, {})
    assert [t.index for t in shard_runs.plan(out, rows, "incremental", 4)] == [0, 2]
    with pytest.raises(ValueError, match="samples_per_shard differ"):
        shard_runs.plan(out, rows, Mode.INCREMENTAL, 5)
    with pytest.raises(ValueError, match="keys_sha256 differ"):
        shard_runs.plan(out, _rows(10, start=1), Mode.INCREMENTAL, 4)


def test_overwrite_clears_only_this_layout(tmp_path):
    out = str(tmp_path)
    rows = _rows(4)
    for t in shard_runs.plan(out, rows, Mode.INCREMENTAL, 2):
        _write(out, t.index, t.rows, {})
    shard_runs.finish_run(out, Mode.INCREMENTAL, [], 1.0)
    (tmp_path / "README.txt").write_text("keep me")
    (tmp_path / "00000.tar.tmp-deadbeef").write_bytes(b"crash leftover")
    tasks = shard_runs.plan(out, rows, Mode.OVERWRITE, 2)
    assert [t.index for t in tasks] == [0, 1]
    assert sorted(os.listdir(tmp_path)) == ["README.txt", "_plan.json"]


def test_retry_failed_takes_rows_that_never_succeeded_into_new_shards(tmp_path):
    out = str(tmp_path)
    rows = _rows(6)
    with pytest.raises(ValueError, match="run mode=incremental first"):
        shard_runs.plan(out, None, Mode.RETRY_FAILED, 2)
    tasks = shard_runs.plan(out, rows, Mode.INCREMENTAL, 3)
    _write(out, 0, tasks[0].rows, {"1000": "http_5xx", "1001": "bad_url"})
    with pytest.raises(ValueError, match=r"shards \[1\] of the first run are not complete"):
        shard_runs.plan(out, None, Mode.RETRY_FAILED, 2)
    _write(out, 1, tasks[1].rows, {"1004": "timeout", "1005": "http_429"})

    retry = shard_runs.plan(out, None, Mode.RETRY_FAILED, 2)
    # bad_url cannot change by fetching again; the others are retried, 2 per shard, after shard 1
    assert [(t.index, t.rows.column("key").to_pylist()) for t in retry] == [(2, ["1000", "1004"]), (3, ["1005"])]
    assert retry[0].rows.column("retry_of").to_pylist() == [0, 1]
    assert set(retry[0].rows.column("category").to_pylist()) == {""}
    _write(out, 2, retry[0].rows, {"1004": "timeout"})  # 1000 now succeeds, 1004 fails again
    _write(out, 3, retry[1].rows, {})

    again = shard_runs.plan(out, None, Mode.RETRY_FAILED, 2)
    assert [(t.index, t.rows.column("key").to_pylist(), t.rows.column("retry_of").to_pylist()) for t in again] == [
        (4, ["1004"], [2])]  # fmt: skip
    summary = shard_runs.finish_run(out, Mode.RETRY_FAILED, [shards.read_stats(out, 2), shards.read_stats(out, 3)], 2.0)
    assert summary.retried_from == {2: [0, 1], 3: [1]}
    assert summary.dataset["shards"] == 4 and summary.dataset["samples"] == 4  # 1002, 1003, then 1000 and 1005


def test_finish_run_summarises_and_writes_json(tmp_path):
    out = str(tmp_path)
    rows = _rows(4)
    stats = [_write(out, 0, rows.slice(0, 2), {"1001": "http_4xx"}), _write(out, 1, rows.slice(2, 2), {})]
    summary = shard_runs.finish_run(out, "incremental", stats, 2.0, failures={5: "OSError: disk full"})
    assert (summary.rows, summary.ok, summary.failed, summary.success_rate) == (4, 3, 1, 0.75)
    assert summary.categories == {"http_4xx": 1, "ok": 3}
    assert summary.samples_per_s == 1.5 and summary.mb_per_s == pytest.approx(200 / 1e6 / 2)
    assert summary.shards_written == [0, 1] and summary.shards_failed == {5: "OSError: disk full"}
    doc = json.loads((tmp_path / "_summary.json").read_text())
    assert doc["ok"] == 3 and (tmp_path / "_runs" / f"{summary.run_id}.json").exists()
    assert "75.0% success" in summary.text() and "[5]" in summary.text()
    idle = shard_runs.finish_run(out, "incremental", [], 0.1)
    assert idle.text().splitlines() == [
        f"incremental run into {out}: nothing to do",
        "  dataset: 3 samples in 2 complete shards",
    ]


def test_shards_on_s3_read_back_with_webdataset(s3_bucket):
    out = f"{s3_bucket}/shards"
    rows = _rows(4)
    for t in shard_runs.plan(out, rows, Mode.INCREMENTAL, 2):
        _write(out, t.index, t.rows, {"1002": "not_video"})
    assert shards.complete_shards(out) == [0, 1]
    uris = [shards.shard_files(out, i).tar for i in (0, 1)]
    got = [(s["__key__"], s["txt"], s["__url__"]) for s in shards.webdataset(uris)]
    assert got == [("1000", b"1000", uris[0]), ("1001", b"1001", uris[0]), ("1003", b"1003", uris[1])]
    assert storage.exists(shards.shard_files(out, 1).sidecar)


def test_sidecar_records_each_rows_outcome():
    rows = _rows(2)
    results = [shards.RowResult(status=OK, attempts=1, fetched=10, seconds=0.5),
               shards.RowResult.failed("http_4xx", "http://x/1001.mp4: HTTP 404", attempts=2)]  # fmt: skip
    table = shards.sidecar(rows, results)
    assert table.column_names == [*rows.column_names, "status", "attempts", "bytes", "seconds"]
    assert table.select(["key", "status", "category", "error", "attempts", "bytes"]).to_pylist() == [
        {"key": "1000", "status": "ok", "category": "", "error": "", "attempts": 1, "bytes": 10},
        {"key": "1001", "status": "failed", "category": "http_4xx", "error": "http://x/1001.mp4: HTTP 404",
         "attempts": 2, "bytes": 0},
    ]  # fmt: skip
    assert table.schema.field("attempts").type == pa.int32()
    with pytest.raises(ValueError, match="2 rows but 1 results"):
        shards.sidecar(rows, results[:1])
