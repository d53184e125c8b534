"""Storage URIs: local paths, file:// and s3:// through fsspec, written atomically."""

from __future__ import annotations

import os

import pytest

from pipelines import storage
from pipelines.storage import StorageConfig


@pytest.mark.parametrize("scheme", ["local", "file", "s3"])
def test_write_read_round_trip(scheme, tmp_path, request):
    root = {
        "local": lambda: str(tmp_path),
        "file": lambda: tmp_path.as_uri(),
        "s3": lambda: request.getfixturevalue("s3_bucket"),
    }[scheme]()
    uri = storage.join(root, "nested", "dir", "x.json")
    storage.write_text(uri, '{"a": 1}')
    assert storage.exists(uri)
    assert storage.read_text(uri) == '{"a": 1}'


def test_open_atomic_leaves_nothing_when_the_writer_fails_locally(tmp_path):
    uri = str(tmp_path / "out" / "shard.tar")
    with pytest.raises(RuntimeError), storage.open_atomic(uri) as f:
        f.write(b"partial")
        raise RuntimeError("crash mid-write")
    assert os.listdir(tmp_path / "out") == []  # neither the file nor its temporary


def test_open_atomic_leaves_nothing_when_the_writer_fails_on_s3(s3_bucket):
    uri = f"{s3_bucket}/shard.tar"
    with pytest.raises(RuntimeError), storage.open_atomic(uri) as f:
        f.write(b"x" * (6 << 20))  # past s3fs's 5 MiB block: a multipart upload is under way
        raise RuntimeError("crash mid-write")
    assert not storage.exists(uri)


def test_open_atomic_replaces_whole_file(tmp_path):
    uri = str(tmp_path / "f.bin")
    storage.write_bytes(uri, b"old")
    storage.write_bytes(uri, b"new content")
    assert storage.read_bytes(uri) == b"new content"


def test_explicit_storage_config_reaches_the_endpoint(s3_bucket, s3_server, monkeypatch):
    for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    cfg = StorageConfig(
        endpoint_url=s3_server.endpoint_url, region="us-east-1", access_key_id="testing", secret_access_key="testing"
    )
    fs, path = storage.filesystem(f"{s3_bucket}/k", cfg)
    fs.pipe(path, b"v")
    assert fs.cat(path) == b"v"


def test_storage_config_never_shows_credentials():
    cfg = StorageConfig(endpoint_url="http://x", access_key_id="AKIAEXAMPLE", secret_access_key="s3cr3t")
    assert "AKIAEXAMPLE" not in repr(cfg) and "s3cr3t" not in repr(cfg)


def test_unsupported_scheme_is_refused_with_the_uri():
    with pytest.raises(ValueError, match="gs://b/x: unsupported storage scheme"):
        storage.filesystem("gs://b/x")


def test_arrow_filesystem_reads_what_fsspec_wrote(s3_bucket):
    storage.write_bytes(f"{s3_bucket}/a.txt", b"arrow")
    afs = storage.arrow_filesystem(s3_bucket)
    with afs.open_input_stream(f"{s3_bucket[5:]}/a.txt") as f:
        assert f.read() == b"arrow"
