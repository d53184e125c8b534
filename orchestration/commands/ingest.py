"""`vllama ingest SOURCE`: turn a public dataset's files into webdataset shards, on Ray.

One sub-subcommand per source; each is a `register_<source>(subparsers)` listed in SOURCES.
"""

from __future__ import annotations

import argparse
import sys

from orchestration.commands import add_config_args
from orchestration.config import load_config

DESCRIPTION = """\
Download and check a dataset's media and write webdataset shards (local folder or s3://), as a
Ray Data job: on the cluster named by RAY_ADDRESS (e.g. under `ray job submit`), else on a local
Ray started for the run.

Every source writes the same layout: NNNNN.tar (samples), NNNNN.parquet (every input row with its
status and error category), NNNNN_stats.json (written last: the shard is complete once it exists),
and _summary.json for the run. Re-runs are safe: mode=incremental skips complete shards,
mode=overwrite starts again, mode=retry-failed fetches only the rows that failed, into new shards."""

WEBVID_DESCRIPTION = """\
WebVid CSVs (videoid,contentUrl,duration,page_dir,name; local or s3://, globs allowed) -> shards of
<videoid>.mp4, <videoid>.txt (caption cleaned as Video-LLaMA does: lowercase, punctuation removed,
at most 50 words) and <videoid>.json (videoid, url, raw caption, duration, fps, width, height,
has_audio, sha256, bytes, page_dir).

Each URL is fetched with a timeout, retries with exponential backoff that honour Retry-After, a
per-domain connection limit shared by every worker, a size limit, and status/Content-Type checks;
loopback and private addresses are refused unless download.allow_networks lists them. Each file is
checked with ffprobe and a full decode, or re-encoded (transcode.enabled: H.264, short side
transcode.short_side, audio kept). Row i of the input lands in shard i // samples_per_shard, so
re-runs rebuild the same shards. The run summary (success rate, counts per error category,
samples/s, MB/s) is printed and written to OUT/_summary.json.

Settings come from the defaults, then --config, then KEY=VALUE overrides. Exit status: 0 when
every planned shard was written (rows may still have failed: see the summary), 1 when some shard
could not be written (re-run with mode=incremental), 2 for bad input or config."""

WEBVID_EPILOG = """\
examples:
  vllama ingest webvid --config configs/ingest_webvid/tiny.yaml
  vllama ingest webvid --config configs/ingest_webvid/full.yaml out=s3://bucket/shards/webvid
  vllama ingest webvid --config configs/ingest_webvid/tiny.yaml mode=retry-failed
  vllama ingest webvid csv='[a.csv, b.csv]' out=/data/shards transcode.enabled=true download.per_domain_limit=32
keys: csv, out, mode (incremental | overwrite | retry-failed), samples_per_shard, concurrency,
cpus_per_shard, download_threads, ffmpeg_per_shard, verify_decode, max_caption_words, spool_dir,
progress, download.* (timeout_s, max_seconds, retries, backoff_s, backoff_max_s, retry_after_max_s,
max_bytes, per_domain_limit, domain_limits, max_redirects, allow_networks, content_types,
user_agent), transcode.* (enabled, short_side, crf, preset, audio_bitrate, threads, timeout_s),
storage.* (endpoint_url, region, profile, anon)."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ingest",
        help="download a dataset's media into webdataset shards (Ray Data)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sources = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    for register_source in SOURCES:
        register_source(sources)


def register_webvid(sources) -> None:
    p = sources.add_parser(
        "webvid",
        help="WebVid CSVs -> mp4/txt/json shards",
        description=WEBVID_DESCRIPTION,
        epilog=WEBVID_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p, "ingest_webvid", "configs/ingest_webvid/tiny.yaml")
    p.set_defaults(func=run_webvid)


def run_webvid(args: argparse.Namespace) -> int:
    from pipelines.sources import webvid  # Ray and pyarrow load only when the command runs

    cfg = load_config(webvid.WebVidIngestConfig, args.config, args.overrides)
    try:
        summary = webvid.run(cfg)
    except (ValueError, FileNotFoundError) as e:  # a CSV without a required column, a changed input...
        print(f"vllama ingest webvid: {e}", file=sys.stderr)
        return 2
    print(summary.text())
    print(f"  summary: {cfg.out.rstrip('/')}/_summary.json")
    return 1 if summary.shards_failed else 0


SOURCES = [register_webvid]
