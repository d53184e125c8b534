"""`vllama sample-data OUT`: generate small real videos, images and every dataset format."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from orchestration.commands import add_config_args
from orchestration.config import from_dict, load_config

DESCRIPTION = """\
Generate a small, describable dataset for tests, the demo and benchmarks: H.264 mp4 videos of a
coloured shape moving left/right/up/down over a plain background (about half with an AAC tone
whose pitch rises or falls), JPEG images of still shapes, and the dataset files Video-LLaMA trains
on, pointing at them: WebVid CSVs (train/val), CC3M TSVs, LLaVA-CC3M-Pretrain-595K chat.json,
MiniGPT-4 cc_sbu_align, LLaVA-Instruct-150K and VideoChat-11K. manifest.json in OUT lists every
sample's attributes and every dataset file.

The same seed gives byte-identical files. A re-run into the same OUT reuses the files that are
already right and only makes what is missing or changed. Settings come from the defaults, then
--config, then KEY=VALUE overrides, then the flags below."""

EPILOG = """\
examples:
  vllama sample-data /tmp/sample
  vllama sample-data /tmp/demo --config configs/sample_data/demo.yaml
  vllama sample-data /tmp/big workers=16 val_fraction=0.05 --videos 10000 --images 5000
  vllama sample-data /tmp/served --base-url http://10.0.0.5:8000/files
keys: out, videos, images, seed, base_url, val_fraction, workers (0 = one encoder per core)."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample-data",
        help="generate small real videos, images and every source dataset format",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", metavar="OUT", help="local folder to write into (created if missing)")
    p.add_argument("--videos", type=int, metavar="N", help="number of mp4 videos (default 12)")
    p.add_argument("--images", type=int, metavar="N", help="number of JPEG images (default 8)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed; the same seed gives identical files (default 0)")
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="URL prefix written into the WebVid contentUrl and CC3M url columns as {URL}/videos/<id>.mp4; "
        "point it where OUT will be served (default http://127.0.0.1:8000/files)",
    )
    add_config_args(p, "sample_data", "configs/sample_data/tiny.yaml")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.sample_data import SampleDataConfig, generate  # numpy/ffmpeg only when the command runs

    cfg = load_config(SampleDataConfig, args.config, args.overrides)
    flags = {
        "out": args.out,
        "videos": args.videos,
        "images": args.images,
        "seed": args.seed,
        "base_url": args.base_url,
    }
    cfg = from_dict(
        SampleDataConfig,
        dataclasses.asdict(cfg) | {k: v for k, v in flags.items() if v is not None},
        source="command line",
    )
    try:
        manifest = generate(cfg)
    except (FileExistsError, NotADirectoryError) as e:
        print(f"vllama sample-data: {e}", file=sys.stderr)
        return 2
    print(summary(manifest))
    return 0


def summary(manifest) -> str:
    """What was made: counts per kind and split, sizes, time, and the dataset files."""
    stats = manifest.stats
    videos, images = manifest.videos, manifest.images
    lines = [f"sample data in {manifest.root} (seed {manifest.seed})"]
    for name, items in (("videos", videos), ("images", images)):
        train = sum(s.split == "train" for s in items)
        extra = f", {sum(s.has_audio for s in items)} with audio" if name == "videos" else ""
        lines.append(f"  {name:<7} {len(items):>6}  ({train} train, {len(items) - train} val{extra})")
    lines.append(
        f"  media   {stats.bytes / 2**20:8.1f} MiB  made {stats.made}, reused {stats.reused}, in {stats.seconds:.1f} s"
    )
    lines.append("  dataset files:")
    for key, f in manifest.formats.items():
        lines.append(f"    {key:<15} {f.rows:>6} rows  {f.annotations}")
    lines.append(f"  manifest: {manifest.path('manifest.json')}")
    return "\n".join(lines)
