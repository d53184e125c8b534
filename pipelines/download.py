"""Fetch one media URL (http, https or s3) to a local file, politely and defensively.

- Retries with exponential backoff and full jitter on 429, 5xx, timeouts and dropped connections;
  a `Retry-After` (seconds or an HTTP date, capped) replaces the backoff and pauses the whole
  domain, for every worker sharing the limiter.
- A per-domain concurrency limit through a `Limiter` (threads here; a Ray actor across a cluster,
  see `pipelines.ingest`).
- Only http(s)/s3. Every hostname is resolved once, checked against loopback, private,
  link-local, multicast and reserved ranges (unless `allow_networks` lists them), and the
  connection goes to that checked address, so a DNS answer cannot change between check and
  connect; redirects are followed by hand and checked the same way.
- The size limit holds on the declared Content-Length and on the bytes actually received; the
  status and Content-Type are checked before the body is read.

Failures raise `FetchError` (a `shards.RowError`) with a category from `shards.CATEGORIES`.
"""

from __future__ import annotations

import contextlib
import email.utils
import ipaddress
import random
import socket
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import urllib3

from pipelines import storage
from pipelines.config import config_dataclass
from pipelines.shards import RowError
from pipelines.storage import StorageConfig

CHUNK = 1 << 20
REDIRECTS = (301, 302, 303, 307, 308)
RETRYABLE = frozenset({"http_429", "http_5xx", "timeout", "connection_error"})


@config_dataclass
class DownloadConfig:
    """How each URL is fetched. Defaults suit a public CDN; tests tighten timeouts."""

    timeout_s: float = 30.0  # connect timeout and the longest wait for the next bytes
    max_seconds: float = 600.0  # one attempt's whole download, slow-drip servers included
    retries: int = 3  # extra attempts after the first, for retryable failures only
    backoff_s: float = 1.0  # first retry waits up to this, doubling each time (full jitter)
    backoff_max_s: float = 60.0
    retry_after_max_s: float = 120.0  # a server's Retry-After is honoured up to this
    max_bytes: int = 512 * 1024 * 1024  # WebVid clips are a few MB; this stops endless streams
    per_domain_limit: int = 8  # connections in flight per host, across every worker of the job
    domain_limits: dict[str, int] = field(default_factory=dict)  # per-host exceptions, e.g. {cdn.example: 64}
    max_redirects: int = 5
    # CIDRs exempt from the refusal of non-public addresses, e.g. ["127.0.0.0/8"] for a local test server.
    allow_networks: tuple[str, ...] = ()
    # Accepted Content-Type prefixes; a missing type is accepted and left to ffprobe.
    content_types: tuple[str, ...] = ("video/", "application/octet-stream", "binary/octet-stream", "application/mp4")
    user_agent: str = "vllama-ingest/0.1 (research dataset download; respects Retry-After)"
    ca_bundle: str | None = None  # PEM file of extra trusted CAs (an internal mirror); None: the system store

    def __post_init__(self):
        for net in self.allow_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"download.allow_networks: {net!r} is not a CIDR, e.g. 127.0.0.0/8") from None
        if self.per_domain_limit < 1 or any(v < 1 for v in self.domain_limits.values()):
            raise ValueError("download.per_domain_limit and domain_limits values must be >= 1")
        if self.retries < 0 or self.max_bytes < 1 or self.timeout_s <= 0:
            raise ValueError("download.retries must be >= 0, max_bytes >= 1 and timeout_s > 0")

    def limit_for(self, domain: str) -> int:
        return self.domain_limits.get(domain, self.per_domain_limit)

    def lease_s(self) -> float:
        """How long a slot may be held before the limiter assumes its holder died."""
        return self.max_seconds + 2 * self.timeout_s + 30.0


