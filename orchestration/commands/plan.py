"""`vllama plan`: time and cost of every stage at full scale, from FLOPs, measured figures and stated assumptions."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap

from orchestration.config import from_dict

DESCRIPTION = """\
Plan a full reproduction before renting it: for each stage (ingestion, feature extraction, the four
training stages) the work, FLOPs, wall-clock hours, GPU-hours, vCPU-hours and cost, and totals for
two paths: through the feature store (extract once, train from cached features) and on the fly
(the original's loop, which decodes and runs the frozen encoders on every visit).

GPU time is FLOPs counted from the architecture (model/'s size tables) over peak x MFU. CPU time is
core-seconds per unit from benchmarks/results/*.json (named with the machine they were measured on),
scaled from the benchmarks' small generated media to real media by pixel-frames; a GPU stage lasts
the longer of its GPU time and the time its node CPUs need to decode for it. Training follows the
recipe in configs/train/ (steps x global batch). Everything else is an assumption: listed in the
output, and each has a flag below. Counts take suffixes: 2.5M, 595K."""

EPILOG = """\
examples:
  vllama plan                                         # WebVid-2.5M + CC595K on 8 x A100, the original's hardware
  vllama plan --videos 2.5M --images 595K --gpus 64 --gpu h100
  vllama plan --gpus 64 --views 2 --epochs 2 --json   # machine-readable
  vllama plan --gpu-hour-usd 1.60 --mfu 0.45          # your negotiated price and measured MFU"""


def _count(text: str) -> int:
    from orchestration.plan import parse_count

    try:
        return parse_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 596x336") from None
    return width, height


# (flag, PlanConfig field, type, help); defaults come from PlanConfig, so --help shows the real ones.
WHAT = [
    ("--videos", "videos", _count, "stage-1 clips (WebVid-2.5M, the original's pre-training clips)"),
    ("--images", "images", _count, "stage-1 images (LLaVA-CC3M-Pretrain-595K)"),
    ("--instruct-videos", "instruct_videos", _count, "stage-2 clips (VideoChat-11K)"),
    ("--instruct-images", "instruct_images", _count, "stage-2 images (cc_sbu_align 3.4K + LLaVA-Instruct's 81K COCO)"),
    ("--model", "model", str, "LLM size; the recipe is configs/train/<branch>_stage<n>_<size>.yaml"),
    (
        "--views",
        "views",
        int,
        "augmented views the store keeps per stage-1 sample, as configs/features/7b.yaml; frames per clip = 8 x views",
    ),
    (
        "--epochs",
        "epochs",
        float,
        "passes over the stage-1 data per stage-1 run (default: the recipe's "
        "iters_per_epoch x epochs x global batch, e.g. 2500 x 5 x 256 for VL stage 1)",
    ),
]
HARDWARE = [
    ("--gpus", "gpus", int, "GPUs for feature extraction and training"),
    ("--gpu", "gpu", str, "GPU type: a100 (p4d.24xlarge) or h100 (p5.48xlarge); sets peak, MFU, price, vCPUs per GPU"),
    ("--peak-tflops", "peak_tflops", float, "dense bf16 peak per GPU (default: NVIDIA datasheet, A100 312, H100 989)"),
    ("--mfu", "mfu", float, "share of peak a GPU stage sustains (default, assumed: A100 0.40, H100 0.35)"),
    ("--cpus-per-gpu", "cpus_per_gpu", float, "GPU-node vCPUs per GPU decoding frames (default: p4d 12, p5 24)"),
    ("--cpu-cores", "cpu_cores", int, "vCPUs of the ingestion fleet (8 x c6i.8xlarge)"),
]
PRICES = [
    (
        "--gpu-hour-usd",
        "gpu_hour_usd",
        float,
        "price per GPU-hour (default: AWS On-Demand us-east-1 after the June "
        "2025 P4/P5 cut: p4d $21.96/h / 8 = 2.745, p5 $55.04/h / 8 = 6.88)",
    ),
    ("--cpu-core-hour-usd", "cpu_core_hour_usd", float, "price per ingestion vCPU-hour (c6i.8xlarge $1.36/h / 32)"),
    ("--transfer-usd-per-gb", "transfer_usd_per_gb", float, "price per GB downloaded (NAT gateway, infra/README.md)"),
]
MEDIA = [
    ("--download-gbps", "download_gbps", float, "download bandwidth from the sources in all, Gbit/s (assumed)"),
    ("--clip-seconds", "clip_seconds", float, "mean clip length (WebVid's mean, Bain et al. 2021)"),
    ("--clip-fps", "clip_fps", float, "mean clip frame rate (assumed)"),
    ("--clip-size", "clip_size", "size", "source clip frame size, WxH (WebVid's stock previews)"),
    ("--clip-mb", "clip_mb", float, "mean source clip size in MB (assumed: ~1.1 Mbit/s H.264)"),
    ("--image-size", "image_size", "size", "source image size, WxH (assumed: a typical CC3M / COCO JPEG)"),
    ("--image-mb", "image_mb", float, "mean source image size in MB (configs/ingest_llava595k: 30-60 KB)"),
    (
        "--audio-share",
        "audio_share",
        float,
        "share of clips with sound (ImageBind audio; WebVid's previews are silent)",
    ),
]
SOURCES = [
    ("--results", "results", str, "benchmark results read: ingest_webvid.json, ingest_cc3m.json, features.json"),
    ("--train-configs", "train_configs", str, "training recipes read: <branch>_stage<n>_<size>.yaml"),
]


def _argument(defaults, field: str, kind, text: str) -> dict:
    """add_argument keywords for one flag, its help ending with PlanConfig's default."""
    if kind == "size":
        prefix = field.removesuffix("_size")
        default = f"{getattr(defaults, prefix + '_width')}x{getattr(defaults, prefix + '_height')}"
        return {"type": _size, "metavar": "WxH", "help": f"{text} (default: {default})"}
    default = getattr(defaults, field)
    if default is None or "default:" in text:
        shown = ""
    else:
        shown = f" (default: {default:,})" if kind is _count else f" (default: {default})"
    choices = {"gpu": ["a100", "h100"], "model": ["7b", "13b"]}.get(field)
    metavar = None if choices else "DIR" if kind is str else "N"
    return {"type": kind, "choices": choices, "metavar": metavar, "help": text + shown}


def register(subparsers) -> None:
    from orchestration.plan import PlanConfig  # model.config + pydantic: light

    defaults = PlanConfig()
    p = subparsers.add_parser(
        "plan",
        help="time and cost of every stage at full scale (FLOPs, measured figures, stated assumptions)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for title, flags in (
        ("what to plan", WHAT),
        ("hardware", HARDWARE),
        ("prices", PRICES),
        ("media assumptions", MEDIA),
        ("inputs", SOURCES),
    ):
        group = p.add_argument_group(title)
        for flag, field, kind, text in flags:
            group.add_argument(flag, dest=field, **_argument(defaults, field, kind, text))
    p.add_argument("--json", action="store_true", help="print the plan as JSON (stages, totals, assumptions, sources)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from orchestration.plan import PlanConfig, make_plan

    fields = {f.name for f in dataclasses.fields(PlanConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    for prefix in ("clip", "image"):
        if getattr(args, f"{prefix}_size"):
            values[f"{prefix}_width"], values[f"{prefix}_height"] = getattr(args, f"{prefix}_size")
    cfg = from_dict(PlanConfig, values, source="command line")
    try:
        plan = make_plan(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"vllama plan: {e}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_dict(), indent=1) if args.json else render(plan))
    return 0


COLUMNS = ("stage", "path", "units", "EFLOP", "hours", "GPU-h", "vCPU-h", "cost $", "bound")


def _number(x: float) -> str:
    """Two significant digits under 1 and a decimal under 10, so short stages do not read as 0; thousands separated."""
    if not x:
        return "-"
    return f"{x:.2g}" if x < 1 else f"{x:,.1f}" if x < 10 else f"{x:,.0f}"


def _cells(row) -> list[str]:
    eflop = f"{row.flops / 1e18:.3g}" if row.flops else "-"
    numbers = (row.hours, row.gpu_hours, row.cpu_core_hours, row.cost_usd)
    return [row.stage, row.path, row.units, eflop, *map(_number, numbers), row.bound]


def render(plan) -> str:
    """The stage table, the totals of both paths, then where each figure comes from."""
    cfg, gpu = plan.cfg, plan.gpu
    head = (
        f"vllama plan: {cfg.videos:,} clips + {cfg.images:,} images (stage 2: {cfg.instruct_videos:,} clips + "
        f"{cfg.instruct_images:,} images), LLaMA-2 {cfg.model}, {cfg.gpus} x {gpu.name}, {cfg.views} views"
    )
    body = [_cells(r) for r in plan.rows]
    totals = [_cells(plan.totals(p)) for p in ("cached", "on-the-fly")]
    widths = [max(len(c[i]) for c in [list(COLUMNS), *body, *totals]) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        padded = (c.rjust(w) if 3 <= i <= 7 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    rule = "-" * sum(w + 2 for w in widths)
    out = [head, "", line(list(COLUMNS)), rule, *map(line, body), rule, *map(line, totals), ""]
    out.append(
        "'all' rows run on both paths; 'cached': features once, then training from the store; 'on-the-fly': "
        "the original's loop"
    )
    for title, items in (("measured", plan.measured), ("assumptions", plan.assumptions), ("notes", plan.notes)):
        out += ["", f"{title}:"]
        out += [
            textwrap.fill(s, 118, initial_indent="  - ", subsequent_indent="    ", break_on_hyphens=False)
            for s in items
        ]
    return "\n".join(out)
