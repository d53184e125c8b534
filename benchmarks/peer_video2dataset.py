"""video2dataset jobs, run by the peer's own interpreter (benchmarks/.peer-venv), never by ours.

    benchmarks/.peer-venv/bin/python benchmarks/peer_video2dataset.py    # then JSON jobs on stdin

Imports only the standard library and video2dataset (its pins differ from this project's, which
is why it has its own environment; benchmarks/peers.py builds it and drives this script). It
imports video2dataset once, prints one JSON line with its versions, then for each JSON job line
on stdin runs `video2dataset(...)` and prints one JSON line: the seconds that call took and the
sums of the per-shard `*_stats.json` it wrote. The call's time includes its worker pool, which
imports video2dataset again in every process, since every job pays that; this driver's own
import is paid once and not timed, as our side's Ray start is not.

Job fields: csv, out (a fresh folder), mode ("a" or "b"), processes, threads, samples_per_shard,
short_side, tmp_dir.
  a: download + FFProbeSubsampler (its only validation: ffprobe's metadata into each sample's
     json) + webdataset tars, no re-encode;
  b: the same plus ResolutionSubsampler(height=short_side, resize_mode="scale"), which re-encodes
     with ffmpeg's defaults (libx264, preset medium, crf 23, threads auto), video stream only.

Run-time patch (used by mode b only): video2dataset 1.3.0's download worker reads
`subsampler.encode_formats["video"]` from the ResolutionSubsampler, which never sets that
attribute (AttributeError on every shard). When the installed version lacks it, this process
sets it to {"video": encode_format} on each new instance; the installed package is not modified.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

PATCH = (
    "ResolutionSubsampler.__init__ wrapped to set self.encode_formats = {'video': self.encode_format}: "
    "video2dataset 1.3.0's DownloadWorker reads that attribute, which the class never sets "
    "(AttributeError: 'ResolutionSubsampler' object has no attribute 'encode_formats')"
)


def patch_resolution_subsampler() -> bool:
    """Give ResolutionSubsampler the attribute the download worker expects (see PATCH), if it lacks it."""
    from video2dataset.subsamplers import ResolutionSubsampler

    if hasattr(ResolutionSubsampler(resize_mode="scale", height=224), "encode_formats"):
        return False  # a fixed release: nothing to patch
    init = ResolutionSubsampler.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        # The instance is built in this (driver) process and pickled into the spawned workers,
        # so the attribute travels with it.
        self.encode_formats = {"video": self.encode_format}

    ResolutionSubsampler.__init__ = __init__
    return True


def config(mode: str, processes: int, threads: int, samples_per_shard: int, short_side: int) -> dict:
    """A complete video2dataset config (its default.yaml's layout) for one mode."""
    subsampling: dict = {"FFProbeSubsampler": {"args": {"extract_keyframes": False}}}
    if mode == "b":
        subsampling["ResolutionSubsampler"] = {"args": {"height": short_side, "resize_mode": "scale"}}
    return {
        "subsampling": subsampling,
        # Direct mp4 links go through its WebFileDownloader (requests); yt_args are never used.
        "reading": {"yt_args": {"download_size": 360, "download_audio_rate": 44100}, "timeout": 60, "sampler": None},
        "storage": {
            "number_sample_per_shard": samples_per_shard,
            "oom_shard_count": 5,
            "captions_are_subtitles": False,
        },
        "distribution": {
            "processes_count": processes,
            "thread_count": threads,
            "subjob_size": 1000,
            "distributor": "multiprocessing",
        },
    }


def shard_stats(out: str) -> dict:
    """Sums over the per-shard `NNNNN_stats.json` video2dataset writes when a shard completes."""
    files = sorted(glob.glob(os.path.join(out, "*_stats.json")))
    totals = {"shards": len(files), "count": 0, "successes": 0, "failed_to_download": 0, "failed_to_subsample": 0}
    errors: dict[str, int] = {}
    for path in files:
        with open(path) as f:
            stats = json.load(f)
        for key in ("count", "successes", "failed_to_download", "failed_to_subsample"):
            totals[key] += int(stats.get(key, 0))
        for message, n in (stats.get("status_dict") or {}).items():
            if message != "success":
                errors[str(message)[:200]] = errors.get(str(message)[:200], 0) + n
    totals["errors"] = errors
    return totals


def run_job(job: dict) -> dict:
    from video2dataset import video2dataset

    os.makedirs(job["tmp_dir"], exist_ok=True)
    cfg = config(job["mode"], job["processes"], job["threads"], job["samples_per_shard"], job["short_side"])
    t0 = time.perf_counter()
    video2dataset(
        url_list=job["csv"],
        output_folder=job["out"],
        output_format="webdataset",
        input_format="csv",
        url_col="contentUrl",
        caption_col="name",
        save_additional_columns=["videoid"],
        incremental_mode="incremental",  # "overwrite" deletes its own _tmp folder in 1.3.0; `out` is fresh
        tmp_dir=job["tmp_dir"],
        config=cfg,
    )
    return {"seconds": time.perf_counter() - t0, "stats": shard_stats(job["out"])}


def versions() -> dict:
    from importlib.metadata import version

    found = {"python": sys.version.split()[0]}
    for package in ("video2dataset", "torch", "webdataset", "pyarrow", "numpy"):
        found[package] = version(package)
    return found


def main() -> None:
    # video2dataset and its workers print progress to stdout: keep the real stdout for our JSON
    # lines and point file descriptor 1 (inherited by the spawned workers) at stderr.
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import video2dataset  # noqa: F401  (the slow import, once)

    patched = patch_resolution_subsampler()
    replies.write(json.dumps({"versions": versions(), "patch": PATCH if patched else None}) + "\n")
    for line in sys.stdin:
        if line.strip():
            try:
                replies.write(json.dumps(run_job(json.loads(line))) + "\n")
            except Exception as e:  # the runner reports it with this process's log
                replies.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")


if __name__ == "__main__":
    main()
