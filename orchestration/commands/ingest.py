"""`vllama ingest SOURCE`: turn a public dataset's files into webdataset shards, on Ray.

One sub-subcommand per source; each is a `register_<source>(subparsers)` listed in SOURCES.
"""

from __future__ import annotations

import argparse
import functools
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


CC3M_DESCRIPTION = """\
Conceptual Captions TSVs (caption<TAB>url per line, no header, as Google ships them; local or s3://,
globs and .gz allowed) -> shards of <key>.jpg (resized by img2dataset: aspect kept, short side
img2dataset.image_size, 224 by default, so Video-LLaMA's 224 px random crops stay possible),
<key>.txt (the caption cleaned as Video-LLaMA does) and <key>.json (url, raw caption, width, height,
original size, sha256 of the download). A key is key_prefix + the row's 9-digit position, e.g.
GCC_train_000000123, LLaVA-CC3M-595K's name for the same image.

First our input hygiene: rows whose URL is not http(s), or whose host resolves to a loopback,
private or link-local address (unless allow_networks lists its network), are refused and recorded.
Then img2dataset fetches and resizes the rest (img2dataset.distributor: ray tasks on the cluster,
or multiprocessing on this machine; threads, timeout_s, retries) into a staging folder, and each
shard is committed in the layout below with the same keys, sorted members and error categories as
every other source. img2dataset retries at once: it does not back off, honour Retry-After, cap a
response's size or limit connections per host. The run summary gives images/s (samples/s)."""

CC3M_EPILOG = """\
examples:
  vllama ingest cc3m --config configs/ingest_cc3m/tiny.yaml
  vllama ingest cc3m --config configs/ingest_cc3m/full.yaml out=s3://bucket/shards/cc3m
  vllama ingest cc3m --config configs/ingest_cc3m/tiny.yaml mode=retry-failed
keys: tsv, out, mode (incremental | overwrite | retry-failed), samples_per_shard, key_prefix, staging,
allow_networks, resolve_threads, max_caption_words, concurrency, progress, img2dataset.* (distributor,
processes, threads, image_size, resize_mode, resize_only_if_bigger, encode_quality, min_image_size,
timeout_s, retries, user_agent_token), storage.* (endpoint_url, region, profile, anon)."""

MEDIA_SETS_DESCRIPTION = """\
{what}

Each set is a JSON annotation file plus the media it names (a folder, or a .zip for LLaVA's
images.zip; local or s3://). Every entry becomes a sample whose json member keeps the entry exactly
as in the file ("original") next to a normalised form training uses ("turns": [[human, assistant],
...] with one <image>/<video> marker where the media block goes; "caption" for caption sets), with
the media's size and sha256. Images are stored as they are after a full decode check; videos after
ffprobe and (verify_decode) a full decode. A missing, unreadable or oversized file is a failed row
with its reason. Row i of a set lands in shard i // samples_per_shard.

Settings come from the defaults, then --config, then KEY=VALUE overrides; a set is configured by a
section `<set>: {{annotations, media, webvid_shards (VideoChat), out}}`. Exit status: 0 when every
planned shard was written, 1 when some shard could not be (re-run with mode=incremental), 2 for
bad input or config."""

MEDIA_SETS_KEYS = """\
keys: llava595k.*, cc_sbu_align.*, llava_instruct.*, videochat.* (annotations, media, webvid_shards,
out), mode (incremental | overwrite | retry-failed), samples_per_shard, concurrency, cpus_per_shard,
read_threads, ffmpeg_per_shard, verify_decode, max_bytes, max_caption_words, spool_dir, progress,
storage.* (endpoint_url, region, profile, anon)."""