class FetchError(RowError):
    def __init__(
        self, category: str, message: str, retry_after: float | None = None, retryable: bool | None = None,
        domain: str = "",
    ):  # fmt: skip
        super().__init__(category, message)
        self.domain = domain  # the host that answered (after redirects), for Retry-After pauses
        self.attempts = 1  # set by `fetch` to the attempts made before giving up
        self.retry_after = retry_after
        self.retryable = category in RETRYABLE if retryable is None else retryable


@dataclass(frozen=True)
class Fetched:
    url: str  # after redirects
    bytes: int
    content_type: str
    attempts: int
    seconds: float


# ------------------------------------------------------------------------------ domain limiter


class Limiter(Protocol):
    def slot(self, domain: str) -> contextlib.AbstractContextManager: ...

    def pause(self, domain: str, seconds: float) -> None: ...


class DomainSlots:
    """Bookkeeping for per-domain slots with expiring leases and pauses; no waiting of its own,
    so a thread-based and an asyncio-based limiter share it."""

    def __init__(self, cfg: DownloadConfig):
        self.cfg = cfg
        self.held: dict[str, dict[str, float]] = defaultdict(dict)  # domain -> lease -> expiry
        self.paused_until: dict[str, float] = {}

    def try_acquire(self, domain: str, now: float) -> str | None:
        held = self.held[domain]
        for lease in [k for k, expiry in held.items() if expiry < now]:
            del held[lease]  # its holder died without releasing
        if now < self.paused_until.get(domain, 0.0) or len(held) >= self.cfg.limit_for(domain):
            return None
        lease = uuid.uuid4().hex
        held[lease] = now + self.cfg.lease_s()
        return lease

    def release(self, domain: str, lease: str) -> None:
        self.held[domain].pop(lease, None)

    def pause(self, domain: str, until: float) -> None:
        self.paused_until[domain] = max(self.paused_until.get(domain, 0.0), until)

    def wait_hint(self, domain: str, now: float) -> float:
        """Seconds worth sleeping before trying again (a pause end, or a short poll)."""
        return max(0.05, min(self.paused_until.get(domain, 0.0) - now, 1.0))


class LocalLimiter:
    """Per-domain limits for the threads of one process."""

    def __init__(self, cfg: DownloadConfig):
        self._slots = DomainSlots(cfg)
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def slot(self, domain: str):
        with self._cond:
            while (lease := self._slots.try_acquire(domain, time.monotonic())) is None:
                self._cond.wait(self._slots.wait_hint(domain, time.monotonic()))
        try:
            yield
        finally:
            with self._cond:
                self._slots.release(domain, lease)
                self._cond.notify_all()

    def pause(self, domain: str, seconds: float) -> None:
        with self._cond:
            self._slots.pause(domain, time.monotonic() + seconds)


# ------------------------------------------------------------------------------ URLs, addresses


def domain_of(url: str) -> str:
    """The politeness domain: the host for http(s), `s3://bucket` for s3."""
    parts = urlsplit(url)
    if parts.scheme in ("s3", "s3a"):
        return f"s3://{parts.netloc}"
    return (parts.hostname or "").lower()


