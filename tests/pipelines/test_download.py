"""Downloads against the real local media server (and moto S3): every misbehaviour, retries,
Retry-After, per-domain limits, address checks."""

from __future__ import annotations

import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from harness.media_server import MediaServer

from pipelines import download, storage
from pipelines.download import DomainSlots, DownloadConfig, FetchError, LocalLimiter

LOOPBACK = ("127.0.0.0/8",)
FAST = DownloadConfig(allow_networks=LOOPBACK, timeout_s=1.0, retries=1, backoff_s=0.05, max_bytes=2_000_000)


@pytest.fixture(scope="module")
def _server(sample_data):
    with MediaServer(Path(sample_data.root)) as server:
        yield server


@pytest.fixture
def media_server(_server):
    """One server for the module (stopping one costs 0.5 s), with fresh counters per test."""
    _server.reset_counts()
    return _server


@pytest.fixture
def video(sample_data):
    return sample_data.videos[0]


def _fetch(url: str, tmp_path: Path, cfg: DownloadConfig = FAST, limiter=None):
    return download.fetch(url, tmp_path / "dl", cfg, limiter or LocalLimiter(cfg))


def _fails(url: str, tmp_path: Path, cfg: DownloadConfig = FAST) -> FetchError:
    with pytest.raises(FetchError) as info:
        _fetch(url, tmp_path, cfg)
    return info.value


def test_good_file_arrives_whole(media_server, sample_data, video, tmp_path):
    got = _fetch(media_server.url(video.file), tmp_path)
    assert (tmp_path / "dl").read_bytes() == Path(sample_data.path(video.file)).read_bytes()
    assert (got.bytes, got.attempts, got.content_type) == (
        video_size := (tmp_path / "dl").stat().st_size,
        1,
        "video/mp4",
    )
    assert video_size > 1000


def test_redirect_is_followed(media_server, video, tmp_path):
    got = _fetch(media_server.url(video.file, "redirect"), tmp_path)
    assert got.url == media_server.url(video.file) and got.attempts == 1
    assert media_server.requests == {f"/redirect/{video.file}": 1, f"/files/{video.file}": 1}


@pytest.mark.parametrize(
    ("route", "category", "requests"),
    [
        ("status/404", "http_4xx", 1),  # not retried
        ("status/403", "http_4xx", 1),
        ("status/500", "http_5xx", 2),  # retried once (retries=1)
        ("status/503", "http_5xx", 2),
        ("retry-after/5/0", "http_429", 2),  # still 429 after the retry
        ("slow/3", "timeout", 2),
        ("cut", "connection_error", 2),  # full Content-Length, half the body
        ("huge/10", "too_large", 1),  # refused on Content-Length, before any body
        ("huge-chunked", "too_large", 1),  # no length: stopped at max_bytes while streaming
    ],
)
def test_misbehaviour_lands_in_its_category(media_server, video, tmp_path, route, category, requests):
    err = _fails(media_server.url(video.file, route), tmp_path)
    assert err.category == category, str(err)
    assert sum(media_server.requests.values()) == requests == err.attempts
    assert media_server.url(video.file, route) in str(err)


def test_huge_download_stops_early(media_server, video, tmp_path):
    t0 = time.monotonic()
    _fails(media_server.url(video.file, "huge-chunked"), tmp_path)
    assert time.monotonic() - t0 < 5
    assert (tmp_path / "dl").stat().st_size <= FAST.max_bytes


def test_html_content_type_is_not_video(tmp_path, media_server, sample_data):
    # /status pages are text/html; serve a real HTML file with status 200 via /files
    page = Path(sample_data.root) / "page.html"
    page.write_text("<html>removed</html>")
    try:
        err = _fails(media_server.url("page.html"), tmp_path)
    finally:
        page.unlink()
    assert err.category == "not_video" and "text/html" in str(err)


def test_retry_after_is_waited_out_then_succeeds(media_server, video, tmp_path):
    t0 = time.monotonic()
    got = _fetch(media_server.url(video.file, "retry-after/1/1"), tmp_path)
    assert got.attempts == 2 and time.monotonic() - t0 >= 1.0
    assert (tmp_path / "dl").stat().st_size == got.bytes > 1000


def test_retry_after_is_capped(media_server, video, tmp_path):
    cfg = DownloadConfig(allow_networks=LOOPBACK, retries=1, retry_after_max_s=0.2)
    t0 = time.monotonic()
    got = _fetch(media_server.url(video.file, "retry-after/1/3600"), tmp_path, cfg)
    assert got.attempts == 2 and time.monotonic() - t0 < 5


def test_retry_after_pauses_the_whole_domain(media_server, sample_data, tmp_path):
    """A 429 with Retry-After holds back other downloads from the same host, not just its own retry."""
    a, b = sample_data.videos[:2]
    cfg = DownloadConfig(allow_networks=LOOPBACK, retries=1)
    limiter = LocalLimiter(cfg)
    first = threading.Thread(target=_fetch, args=(media_server.url(a.file, "retry-after/1/1"), tmp_path, cfg, limiter))
    first.start()
    time.sleep(0.3)  # the 429 has been answered and the pause set
    t0 = time.monotonic()
    download.fetch(media_server.url(b.file), tmp_path / "other", cfg, limiter)
    first.join()
    assert time.monotonic() - t0 >= 0.5


