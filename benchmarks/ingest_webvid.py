"""WebVid ingestion throughput against its limit: plain ffmpeg on the same files, same parallelism.

    .venv/bin/python benchmarks/ingest_webvid.py [--videos 200] [--runs 3]

Generates a sample set (pipelines.sample_data), serves it over HTTP on loopback, and measures:

- the pipeline (`vllama ingest webvid` on a local Ray with one CPU per shard task) in two
  settings: `validate` (download, ffprobe, full decode check, shard writing) and `transcode`
  (the same with a 224 px H.264 re-encode instead of the decode check);
- the limit for each: the plain `ffmpeg` command over the same local files (`-f null` decode, and
  the same re-encode), run by as many processes at once as the pipeline runs ffmpeg processes
  (Ray CPUs x ffmpeg_per_shard).

Each figure is the median of --runs runs after one warm-up run (Ray starts its workers then).
videos/s counts videos; MB/s counts source bytes. Writes benchmarks/results/ingest_webvid.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import ray

from pipelines import media
from pipelines.sample_data import SampleDataConfig, generate
from pipelines.sources import webvid
from pipelines.sources.webvid import WebVidIngestConfig

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "ingest_webvid"
RESULTS = HERE / "results" / "ingest_webvid.json"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def serve(root: Path) -> ThreadingHTTPServer:
    """The sample folder over HTTP on 127.0.0.1 (a plain static server, as a CDN would be)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def pipeline_run(csv: str, out: Path, transcode: bool, workers: int) -> tuple[float, int]:
    """One ingestion run from scratch; (seconds, videos ingested)."""
    cfg = WebVidIngestConfig(
        csv=(csv,),
        out=str(out),
        mode="overwrite",
        samples_per_shard=25,
        download_threads=8,
        ffmpeg_per_shard=1,
        cpus_per_shard=1.0,
        progress=False,
        download={"allow_networks": ["127.0.0.0/8"], "per_domain_limit": 4 * workers},
        transcode={"enabled": transcode, "short_side": 224},
    )
    t0 = time.perf_counter()
    summary = webvid.run(cfg)
    return time.perf_counter() - t0, summary.ok


def ffmpeg_limit(files: list[Path], workers: int, transcode: bool, scratch: Path) -> float:
    """Seconds for the plain ffmpeg command over every file, `workers` processes at once."""
    scratch.mkdir(parents=True, exist_ok=True)
    cfg = media.TranscodeConfig(enabled=True, short_side=224)
    w, h = media.scale_exprs(cfg.short_side)

    def one(path: Path) -> None:
        if transcode:  # the same encoder settings as media.transcode
            args = ["-i", str(path), "-vf", f"scale=w='{w}':h='{h}':flags=bicubic", "-c:v", "libx264",
                    "-preset", cfg.preset, "-crf", str(cfg.crf), "-pix_fmt", "yuv420p", "-threads", "1", "-c:a", "aac",
                    "-b:a", cfg.audio_bitrate, "-movflags", "+faststart", "-y", str(scratch / path.name)]  # fmt: skip
        else:
            args = ["-i", str(path), "-f", "null", "-"]
        subprocess.run([media.ffmpeg_bin(), "-v", "error", "-nostdin", *args], check=True)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, files))
    return time.perf_counter() - t0


def machine() -> dict:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    version = subprocess.run([media.ffmpeg_bin(), "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "ffmpeg": version,
        "note": "shared machine: other engineers' jobs ran at the same time, so figures are noisy",
    }


def measure(label: str, fn, runs: int, n: int, mb: float) -> dict:
    fn()  # warm-up: Ray workers start, page cache fills
    seconds = []
    for _ in range(runs):
        seconds.append(fn())
        print(f"  {label}: {seconds[-1]:.2f} s")
    med = statistics.median(seconds)
    return {"seconds": [round(s, 3) for s in seconds], "median_s": round(med, 3),
            "videos_per_s": round(n / med, 2), "mb_per_s": round(mb / med, 3)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    sample = generate(SampleDataConfig(out=str(WORK / "sample"), videos=args.videos, images=0, val_fraction=0.0))
    files = [Path(sample.path(v.file)) for v in sample.videos]
    mb = sum(f.stat().st_size for f in files) / 1e6
    workers = os.cpu_count() or 1  # Ray CPUs = shard tasks at once = ffmpeg processes at once
    server = serve(Path(sample.root))
    csv = sample.write_webvid_csv(
        str(WORK / "webvid.csv"), base_url=f"http://127.0.0.1:{server.server_port}", split=None
    )
    ray.init(num_cpus=workers, include_dashboard=False, configure_logging=False, log_to_driver=False)
    print(f"{len(files)} videos, {mb:.1f} MB, {workers} ffmpeg processes at once")

    def pipeline(transcode: bool) -> float:
        seconds, ok = pipeline_run(csv, WORK / "shards", transcode, workers)
        assert ok == len(files), f"only {ok} of {len(files)} videos ingested"
        return seconds

    result = {
        "benchmark": "ingest_webvid",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "videos": len(files),
        "source_mb": round(mb, 3),
        "parallelism": workers,
        "runs": args.runs,
        "pipeline": {
            "validate": measure("pipeline validate", lambda: pipeline(False), args.runs, len(files), mb),
            "transcode": measure("pipeline transcode", lambda: pipeline(True), args.runs, len(files), mb),
        },
        "ffmpeg_limit": {
            "decode": measure(
                "ffmpeg decode", lambda: ffmpeg_limit(files, workers, False, WORK / "x"), args.runs, len(files), mb
            ),  # fmt: skip
            "transcode": measure(
                "ffmpeg transcode", lambda: ffmpeg_limit(files, workers, True, WORK / "x"), args.runs, len(files), mb
            ),  # fmt: skip
        },
    }
    result["pipeline_over_limit"] = {
        "validate_vs_decode": round(result["pipeline"]["validate"]["videos_per_s"]
                                    / result["ffmpeg_limit"]["decode"]["videos_per_s"], 3),
        "transcode_vs_transcode": round(result["pipeline"]["transcode"]["videos_per_s"]
                                        / result["ffmpeg_limit"]["transcode"]["videos_per_s"], 3),
    }  # fmt: skip
    server.shutdown()
    ray.shutdown()
    shutil.rmtree(WORK / "x", ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("pipeline", "ffmpeg_limit", "pipeline_over_limit")}, indent=1))


if __name__ == "__main__":
    main()
