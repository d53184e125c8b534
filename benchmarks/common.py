"""What every benchmark section shares: the machine record, timed runs with their load, medians,
and a static file server on loopback.

A section writes one `results/<name>.json` holding `machine()`, its inputs, every run's figures
and the medians; the figures are only comparable between runs on the same machine record.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pipelines import media

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "benchmarks" / "work"  # git-ignored: generated inputs, scratch outputs, the peer's logs


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine(extra_versions: dict[str, str | None] | None = None) -> dict:
    """CPU model, cores, memory, OS and the versions that decide the figures."""
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    ffmpeg = subprocess.run([media.ffmpeg_bin(), "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    versions = {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "ray": _version("ray"),
        "webdataset": _version("webdataset"),
        "img2dataset": _version("img2dataset"),
        "ffmpeg": (ffmpeg.removeprefix("ffmpeg version ").split() or ["?"])[0],  # e.g. 6.0-static
        **(extra_versions or {}),
    }
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": platform.platform(),
        "versions": versions,
    }


def load_1m() -> float:
    """The 1-minute load average: more than the core count means other work shared the CPUs."""
    return round(os.getloadavg()[0], 2)


@dataclass
class Series:
    """Repeated timed runs of one thing at one size: per-run seconds and load, then the medians."""

    videos: int
    megabytes: float
    seconds: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)  # 1-minute load average when each run started
    extra: list[dict] = field(default_factory=list)  # per-run checks (e.g. the peer's own stats)

    def add(self, seconds: float, load: float, extra: dict | None = None) -> None:
        self.seconds.append(round(seconds, 3))
        self.load.append(load)
        if extra:
            self.extra.append(extra)

    def summary(self) -> dict:
        med = statistics.median(self.seconds)
        doc = {
            "videos": self.videos,
            "source_mb": round(self.megabytes, 3),
            "seconds": self.seconds,
            "load_1m": self.load,
            "median_s": round(med, 3),
            "videos_per_s": round(self.videos / med, 2),
            "mb_per_s": round(self.megabytes / med, 3),
        }
        if self.extra:
            doc["runs"] = self.extra
        return doc


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # processes x download threads connect at once


class StaticServer:
    """A folder over plain HTTP on 127.0.0.1 (a static server, as a CDN would be); a context manager.

    Every tool under test downloads from the same server in the same process, so its cost is the same
    for each. (tests/harness/media_server.py is the misbehaving twin the tests use for faults.)
    """

    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> StaticServer:
        threading.Thread(target=self._httpd.serve_forever, daemon=True, name="bench-http").start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