# CLI name -> (config section(s), one-line help, what the description says, example config)
MEDIA_SETS = {
    "llava595k": (
        ["llava595k"],
        "LLaVA-CC3M-Pretrain-595K -> image/caption shards (stage 1)",
        "LLaVA-CC3M-Pretrain-595K (chat.json + images/ or images.zip) -> shards of <id>.jpg, <id>.txt (the\n"
        "caption, i.e. the answer of its one turn, cleaned as Video-LLaMA does) and <id>.json. Stage-1 image data.",
        "configs/ingest_llava595k/tiny.yaml",
    ),
    "cc-sbu-align": (
        ["cc_sbu_align"],
        "MiniGPT-4 cc_sbu_align -> image/caption shards (stage 2)",
        "MiniGPT-4's cc_sbu_align (filter_cap.json + image/<image_id>.jpg) -> shards of <image_id>.jpg,\n"
        "<image_id>.txt (the detailed description, verbatim: it is the answer to a drawn prompt) and .json.",
        "configs/ingest_instruct/tiny.yaml",
    ),
    "llava-instruct": (
        ["llava_instruct"],
        "LLaVA-Instruct-150K + COCO images -> conversation shards (stage 2)",
        "LLaVA-Instruct-150K (llava_instruct_150k.json + COCO train2014/, files COCO_train2014_<image> as\n"
        "Video-LLaMA opens them) -> shards of <id>-<n>.jpg and .json (an image with several conversations\n"
        "gets -1, -2... on its later keys).",
        "configs/ingest_instruct/tiny.yaml",
    ),
    "videochat": (
        ["videochat"],
        "VideoChat-11K -> video conversation shards (stage 2), videos from WebVid shards or a folder",
        "VideoChat-11K (videochat_instruct_11k.json; video = <page_dir>/<videoid>.mp4) -> shards of\n"
        "<videoid>.mp4 and .json. Videos are taken from the WebVid shards `vllama ingest webvid` wrote\n"
        "(webvid_shards: their sidecars say which shard holds each page_dir/videoid) or from a folder (media).",
        "configs/ingest_instruct/tiny.yaml",
    ),
    "instruct": (
        ["cc_sbu_align", "llava_instruct", "videochat"],
        "the three stage-2 instruction sets: cc_sbu_align, LLaVA-Instruct-150K, VideoChat-11K",
        "Video-LLaMA's stage-2 instruction data, one set after another, each into its own out: cc_sbu_align,\n"
        "LLaVA-Instruct-150K and VideoChat-11K (run `vllama ingest webvid` first when VideoChat's videos come\n"
        "from WebVid shards). Sets missing from the config are an error.",
        "configs/ingest_instruct/tiny.yaml",
    ),
}


def register_cc3m(sources) -> None:
    p = sources.add_parser(
        "cc3m",
        help="Conceptual Captions TSVs -> jpg/txt/json shards via img2dataset",
        description=CC3M_DESCRIPTION,
        epilog=CC3M_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p, "ingest_cc3m", "configs/ingest_cc3m/tiny.yaml")
    p.set_defaults(func=run_cc3m)


def run_cc3m(args: argparse.Namespace) -> int:
    from pipelines.sources import cc3m

    cfg = load_config(cc3m.CC3MIngestConfig, args.config, args.overrides)
    try:
        summary = cc3m.run(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"vllama ingest cc3m: {e}", file=sys.stderr)
        return 2
    print(summary.text())
    print(f"  summary: {cfg.out.rstrip('/')}/_summary.json")
    return 1 if summary.shards_failed else 0


def register_media_sets(sources) -> None:
    for cli_name, (sections, help_text, what, example) in MEDIA_SETS.items():
        p = sources.add_parser(
            cli_name,
            help=help_text,
            description=MEDIA_SETS_DESCRIPTION.format(what=what),
            epilog=f"examples:\n  vllama ingest {cli_name} --config {example}\n"
            f"  vllama ingest {cli_name} --config {example} mode=retry-failed\n{MEDIA_SETS_KEYS}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_config_args(p, example.split("/")[1], example)
        p.set_defaults(func=functools.partial(run_media_sets, cli_name=cli_name, sections=sections))


def run_media_sets(args: argparse.Namespace, cli_name: str, sections: list[str]) -> int:
    from pipelines.sources import media_sets

    cfg = load_config(media_sets.MediaSetsIngestConfig, args.config, args.overrides)
    try:
        summaries = media_sets.run(cfg, sections)
    except (ValueError, FileNotFoundError) as e:
        print(f"vllama ingest {cli_name}: {e}", file=sys.stderr)
        return 2
    for name, summary in summaries.items():
        print(f"[{name}] {summary.text()}")
        print(f"  summary: {cfg.source(name).out.rstrip('/')}/_summary.json")
    return 1 if any(s.shards_failed for s in summaries.values()) else 0


SOURCES = [register_webvid, register_cc3m, register_media_sets]
