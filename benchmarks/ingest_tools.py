"""The three contenders of the WebVid ingestion benchmark, each run once on one case.

- `ours`: `pipelines.sources.webvid.run` on the local Ray the benchmark started;
- `peer`: one video2dataset job in the peer's own process (benchmarks/peers.py);
- `limit`: the plain ffmpeg/ffprobe command doing the same per-file work over the same local
  files (no download, no tar), with as many processes at once as the tools run ffmpeg processes.

Each returns (seconds, checks). A run that did not produce every video is an error, not a figure:
the checks read the tool's own report (our run summary, the peer's per-shard stats) and then count
the mp4 members of the tars it wrote.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import timed
from benchmarks.peers import PeerProcess
from pipelines import media
from pipelines.sources import webvid
from pipelines.sources.webvid import WebVidIngestConfig


@dataclass(frozen=True)
class Mode:
    """What every contender does per video in one comparison."""

    name: str
    title: str
    verify_decode: bool  # ours: full decode check after ffprobe
    transcode: bool  # ours: the 224 px re-encode (then no separate decode check)
    peer: str | None  # the peer's mode ("a" / "b"), None where it has no equivalent
    limit: str  # "probe" | "decode" | "transcode"


@dataclass(frozen=True)
class Settings:
    """The knobs every contender gets the same value of."""

    processes: int  # Ray CPUs = video2dataset processes = plain ffmpeg processes at once
    threads: int  # download threads per process (ours: per shard task)
    short_side: int
    preset: str  # x264, for ours and the limit; video2dataset cannot set it, so these are its defaults
    crf: int


@dataclass(frozen=True)
class Case:
    """One size of one mode: the CSV both tools read and the files it points at."""

    mode: Mode
    videos: int
    csv: str
    files: tuple[Path, ...]
    megabytes: float
    samples_per_shard: int


class ToolFailed(RuntimeError):
    pass


def mp4_members(out: Path) -> int:
    """How many `.mp4` members the tars under `out` hold."""
    count = 0
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as t:
            count += sum(1 for name in t.getnames() if name.endswith(".mp4"))
    return count


def written_videos(out: Path) -> dict:
    """codec, size and audio of the first mp4 in the first tar, and the sorted (codec, width, height) of
    every mp4 written: the tools name and order their samples differently (the peer writes them as its
    downloads finish), so the whole set is what shows both wrote the same videos."""
    infos = []
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as t:
            for member in (m for m in t.getmembers() if m.name.endswith(".mp4")):
                path = out / "probe.mp4"
                path.write_bytes(t.extractfile(member).read())
                infos.append(media.probe_video(path))
                path.unlink()
    first = infos[0]
    return {"codec": first.video_codec, "width": first.width, "height": first.height, "has_audio": first.has_audio,
            "all": sorted([i.video_codec, i.width, i.height] for i in infos)}  # fmt: skip


def _require(ok: bool, tool: str, case: Case, what: str) -> None:
    if not ok:
        raise ToolFailed(f"{tool}, mode {case.mode.name}, {case.videos} videos: {what}; no figure from this run")


def ours(case: Case, s: Settings, out: Path, spool: Path) -> tuple[float, dict]:
    """Our WebVid ingestion into a fresh `out`."""
    spool.mkdir(parents=True, exist_ok=True)
    cfg = WebVidIngestConfig(
        csv=(case.csv,),
        out=str(out),
        samples_per_shard=case.samples_per_shard,
        cpus_per_shard=1.0,  # Ray has `processes` CPUs: that many shard tasks at once
        download_threads=s.threads,
        ffmpeg_per_shard=1,
        verify_decode=case.mode.verify_decode,
        spool_dir=str(spool),
        progress=False,
        download={"allow_networks": ["127.0.0.0/8"], "per_domain_limit": s.processes * s.threads},
        transcode={"enabled": case.mode.transcode, "short_side": s.short_side, "preset": s.preset, "crf": s.crf},
    )
    seconds, summary = timed(lambda: webvid.run(cfg))
    _require(
        summary.ok == case.videos and summary.failed == 0,
        "ours",
        case,
        f"{summary.ok} ok, {summary.failed} failed ({summary.categories})",
    )
    members = mp4_members(out)
    _require(members == case.videos, "ours", case, f"{members} mp4 members in its tars")
    return seconds, {"ok": summary.ok, "shards": len(summary.shards_written), "mp4_members": members}


def peer(proc: PeerProcess, case: Case, s: Settings, out: Path, tmp: Path) -> tuple[float, dict]:
    """One video2dataset job into a fresh `out`; its own per-shard stats must account for every video."""
    reply = proc.run(
        {
            "csv": case.csv,
            "out": str(out),
            "mode": case.mode.peer,
            "processes": s.processes,
            "threads": s.threads,
            "samples_per_shard": case.samples_per_shard,
            "short_side": s.short_side,
            "tmp_dir": str(tmp),
        }
    )
    stats = reply["stats"]
    failed = stats["failed_to_download"] + stats["failed_to_subsample"]
    _require(
        stats["count"] == case.videos and stats["successes"] == case.videos and not failed,
        "video2dataset",
        case,
        f"its shard stats say {json.dumps(stats)}",
    )
    members = mp4_members(out)
    _require(members == case.videos, "video2dataset", case, f"{members} mp4 members in its tars")
    return reply["seconds"], {**{k: stats[k] for k in ("shards", "count", "successes")}, "mp4_members": members}


def limit_args(kind: str, src: Path, dest: Path, s: Settings) -> list[str]:
    """The plain command for one file: the same ffprobe / decode / encode our pipeline runs."""
    if kind == "probe":
        return [media.ffprobe_bin(), "-v", "error", "-show_format", "-show_streams", "-of", "json", str(src)]
    head = [media.ffmpeg_bin(), "-v", "error", "-nostdin", "-threads", "1", "-i", str(src)]
    if kind == "decode":
        return [*head, "-f", "null", "-"]
    w, h = media.scale_exprs(s.short_side)
    encode = ["-c:v", "libx264", "-preset", s.preset, "-crf", str(s.crf), "-pix_fmt", "yuv420p", "-threads", "1"]
    return [*head, "-vf", f"scale=w='{w}':h='{h}':flags=bicubic", *encode, "-movflags", "+faststart", "-y", str(dest)]


def limit(case: Case, s: Settings, scratch: Path) -> tuple[float, dict]:
    """The plain command over every file of the case, `processes` at once."""
    scratch.mkdir(parents=True, exist_ok=True)

    def one(src: Path) -> None:
        args = limit_args(case.mode.limit, src, scratch / src.name, s)
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    with ThreadPoolExecutor(s.processes) as pool:
        seconds, _ = timed(lambda: list(pool.map(one, case.files)))
    return seconds, {}
