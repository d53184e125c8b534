"""Every input and output is a URI: `/local/path`, `file:///path` or `s3://bucket/key`.

S3 endpoint, region and credentials come from a `StorageConfig` when it sets them, and
otherwise from the standard AWS chain (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, profiles,
IRSA web identity), which s3fs/botocore read themselves. Credentials are never logged:
they are excluded from `repr` and redacted by `orchestration.config.to_dict`.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from dataclasses import field
from typing import IO

import fsspec
from fsspec.core import url_to_fs

from pipelines.config import config_dataclass

REMOTE_PROTOCOLS = ("s3", "s3a")


@config_dataclass
class StorageConfig:
    """Options for object storage; empty means "use the environment"."""

    endpoint_url: str | None = None  # e.g. http://127.0.0.1:9000 for MinIO or a moto server
    region: str | None = None
    profile: str | None = None
    anon: bool = False
    # Prefer the environment or an IAM role; these exist for endpoints that need static keys.
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)

    def s3_options(self) -> dict:
        """Keyword arguments for `s3fs.S3FileSystem`, only those that are set."""
        opts: dict = {}
        if self.anon:
            opts["anon"] = True
        if self.profile:
            opts["profile"] = self.profile
        if self.access_key_id or self.secret_access_key:
            opts["key"], opts["secret"] = self.access_key_id, self.secret_access_key
        client_kwargs = {}
        if self.endpoint_url:
            client_kwargs["endpoint_url"] = self.endpoint_url
        if self.region:
            client_kwargs["region_name"] = self.region
        if client_kwargs:
            opts["client_kwargs"] = client_kwargs
        return opts


SECRET_FIELDS = frozenset({"access_key_id", "secret_access_key"})


def protocol(uri: str) -> str:
    """`s3` for `s3://b/k`, `file` for a local path or `file://` URI."""
    if "://" not in uri:
        return "file"
    return uri.split("://", 1)[0].lower()


def is_remote(uri: str) -> bool:
    return protocol(uri) in REMOTE_PROTOCOLS


def filesystem(uri: str, storage: StorageConfig | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `uri` and the path inside it."""
    if protocol(uri) not in ("file", *REMOTE_PROTOCOLS):
        raise ValueError(f"{uri}: unsupported storage scheme; use a local path, file:// or s3://")
    opts = (storage or StorageConfig()).s3_options() if is_remote(uri) else {}
    return url_to_fs(uri, **opts)


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI (posix separators for every scheme)."""
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}"
    return os.path.join(uri, *parts)


def exists(uri: str, storage: StorageConfig | None = None) -> bool:
    fs, path = filesystem(uri, storage)
    return fs.exists(path)


def read_bytes(uri: str, storage: StorageConfig | None = None) -> bytes:
    fs, path = filesystem(uri, storage)
    return fs.cat_file(path)


def read_text(uri: str, storage: StorageConfig | None = None) -> str:
    return read_bytes(uri, storage).decode("utf-8")


@contextlib.contextmanager
def open_atomic(uri: str, storage: StorageConfig | None = None) -> Iterator[IO[bytes]]:
    """Open `uri` for binary writing so that readers see the whole file or nothing.

    Local files are written under a temporary name in the same directory and renamed.
    On S3 an object only appears when its upload completes, so the file is written in
    place and the upload is discarded if the block raises.
    """
    fs, path = filesystem(uri, storage)
    if is_remote(uri):
        f = fs.open(path, "wb")
        try:
            yield f
        except BaseException:
            f.discard()  # abort the multipart upload and drop the buffer: nothing becomes visible
            f.closed = True  # so garbage collection does not try to flush the discarded buffer
            raise
        f.close()
        return
    fs.makedirs(posixpath.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(uri: str, data: bytes, storage: StorageConfig | None = None) -> None:
    """Write `data` atomically (see `open_atomic`)."""
    with open_atomic(uri, storage) as f:
        f.write(data)


def write_text(uri: str, text: str, storage: StorageConfig | None = None) -> None:
    write_bytes(uri, text.encode("utf-8"), storage)


def arrow_filesystem(uri: str, storage: StorageConfig | None = None):
    """A pyarrow filesystem over the same fsspec filesystem, for Ray Data readers and writers."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, _ = filesystem(uri, storage)
    return PyFileSystem(FSSpecHandler(fs))