def test_retry_after_http_date():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    later = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert download.retry_after_seconds(later, now) == 90.0
    assert download.retry_after_seconds("7", now) == 7.0
    assert download.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now) == 0.0  # in the past
    assert download.retry_after_seconds("soon", now) is None and download.retry_after_seconds(None) is None


@pytest.mark.parametrize(
    ("url", "message"),
    [("", "empty URL"), ("ftp://host/x.mp4", "only http, https and s3"), ("file:///etc/passwd", "only http"),
     ("http://", "no host"), ("http://host:99999/x", "out of range")],
)  # fmt: skip
def test_bad_urls(url, message, tmp_path):
    err = _fails(url, tmp_path)
    assert err.category == "bad_url" and message in str(err)


def test_loopback_is_refused_unless_allowed(media_server, video, tmp_path):
    err = _fails(media_server.url(video.file), tmp_path, DownloadConfig())
    assert err.category == "forbidden_address" and "allow_networks" in str(err)
    assert sum(media_server.requests.values()) == 0  # refused before connecting
    narrow = DownloadConfig(allow_networks=("127.0.0.2/32",))
    assert _fails(media_server.url(video.file), tmp_path, narrow).category == "forbidden_address"


@pytest.mark.parametrize(
    "host", ["localhost", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "224.0.0.1",
             "0.0.0.0", "240.0.0.1", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1"],
)  # fmt: skip
def test_non_public_addresses_are_refused(host):
    with pytest.raises(FetchError) as info:
        download.resolve(host, 80, ())
    assert info.value.category == "forbidden_address"


def test_public_address_passes():
    assert download.resolve("93.184.215.14", 80, ()) == "93.184.215.14"


def test_redirect_to_a_forbidden_address_is_refused(sample_data, video, tmp_path):
    """A server on an allowed address redirecting to one that is not: checked again per hop."""
    with MediaServer(Path(sample_data.root)) as target:

        class Redirect(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(302)
                self.send_header("Location", target.url(video.file))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.2", 0), Redirect)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            cfg = DownloadConfig(allow_networks=("127.0.0.2/32",))
            err = _fails(f"http://127.0.0.2:{server.server_address[1]}/x.mp4", tmp_path, cfg)
        finally:
            server.shutdown()
            server.server_close()
        assert err.category == "forbidden_address" and "127.0.0.1" in str(err)
        assert sum(target.requests.values()) == 0


def test_per_domain_limit_holds_across_threads(sample_data, tmp_path):
    cfg = DownloadConfig(allow_networks=LOOPBACK, per_domain_limit=2)
    limiter = LocalLimiter(cfg)
    with MediaServer(Path(sample_data.root), latency=0.3) as server:
        urls = [server.url(v.file) for v in sample_data.videos[:8]]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda iu: download.fetch(iu[1], tmp_path / str(iu[0]), cfg, limiter), enumerate(urls)))
        assert server.peak_connections == 2


def test_domain_slots_expire_leases_of_dead_holders():
    cfg = DownloadConfig(per_domain_limit=1, max_seconds=1.0, timeout_s=1.0)  # lease: 1 + 2 + 30 s
    slots = DomainSlots(cfg)
    assert slots.try_acquire("a", now=0.0) is not None
    assert slots.try_acquire("a", now=10.0) is None  # held
    assert slots.try_acquire("b", now=10.0) is not None  # another domain has its own slot
    assert slots.try_acquire("a", now=40.0) is not None  # the first holder never released: expired
    slots.pause("b", until=50.0)
    assert slots.try_acquire("b", now=45.0) is None and slots.wait_hint("b", 45.0) == 1.0


def test_s3_objects(s3_bucket, sample_data, video, tmp_path):
    data = Path(sample_data.path(video.file)).read_bytes()
    storage.write_bytes(f"{s3_bucket}/v/{video.id}.mp4", data)
    got = _fetch(f"{s3_bucket}/v/{video.id}.mp4", tmp_path)
    assert (tmp_path / "dl").read_bytes() == data and got.bytes == len(data)
    assert _fails(f"{s3_bucket}/v/missing.mp4", tmp_path).category == "http_4xx"
    small = DownloadConfig(max_bytes=100)
    assert _fails(f"{s3_bucket}/v/{video.id}.mp4", tmp_path, small).category == "too_large"


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for `localhost` and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_pem, key_pem = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))  # fmt: skip
    return cert_pem, key_pem


def test_https_verifies_the_certificate_for_the_hostname(sample_data, video, tmp_path):
    """The connection goes to the checked IP, yet TLS still checks the certificate against the URL's host."""
    cert, key = _self_signed(tmp_path)
    body = Path(sample_data.path(video.file)).read_bytes()

    class Files(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        trusted = DownloadConfig(allow_networks=LOOPBACK, ca_bundle=str(cert), retries=0)
        got = _fetch(f"https://localhost:{port}/v.mp4", tmp_path, trusted)
        assert got.bytes == len(body) and (tmp_path / "dl").read_bytes() == body
        untrusted = DownloadConfig(allow_networks=LOOPBACK, retries=0)
        err = _fails(f"https://localhost:{port}/v.mp4", tmp_path, untrusted)
        assert err.category == "connection_error" and "CERTIFICATE_VERIFY_FAILED" in str(err)
        wrong_name = _fails(f"https://127.0.0.1:{port}/v.mp4", tmp_path, trusted)  # the cert names localhost only
        assert wrong_name.category == "connection_error"
    finally:
        server.shutdown()
        server.server_close()
