"""`vllama demo`: sample data served on loopback -> ingest -> features -> VL stage 1 (tiny) -> captions."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
The whole chain on this machine in a few minutes, with nothing downloaded: ffmpeg generates
WebVid-style videos (a coloured shape moving over a plain background, captions naming colour, shape
and direction) whose CSV URLs point at a loopback HTTP server this command runs; a tiny LLaMA is
trained on the training captions' text and frozen; tiny random encoders are written in the released
checkpoint layouts. Then configs/chain/demo.yaml runs on a local Ray: WebVid ingest (train and
held-out videos) -> feature store -> VL stage 1 (two Ray Train workers, DeepSpeed on CPU, MLflow in the
run folder). Last, the exported weights caption a held-out video from its mp4, and every held-out
video's caption is checked for the right colour against chance (1/8).

Each stage prints what it produced (counts, success rate, throughput). Everything lives under OUT;
running the command again reuses it all (shards skipped, feature store reused, run already finished):
delete OUT to start over."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole chain on generated sample data on this machine (what `make demo` runs)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="demo-output", metavar="DIR", help="where everything goes (default: demo-output)")
    p.add_argument(
        "--port", type=int, default=8000, metavar="N", help="loopback port serving the sample videos (default: 8000)"
    )
    p.add_argument(
        "--videos", type=int, default=None, metavar="N", help="videos to make (default: configs/sample_data/demo.yaml)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides for the training stage, e.g. optim.epochs=1 (see configs/train/vl_stage1_tiny.yaml)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from orchestration.demo import DemoConfig
    from orchestration.demo import run as demo

    return demo(DemoConfig(Path(args.out), args.port, args.videos, tuple(args.overrides)))