def check_url(url: str) -> str:
    """The scheme of a URL this module fetches; FetchError(bad_url) otherwise."""
    if not isinstance(url, str) or not url.strip():
        raise FetchError("bad_url", "empty URL")
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError as e:
        raise FetchError("bad_url", f"{url!r}: {e}") from None
    if parts.scheme not in ("http", "https", "s3", "s3a"):
        raise FetchError("bad_url", f"{url!r}: only http, https and s3 URLs are fetched")
    if not parts.hostname and not parts.netloc:
        raise FetchError("bad_url", f"{url!r}: no host")
    return parts.scheme


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # is_global excludes loopback, private, link-local, shared (100.64/10), reserved and unspecified
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int, allow_networks: tuple[str, ...]) -> str:
    """An address of `host` to connect to; every address it resolves to must be public or allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise FetchError("connection_error", f"cannot resolve {host!r}: {e}", retryable=False) from None
    allowed = [ipaddress.ip_network(n, strict=False) for n in allow_networks]
    addresses = []
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not _is_public(ip) and not any(ip.version == n.version and ip in n for n in allowed):
            raise FetchError(
                "forbidden_address",
                f"{host} resolves to {ip}, which is not a public address; "
                "add its network to download.allow_networks if this is intended",
            )
        addresses.append(str(ip))
    return addresses[0]


# ------------------------------------------------------------------------------ fetching


def fetch(
    url: str, dest: Path, cfg: DownloadConfig, limiter: Limiter, storage_cfg: StorageConfig | None = None
) -> Fetched:
    """Download `url` into `dest`, retrying what is worth retrying; FetchError when it cannot."""
    scheme = check_url(url)
    t0 = time.monotonic()
    for attempt in range(1, cfg.retries + 2):
        try:
            if scheme in ("s3", "s3a"):
                with limiter.slot(domain_of(url)):
                    final, size, ctype = url, _fetch_s3(url, dest, cfg, storage_cfg), ""
            else:
                final, size, ctype = _fetch_http(url, dest, cfg, limiter)
            return Fetched(final, size, ctype, attempt, time.monotonic() - t0)
        except FetchError as e:
            if not e.retryable or attempt > cfg.retries:
                tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                final = FetchError(e.category, f"{e}{tries}", retryable=False)
                final.attempts = attempt
                raise final from None
            if e.retry_after is not None:
                wait = min(e.retry_after, cfg.retry_after_max_s)
                limiter.pause(e.domain or domain_of(url), wait)  # every worker holds off that host, not just this one
            else:
                wait = random.uniform(0, min(cfg.backoff_max_s, cfg.backoff_s * 2 ** (attempt - 1)))
            time.sleep(wait)
    raise AssertionError("unreachable")


def _fetch_http(url: str, dest: Path, cfg: DownloadConfig, limiter: Limiter) -> tuple[str, int, str]:
    """One attempt: follow redirects by hand, each hop checked and counted against its domain."""
    for _ in range(cfg.max_redirects + 1):
        if check_url(url) not in ("http", "https"):
            raise FetchError("bad_url", f"redirect to {url!r}: only http(s) redirects are followed")
        with limiter.slot(domain_of(url)):
            location, ctype = _http_hop(url, dest, cfg)
        if location is None:
            return url, dest.stat().st_size, ctype
        url = urljoin(url, location)
    raise FetchError("http_3xx", f"more than {cfg.max_redirects} redirects, last to {url}", retryable=False)


def _pool(scheme: str, host: str, ip: str, port: int, cfg: DownloadConfig) -> urllib3.HTTPConnectionPool:
    timeout = urllib3.Timeout(connect=cfg.timeout_s, read=cfg.timeout_s)
    if scheme == "https":  # connect to the checked IP, but verify the certificate and SNI for the hostname
        return urllib3.HTTPSConnectionPool(
            ip,
            port,
            timeout=timeout,
            retries=False,
            server_hostname=host,
            assert_hostname=host,
            cert_reqs="CERT_REQUIRED",
            ca_certs=cfg.ca_bundle,
        )
    return urllib3.HTTPConnectionPool(ip, port, timeout=timeout, retries=False)


def _http_hop(url: str, dest: Path, cfg: DownloadConfig) -> tuple[str | None, str]:
    """GET one URL: (redirect Location, '') for a redirect, (None, Content-Type) once the body is in `dest`."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ip = resolve(host, port, cfg.allow_networks)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "User-Agent": cfg.user_agent, "Accept": "video/*, */*;q=0.5"}
    pool = _pool(parts.scheme, host, ip, port, cfg)
    try:
        resp = pool.urlopen("GET", path, headers=headers, redirect=False, retries=False, preload_content=False)
        try:
            if resp.status in REDIRECTS and resp.headers.get("Location"):
                return resp.headers["Location"], ""
            _check_response(url, resp, cfg)
            _stream_to(url, resp, dest, cfg)
            return None, resp.headers.get("Content-Type", "")
        finally:
            resp.release_conn()
    except urllib3.exceptions.NewConnectionError as e:  # (a subclass of ConnectTimeoutError: test it first)
        raise FetchError("connection_error", f"{url}: cannot connect: {e.__class__.__name__}") from None
    except (urllib3.exceptions.ConnectTimeoutError, urllib3.exceptions.ReadTimeoutError):
        raise FetchError("timeout", f"{url}: no answer within {cfg.timeout_s:g} s") from None
    except urllib3.exceptions.ProtocolError as e:
        raise FetchError("connection_error", f"{url}: connection broken: {_short(e)}") from None
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise FetchError("connection_error", f"{url}: {e.__class__.__name__}: {_short(e)}") from None
    finally:
        pool.close()


