"""CC3M ingestion end to end: TSV -> our screening -> img2dataset (its Ray distributor) -> our shards,
against the real media server and moto S3."""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter

import pyarrow as pa
import pytest
from PIL import Image

from orchestration import cli
from orchestration.config import ConfigError, from_dict, merge
from pipelines import shards, storage
from pipelines.sources import cc3m, img2dataset_run
from pipelines.sources.cc3m import CC3MIngestConfig

# Each row is a sample image served through one route; the second item is the outcome expected.
ROUTES = [
    ("files", "ok"),
    ("redirect", "ok"),  # after a 302
    ("retry-after/1/1", "ok"),  # img2dataset retries at once; the server answers the second request
    ("status/404", "http_4xx"),
    ("status/500", "http_5xx"),
    ("retry-after/5/0", "http_429"),  # still 429 after the retry
    ("slow/3", "timeout"),
    ("cut", "connection_error"),  # full Content-Length, half the body
    ("html-as-image", "decode_error"),  # img2dataset does not check Content-Type: the decode fails
    ("truncated", "decode_error"),
    ("huge/0.02", "decode_error"),  # 20 MB of zeros: img2dataset has no size cap, so it reads them, then cannot decode
]


def _cfg(tsv, out: str, **overrides) -> CC3MIngestConfig:
    base = {
        "tsv": tsv if isinstance(tsv, list | tuple) else [tsv],
        "out": out,
        "samples_per_shard": 4,
        "allow_networks": ["127.0.0.0/8"],
        "progress": False,
        "img2dataset": {"threads": 4, "timeout_s": 1.0, "retries": 1},
    }
    return from_dict(CC3MIngestConfig, merge(base, overrides))


def _tsv(sample_data, server, routes: list[str], extra: list[str] = ()) -> str:
    images = sample_data.images
    lines = [f"{images[i % len(images)].caption}\t{server.url(images[i % len(images)].file, r)}"
             for i, r in enumerate(routes)]  # fmt: skip
    return "\n".join([*lines, *extra]) + "\n"


def _sidecars(out: str) -> pa.Table:
    return pa.concat_tables([shards.read_sidecar(out, i) for i in shards.complete_shards(out)])


def _samples(out: str) -> list[dict]:
    return [s for i in shards.complete_shards(out) for s in shards.read_samples(shards.shard_files(out, i).tar)]


def test_tsv_rows_keys_and_malformed_lines(tmp_path):
    (tmp_path / "a.tsv").write_text("a red circle\thttp://h/1.jpg\n\nno tab here\nempty url\t \n")
    with gzip.open(tmp_path / "b.tsv.gz", "wt") as f:
        f.write("a blue square\thttp://h/2.jpg\nx\ty\tz\n")
    uris = cc3m.tsv_uris((str(tmp_path / "a.tsv"), str(tmp_path / "*.gz")))
    rows = cc3m.read_rows(uris, key_prefix="GCC_val_").to_pylist()
    assert [(r["row"], r["key"], r["category"]) for r in rows] == [
        (0, "GCC_val_000000000", ""), (1, "GCC_val_000000001", "bad_row"), (2, "GCC_val_000000002", "bad_url"),
        (3, "GCC_val_000000003", ""), (4, "GCC_val_000000004", "bad_row")]  # fmt: skip
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv.gz"
    assert (rows[0]["caption"], rows[0]["url"], rows[0]["source"]) == ("a red circle", "http://h/1.jpg", f"{a} line 1")
    assert rows[1]["error"] == f"{a} line 3: expected caption<TAB>url, got 1 tab-separated fields"
    assert rows[2]["error"] == f"{a} line 4: url is empty"
    assert rows[4]["error"] == f"{b} line 2: expected caption<TAB>url, got 3 tab-separated fields"
    with pytest.raises(FileNotFoundError, match=r"nothing\*.tsv: no TSV matches"):
        cc3m.tsv_uris((str(tmp_path / "nothing*.tsv"),))


