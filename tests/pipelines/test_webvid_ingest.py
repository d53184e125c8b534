"""WebVid ingestion end to end on a local Ray, against the real media server and moto S3."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from harness.media_server import MediaServer

from orchestration import cli
from orchestration.config import from_dict, merge, to_dict
from pipelines import shards, storage
from pipelines.sources import webvid
from pipelines.sources.webvid import WebVidIngestConfig, clean_caption

REPO = Path(__file__).resolve().parents[2]
HEADER = "videoid,contentUrl,duration,page_dir,name"
# Each sample video is served through one route; the comment is the outcome the test expects.
ROUTES = [
    "files",  # ok
    "redirect",  # ok, after a 302
    "retry-after/1/1",  # ok, after waiting out one 429 with Retry-After: 1
    "status/404",  # http_4xx
    "status/500",  # http_5xx (retried, still 500)
    "retry-after/5/0",  # http_429 (still 429 after the retry)
    "slow/3",  # timeout
    "cut",  # connection_error
    "html-as-video",  # not_video
    "truncated",  # decode_error
    "huge/10",  # too_large (Content-Length)
    "huge-chunked",  # too_large (streamed)
]
EXPECTED = ["ok", "ok", "ok", "http_4xx", "http_5xx", "http_429", "timeout", "connection_error", "not_video",
            "decode_error", "too_large", "too_large"]  # fmt: skip


def _cfg(csv, out: str, **overrides) -> WebVidIngestConfig:
    base = {
        "csv": csv if isinstance(csv, list | tuple) else [csv],
        "out": out,
        "samples_per_shard": 4,
        "download_threads": 4,
        "progress": False,
        "download": {"allow_networks": ["127.0.0.0/8"], "timeout_s": 1.0, "retries": 1, "backoff_s": 0.05,
                     "max_bytes": 2_000_000},
    }  # fmt: skip
    return from_dict(WebVidIngestConfig, merge(base, overrides))


def _csv(sample_data, dest: str, server, routes=None, extra: list[str] = ()) -> str:
    routes = routes or ["files"] * len(sample_data.videos)
    by_id = {v.id: r for v, r in zip(sample_data.videos, routes, strict=False)}
    sample_data.write_webvid_csv(dest, split=None, url_for=lambda s: server.url(s.file, by_id.get(s.id, "files")))
    text = storage.read_text(dest).splitlines()
    keep = text[: 1 + len(by_id)]
    storage.write_text(dest, "\n".join([*keep, *extra]) + "\n")
    return dest


def _all_samples(out: str) -> dict[int, list[dict]]:
    return {i: shards.read_samples(shards.shard_files(out, i).tar) for i in shards.complete_shards(out)}


def _sidecars(out: str) -> pa.Table:
    return pa.concat_tables([shards.read_sidecar(out, i) for i in shards.complete_shards(out)])


def test_clean_caption_matches_video_llama():
    assert clean_caption("A Red: circle (moves) LEFT!!  Then #stops; ~fin.") == "a red circle moves left then stops fin"
    assert clean_caption("It's 4 o'clock, isn't it?") == "it's 4 o'clock, isn't it?"  # only .!"()*#:;~ go
    assert clean_caption(" ".join(f"w{i}" for i in range(60))) == " ".join(f"w{i}" for i in range(50))
    assert clean_caption("Tab\tand\nnewline.") == "tab\tand\nnewline"


def test_csv_missing_a_column_fails_fast(tmp_path):
    path = tmp_path / "webvid.csv"
    path.write_text("videoid,duration,page_dir,name\n1,PT1S,p,x\n")
    with pytest.raises(ValueError, match=r"webvid.csv: column 'contentUrl' missing from the header"):
        webvid.read_rows([str(path)])
    assert cli.main(["ingest", "webvid", f"csv={path}", f"out={tmp_path / 'out'}"]) == 2


def test_rows_are_numbered_across_csvs_and_malformed_rows_are_kept(tmp_path):
    (tmp_path / "b.csv").write_text(f"{HEADER}\n3,http://h/3.mp4,PT1S,p,three\n")
    (tmp_path / "a.csv").write_text(
        f'{HEADER}\n1,http://h/1.mp4,PT1S,p,"one, quoted"\n\n2,http://h/2.mp4\n4,,PT1S,p,x\n1,http://h/9.mp4,PT1S,p,y\n'
    )
    uris = webvid.csv_uris((str(tmp_path / "a.csv"), str(tmp_path / "*.csv")))
    assert [Path(u).name for u in uris] == ["a.csv", "a.csv", "b.csv"]
    rows = webvid.read_rows(uris[:1] + uris[2:]).to_pylist()
    assert [(r["row"], r["key"], r["category"]) for r in rows] == [
        (0, "1", ""), (1, "", "bad_row"), (2, "4", "bad_url"), (3, "1", "duplicate"), (4, "3", "")]  # fmt: skip
    a = tmp_path / "a.csv"
    assert rows[0]["name"] == "one, quoted" and rows[0]["source"] == f"{a} line 2"
    assert rows[1]["error"] == f"{a} line 4: column 'duration' missing (2 fields, the header has 5)"
    assert rows[2]["error"] == f"{a} line 5: contentUrl is empty"
    assert rows[3]["error"] == f"{a} line 6: key '1' already used by {a} line 2"


def test_every_misbehaviour_is_counted_and_only_good_samples_are_kept(ray_local, sample_data, media_server, tmp_path):
    extra = [
        "2000000000,ftp://host/x.mp4,PT00H00M02S,p,Bad url.",  # bad_url
        "2000000001,,PT00H00M02S,p,Empty url.",  # bad_url
        "2000000002,http://127.0.0.1/x.mp4",  # bad_row (columns missing)
        f"1000000000,{media_server.url(sample_data.videos[4].file)},PT00H00M02S,p,Dup.",  # duplicate
        "2000000003,http://10.255.255.1/x.mp4,PT00H00M02S,p,Private.",  # forbidden_address
        f"2000000004,{media_server.url(sample_data.videos[4].file)},PT00H00M02S,p,Reused clip!",  # ok
    ]
    csv = _csv(sample_data, str(tmp_path / "webvid.csv"), media_server, ROUTES, extra)
    summary = webvid.run(_cfg(csv, str(tmp_path / "out")))

    expected = Counter(EXPECTED) + Counter(["bad_url", "bad_url", "bad_row", "duplicate", "forbidden_address", "ok"])
    assert summary.categories == dict(expected) and summary.rows == 18 and summary.shards_written == [0, 1, 2, 3, 4]
    sidecar = _sidecars(str(tmp_path / "out"))
    assert sidecar.column("row").to_pylist() == list(range(18))
    statuses, categories = sidecar.column("status").to_pylist(), sidecar.column("category").to_pylist()
    outcome = [s if s == "ok" else c for s, c in zip(statuses, categories, strict=True)]
    assert outcome == [*EXPECTED, "bad_url", "bad_url", "bad_row", "duplicate", "forbidden_address", "ok"]
    assert all(sidecar.column("error")[i].as_py() for i in range(18) if outcome[i] != "ok")

    samples = [s for per_shard in _all_samples(str(tmp_path / "out")).values() for s in per_shard]
    good = {v.id: v for v in sample_data.videos[:3]} | {"2000000004": sample_data.videos[4]}
    assert sorted(s["__key__"] for s in samples) == sorted(good)
    for s in samples:
        v, meta = good[s["__key__"]], json.loads(s["json"])
        assert s["mp4"] == Path(sample_data.path(v.file)).read_bytes()  # no transcode: the bytes as served
        assert (meta["width"], meta["height"], meta["fps"], meta["has_audio"]) == (
            v.width,
            v.height,
            v.fps,
            v.has_audio,
        )
        assert meta["sha256"] == hashlib.sha256(s["mp4"]).hexdigest() and meta["bytes"] == len(s["mp4"])
        assert meta["duration"] == pytest.approx(v.duration, abs=0.1) and meta["videoid"] == s["__key__"]
        assert s["txt"].decode() == (v.caption if meta["caption"] != "Reused clip!" else "reused clip")
    assert media_server.requests[f"/retry-after/1/1/{sample_data.videos[2].file}"] == 2


def test_s3_in_and_out_read_back_with_webdataset(ray_local, sample_data, media_server, s3_bucket):
    csv = _csv(sample_data, f"{s3_bucket}/in/webvid.csv", media_server)
    out = f"{s3_bucket}/shards/webvid"
    summary = webvid.run(_cfg(csv, out, samples_per_shard=5))
    assert summary.ok == 12 and shards.complete_shards(out) == [0, 1, 2]
    got = list(shards.webdataset([shards.shard_files(out, i).tar for i in range(3)]))
    assert [s["__key__"] for s in got] == [v.id for v in sample_data.videos]  # ids ascend like the rows
    for s, v in zip(got, sample_data.videos, strict=True):
        assert hashlib.sha256(s["mp4"]).hexdigest() == v.sha256 and s["txt"].decode() == v.caption
    assert json.loads(storage.read_text(f"{out}/_summary.json"))["ok"] == 12


def test_per_domain_limit_holds_for_each_domain(ray_local, sample_data, tmp_path):
    root = Path(sample_data.root)
    with MediaServer(root, latency=0.3) as one, MediaServer(root, host="127.0.0.2", latency=0.3) as two:
        rows = [
            f"{i}{k},{server.url(v.file)},PT1S,p,x"
            for i, v in enumerate(sample_data.videos[:8])
            for k, server in enumerate((one, two))
        ]
        (tmp_path / "w.csv").write_text("\n".join([HEADER, *rows]) + "\n")
        cfg = _cfg(str(tmp_path / "w.csv"), str(tmp_path / "out"), samples_per_shard=8, download_threads=8,
                   download={"per_domain_limit": 2, "timeout_s": 5.0})  # fmt: skip
        summary = webvid.run(cfg)
        assert summary.ok == 16
        assert (one.peak_connections, two.peak_connections) == (2, 2)


def test_retry_failed_fetches_only_failed_rows_into_new_shards(ray_local, sample_data, media_server, tmp_path):
    videos = sample_data.videos
    # video 0 gets a 429 once, then works (the server is "fixed" by the second request); video 1 is gone for good
    routes = ["retry-after/1/0", "status/404", *["files"] * 4]
    csv = _csv(sample_data, str(tmp_path / "w.csv"), media_server, routes, ["2000000000,ftp://x/y.mp4,PT1S,p,z"])
    out = str(tmp_path / "out")
    first = webvid.run(_cfg(csv, out, download={"retries": 0}))
    assert first.categories == {"ok": 4, "http_429": 1, "http_4xx": 1, "bad_url": 1}
    assert shards.complete_shards(out) == [0, 1]

    # (counters are compared, not reset: the retry-after route counts its requests to know when to work)
    before = Counter(media_server.requests)
    retry = webvid.run(_cfg(csv, out, mode="retry-failed", download={"retries": 0}))
    flaky, gone = (f"/{r}/{v.file}" for r, v in zip(routes[:2], videos[:2], strict=True))
    assert media_server.requests - before == {flaky: 1, gone: 1}  # only the failed rows, bad_url not at all
    assert retry.shards_written == [2] and retry.retried_from == {2: [0]}
    assert retry.categories == {"ok": 1, "http_4xx": 1} and retry.dataset["samples"] == 5
    assert [s["__key__"] for s in shards.read_samples(shards.shard_files(out, 2).tar)] == [videos[0].id]

    before = Counter(media_server.requests)
    again = webvid.run(_cfg(csv, out, mode="retry-failed", download={"retries": 0}))
    assert media_server.requests - before == {gone: 1}  # the row that succeeded on retry is not fetched again
    assert again.shards_written == [3] and shards.read_sidecar(out, 3).column("retry_of").to_pylist() == [2]
    keys = [s["__key__"] for per_shard in _all_samples(out).values() for s in per_shard]
    assert sorted(keys) == sorted([v.id for v in videos[:6] if v is not videos[1]])  # no duplicates


@pytest.mark.slow
def test_killed_run_resumes_to_identical_shards(ray_local, sample_data, tmp_path):
    """SIGKILL the CLI after its first shard marker; an incremental re-run gives the same bytes as
    an uninterrupted run (transcoding on, so the encoder's determinism is checked too)."""
    root = Path(sample_data.root)
    with MediaServer(root, latency=0.4) as server:
        csv = _csv(sample_data, str(tmp_path / "w.csv"), server)
        (tmp_path / "spool").mkdir()  # killed workers leave their scratch behind: keep it in tmp_path
        common = {"samples_per_shard": 2, "transcode": {"enabled": True}, "download": {"per_domain_limit": 1},
                  "spool_dir": str(tmp_path / "spool")}  # fmt: skip
        reference = str(tmp_path / "reference")
        webvid.run(_cfg(csv, reference, **common))

        killed = str(tmp_path / "killed")
        config = tmp_path / "ingest.yaml"
        config.write_text(json.dumps(to_dict(_cfg(csv, killed, **common), redact=False)))  # JSON is YAML
        env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address, PYTHONPATH=str(REPO))
        with open(tmp_path / "cli.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "ingest", "webvid", "--config",
                                     str(config)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not shards.complete_shards(killed):
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "cli.log").read_text()[-3000:]
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert 1 <= len(shards.complete_shards(killed)) < 6

        resumed = webvid.run(_cfg(csv, killed, **common))
        assert resumed.shards_written and len(resumed.shards_written) < 6
    assert shards.complete_shards(killed) == shards.complete_shards(reference) == list(range(6))
    for i in range(6):
        a, b = shards.shard_files(reference, i).tar, shards.shard_files(killed, i).tar
        assert storage.read_bytes(a) == storage.read_bytes(b), f"shard {i} differs"
    keys = [s["__key__"] for per_shard in _all_samples(killed).values() for s in per_shard]
    assert len(keys) == len(set(keys)) == 12


def test_cli_help_explains_each_subcommand(capsys):
    for argv in (["ingest", "--help"], ["ingest", "webvid", "--help"]):
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        assert done.value.code == 0
    text = capsys.readouterr().out
    assert "retry-failed" in text and "Retry-After" in text and "configs/ingest_webvid/tiny.yaml" in text