def _short(e: BaseException) -> str:
    return str(e)[:300]


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now: an integer, or an HTTP date; None if absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def _check_response(url: str, resp, cfg: DownloadConfig) -> None:
    status = resp.status
    if status == 429 or status >= 500:  # a 503 may also say when to come back
        after = retry_after_seconds(resp.headers.get("Retry-After"))
        category, reason = ("http_429", " Too Many Requests") if status == 429 else ("http_5xx", "")
        raise FetchError(category, f"{url}: HTTP {status}{reason}", retry_after=after, domain=domain_of(url))
    if status >= 400:
        raise FetchError("http_4xx", f"{url}: HTTP {status}")
    if status != 200:  # a redirect without Location, 204, 206...: nothing usable
        raise FetchError("http_other", f"{url}: unexpected HTTP {status}")
    ctype = resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if ctype and not ctype.startswith(cfg.content_types):
        raise FetchError("not_video", f"{url}: Content-Type {ctype!r} is not a video type")
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > cfg.max_bytes:
        raise FetchError("too_large", f"{url}: Content-Length {int(length)} bytes > max_bytes {cfg.max_bytes}")


def _stream_to(url: str, resp, dest: Path, cfg: DownloadConfig) -> None:
    deadline = time.monotonic() + cfg.max_seconds
    size = 0
    with open(dest, "wb") as f:
        for chunk in resp.stream(CHUNK):
            size += len(chunk)
            if size > cfg.max_bytes:
                raise FetchError(
                    "too_large", f"{url}: body exceeds max_bytes {cfg.max_bytes} (no or false Content-Length)"
                )
            if time.monotonic() > deadline:
                raise FetchError("timeout", f"{url}: download took over max_seconds {cfg.max_seconds:g}")
            f.write(chunk)


def _fetch_s3(url: str, dest: Path, cfg: DownloadConfig, storage_cfg: StorageConfig | None) -> int:
    """Copy an s3:// object to `dest`; object-store errors map onto the HTTP categories."""
    try:
        fs, path = storage.filesystem(url, storage_cfg)
        size = fs.info(path)["size"]
        if size > cfg.max_bytes:
            raise FetchError("too_large", f"{url}: {size} bytes > max_bytes {cfg.max_bytes}")
        deadline = time.monotonic() + cfg.max_seconds
        with fs.open(path, "rb") as src, open(dest, "wb") as out:
            while block := src.read(CHUNK):
                if time.monotonic() > deadline:
                    raise FetchError("timeout", f"{url}: download took over max_seconds {cfg.max_seconds:g}")
                out.write(block)
        return size
    except FileNotFoundError:
        raise FetchError("http_4xx", f"{url}: no such object") from None
    except PermissionError as e:
        raise FetchError("http_4xx", f"{url}: access denied: {_short(e)}") from None
    except (TimeoutError, ConnectionError) as e:
        raise FetchError(
            "timeout" if isinstance(e, TimeoutError) else "connection_error", f"{url}: {_short(e)}"
        ) from None
    except OSError as e:
        raise FetchError("connection_error", f"{url}: {e.__class__.__name__}: {_short(e)}") from None