def test_screening_refuses_before_img2dataset_sees_a_url(tmp_path):
    urls = ["http://93.184.216.34/a.jpg", "ftp://93.184.216.34/a.jpg", "s3://bucket/a.jpg", "http:///a.jpg",
            "http://127.0.0.1:9/a.jpg", "http://10.1.2.3/a.jpg", "https://[::1]/a.jpg",
            "http://169.254.169.254/x"]  # fmt: skip
    (tmp_path / "c.tsv").write_text("".join(f"caption {i}\t{u}\n" for i, u in enumerate(urls)))
    rows = cc3m.read_rows([str(tmp_path / "c.tsv")])
    screened = cc3m.screen(rows, allow_networks=("127.0.0.0/8",)).to_pylist()
    assert [r["category"] for r in screened] == ["", "bad_url", "bad_url", "bad_url", "", "forbidden_address",
                                                 "forbidden_address", "forbidden_address"]  # fmt: skip
    assert screened[2]["error"].endswith("'s3://bucket/a.jpg': only http(s) URLs are fetched (img2dataset uses urllib)")
    assert "169.254.169.254 resolves to 169.254.169.254, which is not a public address" in screened[7]["error"]
    assert cc3m.screen(rows).column("category")[4].as_py() == "forbidden_address"  # loopback only when allowed


def test_img2dataset_messages_map_onto_our_categories():
    cases = {
        ("failed_to_download", "HTTP Error 404: Not Found"): "http_4xx",
        ("failed_to_download", "HTTP Error 429: Too Many Requests"): "http_429",
        ("failed_to_download", "HTTP Error 503: Service Unavailable"): "http_5xx",
        ("failed_to_download", "<urlopen error timed out>"): "timeout",
        ("failed_to_download", "The read operation timed out"): "timeout",
        ("failed_to_download", "<urlopen error [Errno 111] Connection refused>"): "connection_error",
        ("failed_to_download", "IncompleteRead(100 bytes read, 200 more expected)"): "connection_error",
        ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive"): "disallowed",
        ("failed_to_resize", "Image decoding error"): "decode_error",
        ("failed_to_resize", "image too small"): "too_small",
        ("failed_to_resize", "image area too large"): "too_large",
        ("success", None): "ok",
    }
    assert {k: img2dataset_run.category_of(*k) for k in cases} == cases


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"allow_networks: 'lan' is not a CIDR"):
        from_dict(CC3MIngestConfig, {"tsv": ["a.tsv"], "out": "o", "allow_networks": ["lan"]})
    with pytest.raises(ConfigError, match=r"tsv: required"):
        from_dict(CC3MIngestConfig, {"out": "o"})
    with pytest.raises(ConfigError, match=r"img2dataset.resize_mode"):
        from_dict(CC3MIngestConfig, {"tsv": ["a.tsv"], "out": "o", "img2dataset": {"resize_mode": "stretch"}})


@pytest.mark.slow
def test_every_misbehaviour_is_counted_and_only_good_images_are_kept(ray_local, sample_data, media_server, tmp_path):
    extra = ["a caption without a url", "bad scheme\tftp://127.0.0.1/x.jpg", "private\thttp://10.255.255.1/x.jpg"]
    (tmp_path / "cc3m.tsv").write_text(_tsv(sample_data, media_server, [r for r, _ in ROUTES], extra))
    out = str(tmp_path / "out")
    summary = cc3m.run(_cfg(str(tmp_path / "cc3m.tsv"), out))

    expected = [outcome for _, outcome in ROUTES] + ["bad_row", "bad_url", "forbidden_address"]
    assert summary.categories == dict(Counter(expected)) and summary.rows == 14
    assert summary.shards_written == [0, 1, 2, 3] and summary.samples_per_s > 0
    sidecar = _sidecars(out)
    assert sidecar.column("row").to_pylist() == list(range(14))
    outcome = [s if s == "ok" else c for s, c in zip(*(sidecar.column(n).to_pylist() for n in ("status", "category")),
                                                    strict=True)]  # fmt: skip
    assert outcome == expected
    assert all(e for e, o in zip(sidecar.column("error").to_pylist(), outcome, strict=True) if o != "ok")
    assert (
        sidecar.column("error")[3]
        .as_py()
        .endswith("status/404/images/GCC_train_000000003.jpg: HTTP Error 404: Not Found")
    )

    samples = _samples(out)
    assert [s["__key__"] for s in samples] == [f"GCC_train_{i:09d}" for i in range(3)]
    for i, s in enumerate(samples):
        image, meta = sample_data.images[i], json.loads(s["json"])
        assert (meta["original_width"], meta["original_height"]) == (image.width, image.height)
        assert meta["sha256"] == image.sha256  # the bytes img2dataset downloaded are the served file
        scale = min(1.0, 224 / min(image.width, image.height))  # short side 224, never upscaled, aspect kept
        with Image.open(io.BytesIO(s["jpg"])) as im:
            assert im.format == "JPEG" and im.size == (meta["width"], meta["height"])
            assert abs(im.width - image.width * scale) <= 1 and abs(im.height - image.height * scale) <= 1
        assert s["txt"].decode() == image.caption and meta["caption"] == image.caption
    assert media_server.requests[f"/retry-after/1/1/{sample_data.images[2].file}"] == 2
    assert media_server.requests[f"/slow/3/{sample_data.images[6 % 8].file}"] == 2  # one retry
    stats = shards.read_stats(out, 2)
    assert stats["categories"] == {"bad_row": 1, "decode_error": 3} and (stats["rows"], stats["ok"]) == (4, 0)
    assert not storage.exists(f"{out}/_img2dataset")  # staging is removed once every shard is committed


@pytest.mark.slow
def test_s3_in_and_out_and_the_same_bytes_as_a_local_run(ray_local, sample_data, media_server, s3_bucket, tmp_path):
    text = _tsv(sample_data, media_server, ["files"] * len(sample_data.images))
    storage.write_text(f"{s3_bucket}/in/cc3m.tsv", text)
    out = f"{s3_bucket}/shards/cc3m"
    summary = cc3m.run(_cfg(f"{s3_bucket}/in/cc3m.tsv", out, samples_per_shard=5))
    assert summary.ok == 8 and shards.complete_shards(out) == [0, 1]
    got = list(shards.webdataset([shards.shard_files(out, i).tar for i in range(2)]))
    assert [s["__key__"] for s in got] == [f"GCC_train_{i:09d}" for i in range(8)]
    assert [json.loads(s["json"])["sha256"] for s in got] == [im.sha256 for im in sample_data.images]
    assert not storage.exists(f"{out}/_img2dataset")

    (tmp_path / "cc3m.tsv").write_text(text)  # the same rows from a local file, into a local folder
    local = str(tmp_path / "local")
    cc3m.run(_cfg(str(tmp_path / "cc3m.tsv"), local, samples_per_shard=5))
    for i in range(2):  # img2dataset's completion order and timestamps do not reach our shards
        assert storage.read_bytes(shards.shard_files(out, i).tar) == storage.read_bytes(
            shards.shard_files(local, i).tar
        )


@pytest.mark.slow
def test_incremental_rerun_does_nothing_and_retry_failed_fetches_only_failed_rows(
    ray_local, sample_data, media_server, tmp_path
):
    images = sample_data.images
    # image 0 gets a 429 once, then works (the server counts requests); image 1 is gone for good
    routes = ["retry-after/1/0", "status/404", "files", "files"]
    (tmp_path / "c.tsv").write_text(_tsv(sample_data, media_server, routes, ["x\tftp://127.0.0.1/y.jpg"]))
    out, tsv = str(tmp_path / "out"), str(tmp_path / "c.tsv")
    first = cc3m.run(_cfg(tsv, out, img2dataset={"retries": 0}))
    assert first.categories == {"ok": 2, "http_429": 1, "http_4xx": 1, "bad_url": 1}
    assert shards.complete_shards(out) == [0, 1]

    before = Counter(media_server.requests)
    again = cc3m.run(_cfg(tsv, out, img2dataset={"retries": 0}))
    assert again.rows == 0 and again.shards_written == [] and media_server.requests == before
    assert "nothing to do" in again.text()

    retry = cc3m.run(_cfg(tsv, out, mode="retry-failed", img2dataset={"retries": 0}))
    flaky, gone = (f"/{r}/{im.file}" for r, im in zip(routes[:2], images[:2], strict=True))
    assert Counter(media_server.requests) - before == {flaky: 1, gone: 1}  # bad_url not at all
    assert retry.shards_written == [2] and retry.retried_from == {2: [0]}
    assert retry.categories == {"ok": 1, "http_4xx": 1} and retry.dataset["samples"] == 3
    assert [s["__key__"] for s in shards.read_samples(shards.shard_files(out, 2).tar)] == ["GCC_train_000000000"]
    keys = [s["__key__"] for s in _samples(out)]
    assert sorted(keys) == ["GCC_train_000000000", "GCC_train_000000002", "GCC_train_000000003"]


def test_cli_help_and_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["ingest", "cc3m", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "caption<TAB>url" in text and "img2dataset" in text and "configs/ingest_cc3m/tiny.yaml" in text
    assert cli.main(["ingest", "cc3m", f"tsv=[{tmp_path / 'missing.tsv'}]", f"out={tmp_path / 'out'}"]) == 2
    assert "missing.tsv" in capsys.readouterr().err
